"""The small-scale verification of the papers' claims: every method, both tasks, several seeds.

    python -m rlsd_min verify --profile cpu --seeds 3          # -> results/

trains GRPO, OPSD, GRPO+OPSD, RLSD and SDPG from the same warm start of each task
(`arith`: one valid answer; `split`: ten, the reference one of them at random), each
with seeds 0..S-1 (prompt order and sampling; the warm start is shared), for longer
than the demo so that late-training effects could show. Every run logs held-out
accuracy and the leakage probes at each evaluation (rlsd_min.leakage), and OPSD-style
runs on `split` log the exact floor of their distillation loss.

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
import statistics
import time

from tqdm.auto import tqdm

from .config import REPO_ROOT, TASKS, TrainConfig, save_json, train_config
from .stability import COLLAPSE_MARGIN, COLLAPSE_PATIENCE, collapsed, steps_to_threshold
from .tasks import ensure_data, load_splits
from .train import check_problem_counts, read_metrics, train

VERIFY_METHODS = ("grpo", "opsd", "grpo_opsd", "rlsd", "sdpg")
PLANS = {
    "ci": {"arith": dict(steps=4, probe_problems=8), "split": dict(steps=4, probe_problems=8)},
    "cpu": {"arith": dict(steps=200, probe_problems=128), "split": dict(steps=300, probe_problems=128)},
    "gpu": {"arith": dict(steps=400, probe_problems=256), "split": dict(steps=600, probe_problems=256)},
}
"""TrainConfig overrides of each task, on top of the profile: twice (arith) and three times
(split) the demo's 100 steps on the cpu profile, in about 45 minutes on 2 CPU cores."""
THRESHOLD = 0.8
"""held-out accuracy for 'steps to threshold' (both warm starts start near 0.55)"""
TAIL = 10
"""steps averaged for the end-of-training value of per-step metrics (entropy, KL, ...)"""


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
            configs[f"{t}/{m}"] = cfg.to_dict()
    return _portable({"profile": profile, "seeds": list(range(seeds)), "methods": list(methods), "tasks": list(tasks),
            "threshold": THRESHOLD, "collapse": {"margin": COLLAPSE_MARGIN, "patience": COLLAPSE_PATIENCE},
            "configs": configs})


PATH_FIELDS = ("data_dir", "base_checkpoint")


def _portable(exp: dict) -> dict:
    """The experiment with paths inside the repository made relative to it, so a results
    folder made in one clone is recognised (and resumable) in another."""
    for cfg in exp["configs"].values():
        for field in PATH_FIELDS:
            path = os.path.abspath(cfg[field])
            if path.startswith(str(REPO_ROOT) + os.sep):
                cfg[field] = os.path.relpath(path, REPO_ROOT)
    return exp


def _with_new_fields(exp: dict) -> dict:
    """A recorded experiment with TrainConfig fields added since it ran filled in at their
    defaults (the value those runs had in effect), so a new optional field does not orphan it."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    for cfg in exp["configs"].values():
        for name, value in defaults.items():
            cfg.setdefault(name, value)
    return exp


def _absolute(cfg: dict) -> dict:
    return {**cfg, **{f: str(REPO_ROOT / cfg[f]) for f in PATH_FIELDS if not os.path.isabs(cfg[f])}}


def _check_problems(exp: dict) -> None:
    """Every run's task must supply the distinct prompts a step and the probes ask for (the
    check `train` makes, here for all runs before the first one starts)."""
    for cfg in exp["configs"].values():
        cfg = TrainConfig(**_absolute(cfg))
        ensure_data(cfg.data_dir, TASKS[cfg.task].data)
        splits = load_splits(cfg.data_dir)
        check_problem_counts(cfg, len(splits["train"]), len(splits["validation"]))


def _open_folder(out: str, exp: dict) -> None:
    path = os.path.join(out, "experiment.json")
    if os.path.exists(path):
        with open(path) as f:
            old = _with_new_fields(_portable(json.load(f)))
        if old != exp:
            diff = sorted(k for k in set(old) | set(exp) if old.get(k) != exp.get(k))
            raise ValueError(
                f"{out} holds runs of a different experiment ({diff} differ); to resume it, repeat the command "
                f"that made it (profile {old.get('profile')!r}, seeds {len(old.get('seeds', []))}); to start "
                f"fresh, pass another --out (or delete {out} yourself)")
    os.makedirs(out, exist_ok=True)
    save_json(exp, path)


def run_dir(out: str, task: str, method: str, seed: int) -> str:
    return os.path.join(out, "runs", task, method, f"seed{seed}")


def _wall_s(path: str) -> float:
    """Training seconds recorded for a run folder (accumulated over resumes)."""
    wall = os.path.join(path, "wall_s.json")
    if not os.path.exists(wall):
        return 0.0
    with open(wall) as f:
        return json.load(f)["wall_s"]


def finished_history(path: str, steps: int) -> list[dict] | None:
    """The metrics history of a run folder that has done all `steps`, else None."""
    if not os.path.exists(os.path.join(path, "metrics.jsonl")):
        return None
    history = read_metrics(path)
    return history if history and history[-1]["step"] == steps else None


def run_experiment(out: str, profile: str, seeds: int, methods=VERIFY_METHODS, tasks=tuple(TASKS),
                   sets=None, progress: bool = True) -> dict:
    """Train every (task, method, seed) not yet finished in `out`; summarise; write the report."""
    from .report import write_report  # report reads run folders through this module

    exp = experiment_config(profile, seeds, methods, tasks, sets)
    _check_problems(exp)
    _open_folder(out, exp)
    jobs = [(t, m, s) for t in exp["tasks"] for m in exp["methods"] for s in exp["seeds"]]
    bar = tqdm(jobs, desc="verify", disable=not progress)
    for t, m, s in bar:
        cfg = TrainConfig(**{**_absolute(exp["configs"][f"{t}/{m}"]), "seed": s}).validate()
        path = run_dir(out, t, m, s)
        if finished_history(path, cfg.steps) is not None:
            continue
        bar.set_postfix(run=f"{t}/{m}/seed{s}")
        start = time.perf_counter()
        before = _wall_s(path)
        train(cfg, path, progress=False)
        save_json({"wall_s": before + time.perf_counter() - start}, os.path.join(path, "wall_s.json"))
    summary = summarize(out)
    write_report(out, summary)
    return summary


def _mean_std(values: list) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def run_summary(history: list[dict], threshold: float = THRESHOLD) -> dict:
    """The numbers of one run: final and best held-out accuracy, steps to threshold, collapse,
    the last evaluation's probes, and per-step metrics averaged over the last TAIL steps."""
    evals = [r for r in history if "eval_acc" in r]
    accs = [r["eval_acc"] for r in evals]
    steps = [r for r in history if r["step"] > 0][-TAIL:]
    out = {"final_acc": accs[-1], "best_acc": max(accs), "start_acc": accs[0],
           "steps_to_threshold": steps_to_threshold(history, threshold), "collapsed": collapsed(accs)}
    out.update({k: v for k, v in evals[-1].items() if k.startswith("probe_")})
    for key in ("entropy", "completion_len", "teacher_kl", "distill_loss", "distill_floor", "frac_zero_std",
                "grad_norm", "reward_mean"):
        if steps and key in steps[0]:
            out[f"tail_{key}"] = statistics.fmean(r[key] for r in steps)
    return out


def summarize(out: str, write: bool = True) -> dict:
    """{task: {method: {metric: {mean, std, n}}}} over the seeds of `out`, plus the run count and
    the measured wall time; written to out/summary.json when `write`."""
    with open(os.path.join(out, "experiment.json")) as f:
        exp = json.load(f)
    table, wall, runs = {}, 0.0, 0
    for t in exp["tasks"]:
        for m in exp["methods"]:
            per_seed = []
            for s in exp["seeds"]:
                path = run_dir(out, t, m, s)
                history = finished_history(path, exp["configs"][f"{t}/{m}"]["steps"])
                if history is None:
                    continue
                per_seed.append(run_summary(history, exp["threshold"]))
                wall += _wall_s(path)
                runs += 1
            if not per_seed:
                continue
            keys = list(dict.fromkeys(k for r in per_seed for k in r))
            row = {k: _mean_std([r.get(k) for r in per_seed]) for k in keys if k not in ("collapsed",)}
            row["collapsed"] = sum(r["collapsed"] for r in per_seed)
            row["reached"] = sum(r["steps_to_threshold"] is not None for r in per_seed)
            row["seeds"] = len(per_seed)
            table.setdefault(t, {})[m] = row
    summary = {"profile": exp["profile"], "seeds": len(exp["seeds"]), "runs": runs, "wall_s": wall,
               "threshold": exp["threshold"], "collapse": exp["collapse"], "table": table}
    if write:
        save_json(summary, os.path.join(out, "summary.json"))
    return summary
