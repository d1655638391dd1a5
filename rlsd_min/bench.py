"""Step-time benchmark: every method on the same batch, interleaved, medians and ratios.

Each round runs one RL step of every method (GRPO, OPSD, ... in turn: A B C A B C ...),
each from the same weights, the same prompts and the same sampling seed, so all methods
sample the same completions and do the same work but for their own extra passes.
Ratios to GRPO are taken round by round (pairs measured side by side, under the same
machine load), and the median over rounds is reported, for the whole step and for each
phase the loop times (sampling, reference forward, teacher forward, student forward and
backward, optimiser), with the sampling throughput and the peak memory of the step.

Peak memory is what the device can tell: on CUDA the allocator's peak of tensor memory;
on a Linux CPU the process's peak resident set size (VmHWM), reset before each step by
writing 5 to /proc/self/clear_refs. Simplified: the CPU figure counts everything the
process holds (Python, torch, every model) and so differs between methods by far less
than it weighs; it is left out where /proc cannot be reset (macOS, Windows).
"""

from __future__ import annotations

import copy
import os
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
EXTRAS = ("sample_tok_s", "peak_mem_mb")
"""per-step figures beside the phases: sampling throughput, peak memory (when measurable)"""


def reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak-memory window on `device`; False where the peak cannot be reset."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:  # Linux >= 4.0: '5' resets VmHWM to the current RSS
            f.write("5")
        return True
    except OSError:
        return False


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory since reset_peak_memory, in MiB: CUDA tensors, or the CPU process's VmHWM."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    with open("/proc/self/status") as f:
        kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    return kib / 1024


def memory_meaning(device: torch.device) -> str:
    """What the peak-memory column measures on `device` (for a table's header)."""
    if device.type == "cuda":
        return "peak MiB = CUDA allocator peak of tensor memory during the step"
    if os.path.exists("/proc/self/clear_refs"):
        return "peak MiB = the process's peak resident set size during the step (everything it holds)"
    return "peak memory is not measured on this platform"


def step_times(methods=tuple(METHODS), profile: str = "cpu", rounds: int = 5, warmup: int = 1,
               device=None, progress: bool = True) -> dict:
    """{method: [metrics of one step, one dict per round]} on one fixed batch of the profile.

    Each dict holds rl_step's metrics (`step_time_s`, the phase times of PHASES, ...) and
    one_step's EXTRAS.
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
    optimiser and teacher and sampling seed 0 (ref is used only when cfg.kl_coef > 0), plus
    `sample_tok_s`, completion tokens sampled per second of the sampling phase (generate,
    verify and advantages; <eos> counted, padding not), and `peak_mem_mb`, the step's peak
    memory (see the module docstring; absent where it cannot be measured)."""
    device = next(model.parameters()).device
    model.load_state_dict(start)
    teacher = Teacher(model, cfg.teacher_mode, cfg.sync_every, cfg.ema_rate) if METHODS[cfg.method].teacher else None
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    torch.manual_seed(0)
    measured = reset_peak_memory(device)
    row = rl_step(model, tokenizer, ref if cfg.kl_coef > 0 else None, opt, problems, cfg, 0, teacher)
    if measured:
        row["peak_mem_mb"] = peak_memory_mb(device)
    tokens = row["completion_len"] * len(problems) * cfg.group_size  # completion_len is the mean over N rows
    row["sample_tok_s"] = tokens / row["time_sample_s"]
    return row


def summarize(times: dict, baseline: str = "grpo") -> list[dict]:
    """Median and spread of the step time per method, the median of per-round ratios to the
    baseline, and the median of each phase and of EXTRAS (those measured)."""
    rows = []
    for m, steps in times.items():
        ts = [s["step_time_s"] for s in steps]
        row = {"method": m, "median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts)}
        if baseline in times:
            base = [s["step_time_s"] for s in times[baseline]]
            row["ratio"] = statistics.median(t / b for t, b in zip(ts, base))
        for key in PHASES + EXTRAS:
            if key in steps[0]:
                row[key] = statistics.median(s[key] for s in steps)
        rows.append(row)
    return rows


def format_table(rows: list[dict], baseline: str = "grpo") -> str:
    """A markdown table: step time, ratio to the baseline, the median of each phase (seconds),
    sampling throughput and, where measured, peak memory."""
    mem = "peak_mem_mb" in rows[0]
    head = (f"| method | median s/step | min-max | ratio to {baseline} | sample | ref fwd | teacher fwd "
            f"| student fwd+bwd | optimiser | sample tok/s |" + (" peak MiB |" if mem else ""))
    lines = [head, "|---" * (10 + mem) + "|"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        phases = " | ".join(f"{r[k]:.3f}" for k in PHASES)
        lines.append(f"| {r['method']} | {r['median_s']:.3f} | {r['min_s']:.3f}-{r['max_s']:.3f} | {ratio} | "
                     f"{phases} | {r['sample_tok_s']:.0f} |" + (f" {r['peak_mem_mb']:.0f} |" if mem else ""))
    return "\n".join(lines)
