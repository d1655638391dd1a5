"""rlsd_min's GRPO step against TRL's GRPOTrainer on the same work, interleaved in one process.

The peer a user would otherwise pick: TRL's `GRPOTrainer` (`pip install .[bench]` brings
`trl`). Both sides get the identical saved model and tokenizer (`data/base`), the same
prompts, reward (rlsd_min.tasks.verify), group size, completion length, learning rate,
temperature 1 with no top-k/top-p, no reference model (beta 0), group-scaled advantages,
token-mean aggregation (TRL's `loss_type="dapo"`) and one update per batch.

Interleaving: a TrainerCallback times each TRL step (from on_step_begin to on_step_end,
generation included) and, right after it, runs and times one rlsd_min GRPO step on its
own copy of the model: T ours T ours ..., so both sides see the same machine load.
The ratio ours/TRL is taken step by step; the median over steps is reported.
"""

from __future__ import annotations

import copy
import statistics
import tempfile
import time

import torch

from ..config import train_config
from ..model import load
from ..step import batch_problems, rl_step
from ..tasks import load_splits, problems_of, verify


def require_trl():
    """Import trl, or exit with how to install it."""
    try:
        import trl  # noqa: F401
    except ImportError:
        raise SystemExit("the TRL comparison needs trl: pip install '.[bench]' (or pip install trl)") from None
    return trl


def trl_comparison(profile: str = "cpu", rounds: int = 5, warmup: int = 1) -> dict:
    """{'trl': [s/step], 'ours': [s/step]} for `rounds` steps after `warmup`, interleaved."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    trl = require_trl()
    from datasets import Dataset
    from transformers import TrainerCallback

    cfg = train_config(profile, method="grpo")
    ours, tokenizer = load(cfg.base_path())
    optimizer = torch.optim.AdamW(ours.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    train_set = problems_of(load_splits(cfg.data_path())["train"])
    steps = warmup + rounds
    rows = [{"prompt": p.prompt, "answer": p.answer}
            for step in range(steps) for p in batch_problems(train_set, step, cfg)]

    def reward(completions, answer, **kwargs):
        return [verify(c, a) for c, a in zip(completions, answer)]

    times = {"trl": [], "ours": []}

    class Interleave(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times["trl"].append(time.perf_counter() - self.t0)
            step = state.global_step - 1
            row = rl_step(ours, tokenizer, None, optimizer, batch_problems(train_set, step, cfg), cfg, step)
            times["ours"].append(row["step_time_s"])

    with tempfile.TemporaryDirectory() as out:
        args = trl.GRPOConfig(
            output_dir=out, per_device_train_batch_size=cfg.prompts_per_step * cfg.group_size,
            num_generations=cfg.group_size, max_completion_length=cfg.max_new_tokens,
            temperature=cfg.temperature, top_k=0, top_p=1.0, beta=0.0, loss_type="dapo",
            scale_rewards="group", epsilon=cfg.eps_low, num_iterations=1, learning_rate=cfg.lr,
            lr_scheduler_type="constant", warmup_steps=0, adam_beta2=0.98, weight_decay=0.0,
            max_grad_norm=cfg.max_grad_norm, max_steps=steps, logging_strategy="no", save_strategy="no",
            report_to="none", use_cpu=not torch.cuda.is_available(), bf16=False,
            gradient_checkpointing=False, seed=cfg.seed, shuffle_dataset=False, disable_tqdm=True)
        trainer = trl.GRPOTrainer(model=cfg.base_path(), reward_funcs=reward, args=args,
                                  train_dataset=Dataset.from_list(rows), processing_class=copy.deepcopy(tokenizer),
                                  callbacks=[Interleave()])
        trainer.train()
    return {k: v[warmup:] for k, v in times.items()}


def format_comparison(times: dict) -> str:
    """A markdown table of both sides' step times, then ours/TRL step by step and its median."""
    ratios = [o / t for o, t in zip(times["ours"], times["trl"])]
    lines = ["| | median s/step | min-max |", "|---|---|---|"]
    for name in ("trl", "ours"):
        ts = times[name]
        lines.append(f"| {'TRL GRPOTrainer' if name == 'trl' else 'rlsd_min grpo'} | "
                     f"{statistics.median(ts):.3f} | {min(ts):.3f}-{max(ts):.3f} |")
    return ("\n".join(lines) + "\n\nours / TRL per step: " + " ".join(f"{r:.2f}" for r in ratios)
            + f"\nours / TRL (median of per-step ratios): {statistics.median(ratios):.2f}")
