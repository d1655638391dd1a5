"""Step-time benchmark: every method on the same batch, interleaved, medians and ratios.

Each round runs one RL step of every method (GRPO, OPSD, ... in turn: A B C A B C ...),
each from the same weights, the same prompts and the same sampling seed, so all methods
sample the same completions and do the same work but for their own extra passes.
Ratios to GRPO are taken round by round (pairs measured side by side, under the same
machine load), and the median over rounds is reported, for the whole step and for each
phase the loop times (sampling, reference forward, teacher forward, student forward and
backward, optimiser), with the sampling throughput and the peak memory of the step.

Peak memory is measured apart from the time, on one more, untimed step of each method
(the profiler that counts CPU allocations slows a step down): the peak of tensor memory
allocated during the step above what was allocated when it began, so the models and
anything else held before the step are not counted. On CUDA, the allocator's own peak
counter; on a CPU, the allocation and free events that torch.profiler records
(profile_memory=True), summed in time order. Simplified: each bench step starts a fresh
AdamW and teacher, so the optimiser's two state tensors (2 x the parameters) and the copy
of the weights that a frozen or synced teacher keeps are allocated inside the step; in a
training run they are allocated once, before the first step.
"""

from __future__ import annotations

import copy
import os
import statistics
import sys
from contextlib import contextmanager
from typing import Callable

import torch
from tqdm.auto import tqdm

from ..config import pick_device, train_config
from ..methods import METHODS
from ..model import load
from ..step import batch_problems, make_teacher, rl_step
from ..tasks import load_splits, problems_of
from .limits import matmul_rate, phase_flops


PHASES = ("time_sample_s", "time_ref_s", "time_teacher_s", "time_update_s", "time_optim_s")
MEMORY_NOTE = "peak MiB = peak tensor memory allocated during the step, above what was held before it"


@contextmanager
def _quiet_stderr():
    """Silence file descriptor 2, where the profiler's C++ side prints a line at each start and
    stop (whatever else the profiled step prints there is silenced too; exceptions still rise)."""
    sys.stderr.flush()
    devnull = os.open(os.devnull, os.O_WRONLY)
    saved = os.dup(2)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def peak_memory_mb(step: Callable, device: torch.device) -> float:
    """Run step() and return the peak of tensor memory it allocated on `device` above what was
    allocated when it began, in MiB (CUDA: the allocator's counters; CPU: torch.profiler's
    allocation events, summed in time order).

    Simplified on a CPU: the profiler does not see a tensor made before it started being
    freed, so a step that frees such a tensor and then allocates reads higher than on CUDA
    (measure frees the last step's gradients before the window opens for that reason).
    """
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"peak memory is measured on cpu and cuda only, not on {device.type!r}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    with _quiet_stderr(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                                 profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU)
    held = peak = 0
    for _, nbytes in events:  # + on allocation, - on free
        held += nbytes
        peak = max(peak, held)
    return peak / 2**20


def step_times(methods=tuple(METHODS), profile: str = "cpu", rounds: int = 5, warmup: int = 1,
               device=None, progress: bool = True, fields: dict | None = None) -> dict:
    """{method: {"rounds": [one_step's metrics, one dict per timed round], "peak_mem_mb": float}}
    on one fixed batch of the profile, every method's TrainConfig with `fields` set (the speed
    flags); the peak memory comes from one more, untimed step."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {sorted(METHODS)}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    device = pick_device(device)
    configs = {m: train_config(profile, method=m, **(fields or {})) for m in methods}
    base, tokenizer = load(configs[methods[0]].base_path(), device)
    start = copy.deepcopy(base.state_dict())
    problems = batch_problems(problems_of(load_splits(configs[methods[0]].data_path())["train"]), 0,
                              configs[methods[0]])
    ref = copy.deepcopy(base).eval().requires_grad_(False)
    cases = {m: (base, start, ref, configs[m]) for m in methods}
    times = measure(cases, tokenizer, problems, rounds, warmup, "bench", progress)
    cfg = configs[methods[0]]
    rows = cfg.prompts_per_step * cfg.group_size * (len(tokenizer(problems[0].prompt).input_ids) + cfg.max_new_tokens)
    rate = matmul_rate(base.config, rows, device)  # the machine's limit, on the step's own shapes
    prompt_len = statistics.mean(len(tokenizer(p.prompt).input_ids) for p in problems)
    for measured in times.values():
        measured["matmul_gflops"] = rate
        for row in measured["rounds"]:
            flops = phase_flops(base.config, len(problems), cfg.group_size, prompt_len, row["completion_len"])
            row["sample_gflops"] = flops["sample"] / row["time_sample_s"] / 1e9
            row["update_gflops"] = flops["update"] / row["time_update_s"] / 1e9
    return times


def measure(cases: dict, tokenizer, problems: list, rounds: int, warmup: int, desc: str,
            progress: bool = True) -> dict:
    """{case: {"rounds": [one_step's metrics, one dict per timed round], "peak_mem_mb": float}}
    for cases {case: (model, start weights, ref, TrainConfig)}: each round runs one step of
    every case in turn (interleaved); then one more, untimed step of each gives its memory."""
    times = {case: {"rounds": []} for case in cases}
    for r in tqdm(range(warmup + rounds), desc=desc, disable=not progress):
        for case, (model, start, ref, cfg) in cases.items():
            row = one_step(model, start, tokenizer, ref, problems, cfg)
            if r >= warmup:
                times[case]["rounds"].append(row)
    for case, (model, start, ref, cfg) in cases.items():
        model.zero_grad(set_to_none=True)  # free the last step's gradients before the window opens
        step = lambda: one_step(model, start, tokenizer, ref, problems, cfg)
        times[case]["peak_mem_mb"] = peak_memory_mb(step, next(model.parameters()).device)
    return times


def one_step(model, start: dict, tokenizer, ref, problems: list, cfg) -> dict:
    """rl_step's metrics for one step of cfg.method from the weights `start`, with a fresh
    optimiser and teacher and sampling seed 0 (ref is used only when cfg.needs_reference()), plus
    `sample_tok_s`: completion tokens sampled per second of the sampling phase (generate,
    verify and advantages; <eos> counted, padding not)."""
    model.load_state_dict(start)
    teacher = make_teacher(model, cfg, problems)   # other_*: the derangement of the benched problems
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    torch.manual_seed(0)
    row = rl_step(model, tokenizer, ref if cfg.needs_reference() else None, opt, problems, cfg, 0, teacher)
    tokens = row["completion_len"] * len(problems) * cfg.group_size  # completion_len is the mean over N rows
    row["sample_tok_s"] = tokens / row["time_sample_s"]
    return row


def summarize(times: dict, baseline: str = "grpo") -> list[dict]:
    """Median and spread of the step time per method, the median of per-round ratios to the
    baseline, the median of each phase, median and spread of the sampling throughput, and the
    peak memory."""
    rows = []
    for m, measured in times.items():
        steps = measured["rounds"]
        ts = [s["step_time_s"] for s in steps]
        row = {"method": m, "median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
               "peak_mem_mb": measured["peak_mem_mb"]}
        if baseline in times:
            base = [s["step_time_s"] for s in times[baseline]["rounds"]]
            row["ratio"] = statistics.median(t / b for t, b in zip(ts, base))
        for key in PHASES + ("sample_tok_s", "sample_gflops", "update_gflops"):  # a phase not run is absent
            if key in steps[0]:
                row[key] = statistics.median(s[key] for s in steps)
        if "matmul_gflops" in measured:
            row["matmul_gflops"] = measured["matmul_gflops"]
        tok_s = [s["sample_tok_s"] for s in steps]
        row["sample_tok_s_min"], row["sample_tok_s_max"] = min(tok_s), max(tok_s)
        rows.append(row)
    return rows


def format_limits(rows: list[dict]) -> str:
    """A markdown table of each method's distance to the machine's matmul rate: the achieved
    GFLOP/s of sampling and of the student's forward + backward (rlsd_min.lab.limits), and
    their fraction of the rate."""
    lines = [f"matmul rate on the step's shapes: {rows[0]['matmul_gflops']:.0f} GFLOP/s (float32)", "",
             "| method | sample GFLOP/s | of the rate | student fwd+bwd GFLOP/s | of the rate |", "|---" * 5 + "|"]
    for r in rows:
        rate = r["matmul_gflops"]
        lines.append(f"| {r['method']} | {r['sample_gflops']:.1f} | {r['sample_gflops'] / rate:.0%} "
                     f"| {r['update_gflops']:.1f} | {r['update_gflops'] / rate:.0%} |")
    return "\n".join(lines)


def format_table(rows: list[dict], baseline: str = "grpo") -> str:
    """A markdown table: step time, ratio to the baseline, the median of each phase (seconds),
    sampling throughput (median, min-max) and peak memory (MEMORY_NOTE)."""
    head = (f"| method | median s/step | min-max | ratio to {baseline} | sample | ref fwd | teacher fwd "
            f"| student fwd+bwd | optimiser | sample tok/s | min-max | peak MiB |")
    lines = [head, "|---" * 12 + "|"]
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        phases = " | ".join(f"{r[k]:.3f}" if k in r else "-" for k in PHASES)
        lines.append(f"| {r['method']} | {r['median_s']:.3f} | {r['min_s']:.3f}-{r['max_s']:.3f} | {ratio} | "
                     f"{phases} | {r['sample_tok_s']:.0f} | {r['sample_tok_s_min']:.0f}-{r['sample_tok_s_max']:.0f} "
                     f"| {r['peak_mem_mb']:.1f} |")
    return "\n".join(lines)
