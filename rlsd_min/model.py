"""Character tokenizer and a tiny Llama-style causal LM, built from a `transformers` config.

The vocabulary is every character the tasks use plus four special tokens, so a
completion is one token per character and the teacher-student comparison is
token-by-token readable. The model is a real `LlamaForCausalLM` (RoPE, RMSNorm,
SwiGLU), just small: 0.5M parameters by default (a 2-core CPU warm-starts it on the
3-digit scratchpad in about a minute: data/base/warmstart.json, docs/tasks_and_model.md).
Nothing is downloaded: the tokenizer is built here and the weights start random.
"""

from __future__ import annotations

import os

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from .config import ModelConfig

hf_logging.disable_progress_bar()  # the tqdm bars of save/load; training shows its own

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<unk>"]
CHARS = list("0123456789+-*= \n|")
"""'|' closes the privileged block of the teacher prompt (rlsd_min.teacher)."""


def build_tokenizer() -> PreTrainedTokenizerFast:
    """One token per character; <bos> is prepended to every encoded text; pad != eos."""
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>", padding_side="left")


def build_model(cfg: ModelConfig, tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised tiny Llama with tied input/output embeddings."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def n_params(model: torch.nn.Module) -> int:
    """Parameters, counting tied weights once."""
    return sum(p.numel() for p in model.parameters())


def save(model, tokenizer, path: str, extra: dict | None = None) -> None:
    """save_pretrained (safetensors) for model and tokenizer, written atomically.

    Everything goes to `path.tmp` first and is renamed over `path` only once complete,
    so an interrupted save never leaves a half-written checkpoint in place of a good one
    (`recover` finishes or undoes one).
    `extra` maps file names to objects saved beside them with torch.save.
    """
    path = str(path).rstrip("/")
    tmp, old = f"{path}.tmp", f"{path}.old"
    recover(path)
    _rmtree(old)
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        for name, obj in (extra or {}).items():
            torch.save(obj, os.path.join(tmp, name))
    except BaseException:
        _rmtree(tmp)  # a partial save (a full disk, say) gives its space back
        raise
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    _rmtree(old)


def recover(path: str) -> None:
    """Finish what an interrupted save() left: `path.old` without `path` (stopped between its two
    renames) is moved back to `path`; a partial `path.tmp` is removed."""
    path = str(path).rstrip("/")
    if not os.path.exists(path) and os.path.isdir(f"{path}.old"):
        os.replace(f"{path}.old", path)
    _rmtree(f"{path}.tmp")


def load_state(path: str) -> dict:
    """A file of save()'s `extra`, read by torch.load(weights_only=True): tensors, numbers, strings,
    lists and dicts only, so a file that holds any other object (which unpickling would run code
    for) is refused with a ValueError naming it, never executed."""
    import pickle
    import warnings

    try:
        with warnings.catch_warnings():  # a foreign pickle protocol warns before it is refused
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = [line.strip() for line in str(e).splitlines() if "GLOBAL" in line]
        raise ValueError(f"{path} holds objects other than tensors, numbers, strings, lists and dicts "
                         f"({found[0] if found else 'torch.load(weights_only=True) refused it'}); it is not "
                         "loaded, since unpickling it could run code") from None


def load(path: str, device: str | torch.device = "cpu"):
    """(model, tokenizer) from a save() folder; a clear error if it is not one."""
    path = str(path)
    if os.path.isdir(os.path.join(path, "checkpoint")):
        raise FileNotFoundError(f"{path!r} is a run folder, not a checkpoint: load {os.path.join(path, 'checkpoint')!r}")
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(
            f"no checkpoint at {path!r} (expected a save_pretrained folder with config.json): for a task's "
            "warm start, make it with `python -m rlsd_min warmstart --task <task>`; a run's checkpoint is "
            "<run folder>/checkpoint, written every checkpoint_every steps by `python -m rlsd_min train --out "
            "<run folder>`")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(path, local_files_only=True)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).to(device)
    return model, tokenizer


def _rmtree(path: str) -> None:
    import shutil

    if os.path.isdir(path):
        shutil.rmtree(path)
