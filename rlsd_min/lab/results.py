"""Reading a verification folder: where each run lives, which runs are finished, and the
summary over seeds (mean and std per method and task). Used by the experiment that writes
the folder and by the report that reads it."""

from __future__ import annotations

import json
import os
import statistics

from ..config import save_json
from ..loop import read_metrics
from .stability import collapsed, steps_to_threshold

THRESHOLD = 0.8
"""held-out accuracy for 'steps to threshold' (both warm starts start near 0.55)"""
TAIL = 10
"""steps averaged for the end-of-training value of per-step metrics (entropy, KL, ...)"""


def run_dir(out: str, task: str, method: str, seed: int) -> str:
    return os.path.join(out, "runs", task, method, f"seed{seed}")


def wall_s(path: str) -> float:
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
                wall += wall_s(path)
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
