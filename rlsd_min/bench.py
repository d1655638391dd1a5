"""Step-time benchmark: every method on the same batch, interleaved, medians and ratios.

Each round runs one RL step of every method (GRPO, OPSD, ... in turn: A B C A B C ...),
each from the same weights, the same prompts and the same sampling seed, so all methods
sample the same completions and do the same work but for their own extra passes.
Ratios to GRPO are taken round by round (pairs measured side by side, under the same
machine load), and the median over rounds is reported, for the whole step and for each
phase the loop times (sampling, reference forward, teacher forward, student forward and
backward, optimiser). On CUDA the peak memory of each method's step is recorded too.
"""

from __future__ import annotations

import copy
import statistics

import torch
from tqdm.auto import tqdm

from .config import pick_device, train_config
from .methods import METHODS
from .model import load
from .tasks import load_splits, problems_of
from .teacher import Teacher
from .train import batch_problems, rl_step


PHASES = ("time_sample_s", "time_ref_s", "time_teacher_s", "time_update_s", "time_optim_s")


def step_times(methods=tuple(METHODS), profile: str = "cpu", rounds: int = 5, warmup: int = 1,
               device=None, progress: bool = True) -> dict:
    """{method: [metrics of one step, one dict per round]} on one fixed batch of the profile.

    Each dict holds `step_time_s`, the phase times of PHASES and, on CUDA, `peak_mem_mb`.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    device = pick_device(device)
    configs = {m: train_config(profile, method=m) for m in methods}
    base, tokenizer = load(configs[methods[0]].base_checkpoint, device)
    start = copy.deepcopy(base.state_dict())
    problems = batch_problems(problems_of(load_splits(configs[methods[0]].data_dir)["train"]), 0,
                              configs[methods[0]])
    ref = copy.deepcopy(base).eval().requires_grad_(False)
    times = {m: [] for m in methods}
    for r in tqdm(range(warmup + rounds), desc="bench", disable=not progress):
        for m in methods:
            row = one_step(base, start, tokenizer, ref, problems, configs[m])
            if r >= warmup:
                times[m].append(row)
    return times


def one_step(model, start: dict, tokenizer, ref, problems: list, cfg) -> dict:
    """rl_step's metrics for one step of cfg.method from the weights `start`, with a fresh
    optimiser and teacher and sampling seed 0 (ref is used only when cfg.kl_coef > 0);
    on CUDA with the step's peak memory as `peak_mem_mb`."""
    device = next(model.parameters()).device
    model.load_state_dict(start)
    teacher = Teacher(model, cfg.teacher_mode, cfg.sync_every, cfg.ema_rate) if METHODS[cfg.method].teacher else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    row = rl_step(model, tokenizer, ref if cfg.kl_coef > 0 else None, opt, problems, cfg, 0, teacher)
    if device.type == "cuda":
        row["peak_mem_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return row


def summarize(times: dict, baseline: str = "grpo") -> list[dict]:
    """Median and spread of the step time per method, the median of per-round ratios to the
    baseline, and the median of each phase (and of the peak memory, on CUDA)."""
    rows = []
    for m, steps in times.items():
        ts = [s["step_time_s"] for s in steps]
        row = {"method": m, "median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts)}
        if baseline in times:
            base = [s["step_time_s"] for s in times[baseline]]
            row["ratio"] = statistics.median(t / b for t, b in zip(ts, base))
        for key in PHASES + ("peak_mem_mb",):
            if key in steps[0]:
                row[key] = statistics.median(s[key] for s in steps)
        rows.append(row)
    return rows


def format_table(rows: list[dict], baseline: str = "grpo") -> str:
    """A markdown table: step time, ratio to the baseline, then the median of each phase."""
    mem = "peak_mem_mb" in rows[0]
    head = (f"| method | median s/step | min-max | ratio to {baseline} | sample | ref fwd | teacher fwd "
            f"| student fwd+bwd | optimiser |" + (" peak MiB |" if mem else ""))
    lines = [head, "|---" * (9 + mem) + "|"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        phases = " | ".join(f"{r[k]:.3f}" for k in PHASES)
        lines.append(f"| {r['method']} | {r['median_s']:.3f} | {r['min_s']:.3f}-{r['max_s']:.3f} | {ratio} | "
                     f"{phases} |" + (f" {r['peak_mem_mb']:.0f} |" if mem else ""))
    return "\n".join(lines)
