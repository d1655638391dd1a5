"""A tiny model with a real subword tokenizer and a chat template, and the arithmetic task as
TRL-style dataset rows: what the TRL trainers' tests, example and notebook run on, made here.

    build_tiny_chat_model(path)   a byte-level BPE tokenizer trained on the task's own text
                                  (`tokenizers`), a chat template, special tokens, and a random
                                  tiny Llama, saved together with save_pretrained
    arith_rows(split, ...)        {"prompt", "privileged_context", "answer"} rows, plain text or
                                  conversational ([{"role": "user", "content": ...}])
    arith_reward                  a TRL reward function: rlsd_min's verifier on each completion

Nothing is downloaded. The BPE vocabulary is small (a few hundred tokens), so a completion is
several characters per token: the teacher's alignment is tested on real subword merges, not on
rlsd_min's one-character tokens.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from ..tasks import TASKS, load_splits, problems_of, verify
from ..teacher import OTHER_KINDS, REFERENCE_KINDS, other_problems, worked_example

SPECIAL = {"pad": "<|pad|>", "eos": "<|end|>", "bos": "<|bos|>"}
ROLES = ("system", "user", "assistant")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
"""Each turn is <|role|>, a newline, the content, <|end|>; the generation prompt opens the
assistant's turn, so a completion ends with <|end|> (the eos token)."""


def _corpus() -> list[str]:
    """Text to learn the merges from: the arith task's prompts and solutions, and the words of
    the chat turns and of the example's privileged templates."""
    rows = problems_of(load_splits(str(TASKS["arith"].data_dir))["train"])
    words = ["The reference answer is", "Reference solution:", "Solve", "answer", "user", "assistant"]
    return [p.prompt + p.solution for p in rows] + words * 50


def build_tokenizer(vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained here, with the chat template and pad != eos."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = list(SPECIAL.values()) + [f"<|{role}|>" for role in ROLES]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_corpus(), trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=SPECIAL["pad"], eos_token=SPECIAL["eos"],
                                  bos_token=SPECIAL["bos"], padding_side="left")
    out.chat_template = CHAT_TEMPLATE
    return out


def build_tiny_chat_model(path: str, hidden_size: int = 32, num_layers: int = 1, seed: int = 0) -> str:
    """Save a random tiny Llama and its BPE chat tokenizer to `path` (save_pretrained); returns path."""
    import torch

    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                         num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=256, tie_word_embeddings=True,
                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def arith_rows(split: str = "train", n: int | None = None, conversational: bool = False,
               context: str = "answer", task: str = "arith", seed: int = 0) -> list[dict]:
    """The task's problems as TRL dataset rows: prompt (text, or one user turn), the
    privileged_context the teacher sees, and the answer the reward checks. context: 'answer'
    or 'solution' (Problem.context), or 'other_answer' / 'other_solution' (the worked example
    of another problem of the rows, rlsd_min.teacher.other_problems seeded by `seed`)."""
    problems = problems_of(load_splits(str(TASKS[task].data_dir))[split])[:n]
    if context in OTHER_KINDS:
        others = other_problems(problems, seed)
        contexts = [worked_example(others[p.prompt], OTHER_KINDS[context]) for p in problems]
    elif context in REFERENCE_KINDS:
        contexts = [p.context(context) for p in problems]
    else:
        raise ValueError(f"a dataset row cannot hold the context {context!r}; choose from "
                         f"{REFERENCE_KINDS + tuple(OTHER_KINDS)}")
    return [{"prompt": [{"role": "user", "content": p.prompt}] if conversational else p.prompt,
             "privileged_context": c, "answer": p.answer} for p, c in zip(problems, contexts)]


def arith_reward(completions, answer, **kwargs) -> list[float]:
    """TRL reward function: rlsd_min.tasks.verify on each completion (text, or an assistant turn)."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [verify(t, a) for t, a in zip(texts, answer)]
