"""The small-scale verification of the papers' claims: every method, both tasks, several seeds.

    python -m rlsd_min verify --profile cpu --seeds 3          # -> results/

trains GRPO, OPSD, GRPO+OPSD, RLSD and SDPG from the same warm start of each task
(`arith`: one valid answer; `split`: ten, the reference one of them at random), each
with seeds 0..S-1 (prompt order and sampling; the warm start is shared), for longer
than the demo so that late-training effects could show. Every run logs held-out
accuracy and the leakage probes at each evaluation (rlsd_min.leakage), and OPSD-style
runs on `split` log the exact floor of their distillation loss (distill_floor).

The folder holds `experiment.json` (what was asked), one run folder per
(task, method, seed) under `runs/`, `summary.json` (mean and std over seeds), the
figures and `REPORT.md`, all made from the run folders. Interrupted, the same command
resumes: finished runs are kept, unfinished ones go on from their last checkpoint. A
folder made by a different experiment is refused, never mixed or overwritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time

from tqdm.auto import tqdm

from ..config import TrainConfig, save_json, train_config
from ..leakage import FLOORS
from ..loop import check_problem_counts, train
from ..tasks import TASKS, ensure_data, load_splits
from .report import write_report
from .results import THRESHOLD, finished_history, run_dir, summarize, wall_s
from .stability import COLLAPSE_MARGIN, COLLAPSE_PATIENCE

VERIFY_METHODS = ("grpo", "opsd", "grpo_opsd", "rlsd", "sdpg")
PLANS = {
    "ci": {"arith": dict(steps=4, probe_problems=8), "split": dict(steps=4, probe_problems=8)},
    "cpu": {"arith": dict(steps=200, probe_problems=128), "split": dict(steps=300, probe_problems=128)},
    "gpu": {"arith": dict(steps=400, probe_problems=256), "split": dict(steps=600, probe_problems=256)},
}
"""TrainConfig overrides of each task, on top of the profile: twice (arith) and three times
(split) the demo's 100 steps on the cpu profile (33 minutes on 2 CPU cores for 3 seeds)."""


def experiment_config(profile: str, seeds: int, methods=VERIFY_METHODS, tasks=tuple(TASKS), sets=None) -> dict:
    """What the experiment will run: validated, before any long work starts."""
    if not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"seeds must be an integer >= 1, got {seeds!r}")
    if profile not in PLANS:
        raise ValueError(f"unknown profile {profile!r}; choose from {tuple(PLANS)}")
    for t in tasks:  # methods are checked by train_config
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; choose from {tuple(TASKS)}")
    configs = {}
    for t in tasks:
        for m in methods:
            cfg = train_config(profile, method=m, task=t, **{**PLANS[profile][t], **(sets or {})})
            if t == "split" and cfg.divergence in FLOORS:  # a distillation term with an exact floor: log it
                cfg = dataclasses.replace(cfg, distill_floor=True).validate()
            configs[f"{t}/{m}"] = cfg.to_dict()
    return {"profile": profile, "seeds": list(range(seeds)), "methods": list(methods), "tasks": list(tasks),
            "threshold": THRESHOLD, "collapse": {"margin": COLLAPSE_MARGIN, "patience": COLLAPSE_PATIENCE},
            "configs": configs}


def _with_new_fields(exp: dict) -> dict:
    """A recorded experiment with TrainConfig fields added since it ran filled in at their
    resolved defaults (the value those runs had in effect), so a new optional field does not
    orphan it."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, cfg in exp["configs"].items():
        if set(cfg) != known:
            exp["configs"][key] = {**TrainConfig(**{k: v for k, v in cfg.items() if k in known}).validate().to_dict(),
                                   **{k: v for k, v in cfg.items()}}
    return exp


def _check_problems(exp: dict) -> None:
    """Every run's task must supply the distinct prompts a step and the probes ask for (the
    check `train` makes, here for all runs before the first one starts)."""
    for cfg in exp["configs"].values():
        cfg = TrainConfig(**cfg)
        ensure_data(cfg.data_path(), TASKS[cfg.task].data)
        splits = load_splits(cfg.data_path())
        check_problem_counts(cfg, len(splits["train"]), len(splits["validation"]))


def _open_folder(out: str, exp: dict) -> None:
    path = os.path.join(out, "experiment.json")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{out} is a file, not a results folder; pass another --out")
    if os.path.exists(path):
        with open(path) as f:
            old = _with_new_fields(json.load(f))
        if old != exp:
            diff = sorted(k for k in set(old) | set(exp) if old.get(k) != exp.get(k))
            raise ValueError(
                f"{out} holds runs of a different experiment ({diff} differ); to resume it, repeat the command "
                f"that made it (profile {old.get('profile')!r}, seeds {len(old.get('seeds', []))}); to start "
                f"fresh, pass another --out (or delete {out} yourself)")
    os.makedirs(out, exist_ok=True)
    save_json(exp, path)


def run_experiment(out: str, profile: str, seeds: int, methods=VERIFY_METHODS, tasks=tuple(TASKS),
                   sets=None, progress: bool = True) -> dict:
    """Train every (task, method, seed) not yet finished in `out`; summarise; write the report."""
    exp = experiment_config(profile, seeds, methods, tasks, sets)
    _check_problems(exp)
    _open_folder(out, exp)
    jobs = [(t, m, s) for t in exp["tasks"] for m in exp["methods"] for s in exp["seeds"]]
    bar = tqdm(jobs, desc="verify", disable=not progress)
    for t, m, s in bar:
        cfg = TrainConfig(**{**exp["configs"][f"{t}/{m}"], "seed": s}).validate()
        path = run_dir(out, t, m, s)
        if finished_history(path, cfg.steps) is not None:
            continue
        bar.set_postfix(run=f"{t}/{m}/seed{s}")
        start = time.perf_counter()
        before = wall_s(path)
        train(cfg, path, progress=False)
        save_json({"wall_s": before + time.perf_counter() - start}, os.path.join(path, "wall_s.json"))
    summary = summarize(out)
    write_report(out, summary)
    return summary


