"""Peak memory of one RL step at a real vocabulary: the chunked step against the whole logits.

    python -m rlsd_min bench --vocab                     # every method
    python -m rlsd_min bench --vocab --methods sdpg

The model is the cpu profile's tiny Llama (hidden 128, 2 layers, 4 heads) with Qwen's vocabulary
size, V = 151,936 (random embeddings and output layer); the batch is 2 prompts of 16 random tokens
x 8 completions of 128 random tokens (16 rows x 128 positions), rewards mixed in one group and
equal in the other (A_i = 0 there, as in 36-46 % of mul7's groups). One step of each method (the
reference's log-probs when kl_coef > 0, the teacher's scores, one update) under
`bench.peak_memory_mb`, twice: as the package runs it (the vocabulary's logits a chunk of rows at
a time, rlsd_min.sampling.LOGITS_CHUNK_BYTES) and with the whole batch as one chunk (the
(N, T, V) logits and their softmax held at once, as a step without chunking holds them).

Simplified: random tokens stand in for text (memory depends on the shapes, not the values), and
one process measures every method (the allocator's pages are reused between them; each step's
peak is counted above what was held before it).
"""

from __future__ import annotations

import torch

from .. import sampling
from ..advantages import group_advantages
from ..batch import Rollout, StepBatch
from ..config import train_config
from ..methods import METHODS
from ..step import make_teacher, teacher_scores, update
from .bench import peak_memory_mb

VOCAB = 151_936
"""Qwen2's vocabulary size"""
SHAPE = dict(B=2, G=8, P=16, T=128)
"""prompts, group size, prompt and completion positions: 16 rows x 128 positions"""
WHOLE = 2 ** 62
"""a chunk limit no batch reaches: every row in one chunk"""


def vocab_model(seed: int = 0):
    """The tiny Llama of the cpu profile with V = VOCAB, random weights (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=512,
                                        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=512))


def vocab_batch(seed: int = 0) -> tuple[Rollout, torch.Tensor, torch.Tensor]:
    """(rollout (16 rows x 128 positions), rewards (N,), teacher prompt ids (B, 8 + P)) of random tokens."""
    B, G, P, T = SHAPE["B"], SHAPE["G"], SHAPE["P"], SHAPE["T"]
    g = torch.Generator().manual_seed(seed)
    prompt = torch.randint(3, VOCAB, (B, P), generator=g)                                  # (B, P)
    rollout = Rollout(prompt.repeat_interleave(G, 0), torch.ones(B * G, P, dtype=torch.long),
                      torch.randint(3, VOCAB, (B * G, T), generator=g), torch.ones(B * G, T, dtype=torch.long),
                      [""] * (B * G), G)
    rewards = torch.tensor([1.0, 0.0] * (G // 2) + [1.0] * G)                              # (N,) group 2: A = 0
    teacher_ids = torch.cat([torch.randint(3, VOCAB, (B, 8), generator=g), prompt], 1)     # (B, 8 + P)
    return rollout, rewards, teacher_ids


def step_peak(model, method: str, chunk_bytes: int) -> float:
    """Peak MiB of one step of `method` on vocab_batch with the logits chunked at `chunk_bytes`."""
    rollout, rewards, teacher_ids = vocab_batch()
    cfg = train_config("cpu", method=method, group_size=SHAPE["G"], max_new_tokens=SHAPE["T"],
                       prompts_per_step=SHAPE["B"])
    start = {k: v.clone() for k, v in model.state_dict().items()}

    def step():
        model.load_state_dict(start)
        batch = StepBatch(rollout, rewards, group_advantages(rewards, SHAPE["G"], cfg.adv_scale, cfg.adv_eps))
        if cfg.needs_reference():
            with torch.no_grad():
                batch.ref_logp = sampling.rollout_logprobs(model, rollout)                 # (N, T)
        teacher = make_teacher(model, cfg)
        if teacher is not None:
            batch.teacher_logp, batch.teacher_logits, batch.teacher_rows = teacher_scores(
                teacher.model, teacher_ids, torch.ones_like(teacher_ids), rollout, batch.advantages, cfg)
        update(model, torch.optim.AdamW(model.parameters(), lr=cfg.lr), batch, cfg, 0)

    kept = sampling.LOGITS_CHUNK_BYTES
    sampling.LOGITS_CHUNK_BYTES = chunk_bytes
    try:
        step()                                   # warm-up: the allocator's first-touch pages
        model.zero_grad(set_to_none=True)
        return peak_memory_mb(step, torch.device("cpu"))
    finally:
        sampling.LOGITS_CHUNK_BYTES = kept


def vocab_peaks(methods=tuple(METHODS)) -> dict:
    """{method: (chunked MiB, whole MiB)} of one step at V = VOCAB."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {tuple(METHODS)}")
    model = vocab_model()
    return {m: (step_peak(model, m, sampling.LOGITS_CHUNK_BYTES), step_peak(model, m, WHOLE)) for m in methods}


def format_vocab(peaks: dict) -> str:
    lines = [f"peak tensor memory of one step at V = {VOCAB:,}, {SHAPE['B'] * SHAPE['G']} rows x {SHAPE['T']} "
             f"positions (cpu)",
             "| method | chunked MiB | whole logits MiB | chunked / whole |", "|---|---|---|---|"]
    lines += [f"| {m} | {c:.0f} | {w:.0f} | {c / w:.2f} |" for m, (c, w) in peaks.items()]
    return "\n".join(lines)
