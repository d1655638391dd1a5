"""Reading a verification folder: what was asked (experiment.json), where each run lives, which
runs are finished, and the summary over seeds (mean, std and the per-seed values of every
metric, per task and run label). Used by the experiment that writes the folder and by the
report that reads it.

A run label is a method name (`grpo`, `rlsd`, ...) or the name of a sensitivity variant
(`rlsd_epsw0.9`: a method with some settings changed, rlsd_min.lab.design.VARIANTS).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from datetime import datetime

from ..config import TrainConfig, save_json
from ..run_folder import RunFolderDamagedError, checkpoint_step, read_metrics
from .stability import collapsed, steps_to_threshold
from .stats import auc

THRESHOLD = 0.8
"""held-out accuracy for 'steps to threshold' of a task not in THRESHOLDS (arith and split:
their warm starts start near 0.5)"""
THRESHOLDS = {"mul7": 0.65}
"""the threshold of a task whose accuracy stays lower (mul7 starts at 0.34; GRPO reaches 0.65
near step 100 of 200)"""
TAIL = 10
"""steps averaged for the end-of-training value of per-step metrics (entropy, KL, ...)"""


def threshold_of(task: str) -> float:
    return THRESHOLDS.get(task, THRESHOLD)


def run_dir(out: str, task: str, label: str, seed: int) -> str:
    return os.path.join(out, "runs", task, label, f"seed{seed}")


def labels(exp: dict) -> list[str]:
    """The run labels of an experiment in their order: its methods, then its variants."""
    return list(exp["methods"]) + list(exp.get("variants", []))


def variants(exp: dict) -> dict:
    """{variant: {"method": its method, "sets": the settings it changes}} of an experiment."""
    tasks = {label: t for t in exp["tasks"] for label in exp.get("variants", {}) if f"{t}/{label}" in exp["configs"]}
    return {label: {"method": exp["configs"][f"{t}/{label}"]["method"], "sets": exp["variants"][label]}
            for label, t in tasks.items()}


def seeds_of(exp: dict, label: str) -> list[int]:
    """The seeds a run label is trained with: the experiment's, or `variant_seeds` for a variant."""
    return exp.get("variant_seeds", exp["seeds"]) if label in exp.get("variants", {}) else exp["seeds"]


def plan(exp: dict) -> list[tuple[str, str, int]]:
    """Every run of an experiment, (task, label, seed), in a fixed order: task, label, seed."""
    return [(t, label, s) for t in exp["tasks"] for label in labels(exp) if f"{t}/{label}" in exp["configs"]
            for s in seeds_of(exp, label)]


def upgrade(exp: dict) -> dict:
    """A recorded experiment in today's form: TrainConfig fields added since it ran filled in at
    their resolved defaults (the value those runs had in effect), and a single threshold for
    every task (the form before per-task thresholds) written per task. So an older folder is
    neither orphaned nor rewritten."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, cfg in exp["configs"].items():
        if set(cfg) != known:
            exp["configs"][key] = {**TrainConfig(**{k: v for k, v in cfg.items() if k in known}).validate().to_dict(),
                                   **{k: v for k, v in cfg.items()}}
    if not isinstance(exp.get("threshold"), dict):
        exp["threshold"] = {t: exp.get("threshold", THRESHOLD) for t in exp["tasks"]}
    return exp


def read_experiment(out: str) -> dict:
    """The experiment.json of a results folder, upgraded (`upgrade`)."""
    with open(os.path.join(out, "experiment.json")) as f:
        return upgrade(json.load(f))


def wall_s(path: str) -> float:
    """Training seconds recorded for a run folder (accumulated over resumes)."""
    wall = os.path.join(path, "wall_s.json")
    if not os.path.exists(wall):
        return 0.0
    with open(wall) as f:
        return json.load(f)["wall_s"]


def clock_span(paths: list[str]) -> dict | None:
    """When the runs in `paths` trained, read from their folders: {"elapsed_s": seconds from the
    first run's start to the last run's end, "at_once": the most runs training at the same time}.
    A run's start is its provenance.json start, its end that plus its training seconds
    (wall_s.json), so the span is known only when every run has its record and was never resumed
    (else None): a resumed run's seconds are split over starts the folder does not time one by one."""
    spans = []
    for path in paths:
        record = os.path.join(path, "provenance.json")
        if not os.path.exists(record):  # a folder older than provenance.json
            return None
        with open(record) as f:
            starts = json.load(f)["starts"]
        if len(starts) != 1:
            return None
        begin = datetime.fromisoformat(starts[0]["started"]).timestamp()
        spans.append((begin, begin + wall_s(path)))
    if not spans:
        return None
    events = sorted([(b, 1) for b, _ in spans] + [(e, -1) for _, e in spans])  # an end before a start at a tie
    running = at_once = 0
    for _, step in events:
        running += step
        at_once = max(at_once, running)
    return {"elapsed_s": max(e for _, e in spans) - min(b for b, _ in spans), "at_once": at_once}


def finished_history(path: str, steps: int) -> list[dict] | None:
    """The metrics history of a run folder that has done all `steps`, else None. Finished means
    the metrics end at `steps` and the checkpoint, where the folder keeps one, is of that step
    too (else the run resumes from its checkpoint). A damaged file is a RunFolderDamagedError naming it
    (a torn last line of metrics.jsonl is not: rlsd_min.run_folder.read_metrics)."""
    if not os.path.exists(os.path.join(path, "metrics.jsonl")):
        return None
    history = read_metrics(path)
    if not history or history[-1]["step"] != steps:
        return None
    saved = checkpoint_step(path)
    return history if saved is None or saved == steps else None


def run_status(path: str, steps: int) -> str:
    """'finished', 'to do', or 'damaged: <what and where>' for a run folder of `steps` steps."""
    try:
        return "to do" if finished_history(path, steps) is None else "finished"
    except RunFolderDamagedError as e:
        return f"damaged: {e}"


def _cell(values: list) -> dict:
    """Mean, std (n - 1) and n of the non-None values, and the values themselves (in seed order)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": []}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values}


def window_acc(evals: list[dict], lo: float, hi: float) -> float | None:
    """Mean held-out accuracy of the evaluations at steps in (lo, hi], or None if there is none."""
    accs = [r["eval_acc"] for r in evals if lo < r["step"] <= hi]
    return statistics.fmean(accs) if accs else None


def run_summary(history: list[dict], threshold: float = THRESHOLD) -> dict:
    """The numbers of one run: final, best and starting held-out accuracy, the area under the
    accuracy curve (`auc`, normalised by steps: the mean accuracy over training), steps to
    threshold (None if never reached; `steps_to_threshold_or_end` counts such a run at its last
    step), the mean accuracy over the first and the last quarter of the run, collapse, the last
    evaluation's probes, and per-step metrics averaged over the last TAIL steps."""
    evals = [r for r in history if "eval_acc" in r]
    accs = [r["eval_acc"] for r in evals]
    steps = [r for r in history if r["step"] > 0][-TAIL:]
    total, reached = history[-1]["step"], steps_to_threshold(history, threshold)
    out = {"final_acc": accs[-1], "best_acc": max(accs), "start_acc": accs[0],
           "auc": auc([r["step"] for r in evals], accs) if len(evals) > 1 else None,
           "steps_to_threshold": reached, "steps_to_threshold_or_end": total if reached is None else reached,
           "early_acc": window_acc(evals, 0, total / 4), "late_acc": window_acc(evals, 3 * total / 4, total),
           "collapsed": collapsed(accs)}
    out.update({k: v for k, v in evals[-1].items() if k.startswith("probe_")})
    for key in ("entropy", "completion_len", "teacher_kl", "distill_loss", "distill_floor", "frac_zero_std",
                "grad_norm", "reward_mean"):
        if steps and key in steps[0]:
            out[f"tail_{key}"] = statistics.fmean(r[key] for r in steps)
    return out


def summarize(out: str, write: bool = True) -> dict:
    """{task: {label: {metric: {mean, std, n, values}}}} over the finished seeds of `out`, plus the
    run count, the runs not finished (`missing`; those of them with a damaged file also under
    `damaged`, with the message naming it), the training seconds summed over runs (`wall_s`)
    and the experiment's wall-clock span (`clock`, clock_span); written to
    out/summary.json when `write`."""
    exp = read_experiment(out)
    table, wall, runs, missing, done, damaged = {}, 0.0, 0, [], [], {}
    for t in exp["tasks"]:
        for label in labels(exp):
            if f"{t}/{label}" not in exp["configs"]:
                continue
            per_seed = []
            for s in seeds_of(exp, label):
                path = run_dir(out, t, label, s)
                try:
                    history = finished_history(path, exp["configs"][f"{t}/{label}"]["steps"])
                except RunFolderDamagedError as e:
                    history, damaged[f"{t}/{label}/seed{s}"] = None, str(e)
                if history is None:
                    missing.append(f"{t}/{label}/seed{s}")
                    continue
                per_seed.append(run_summary(history, exp["threshold"][t]))
                wall += wall_s(path)
                runs += 1
                done.append(path)
            if not per_seed:
                continue
            keys = list(dict.fromkeys(k for r in per_seed for k in r))
            row = {k: _cell([r.get(k) for r in per_seed]) for k in keys if k not in ("collapsed",)}
            row["collapsed"] = sum(r["collapsed"] for r in per_seed)
            row["reached"] = sum(r["steps_to_threshold"] is not None for r in per_seed)
            row["seeds"] = len(per_seed)
            table.setdefault(t, {})[label] = row
    summary = {"profile": exp["profile"], "seeds": len(exp["seeds"]), "runs": runs, "wall_s": wall,
               "threshold": exp["threshold"], "collapse": exp["collapse"], "table": table,
               "clock": clock_span(done), "methods": list(exp["methods"]), "variants": variants(exp),
               "missing": missing}
    if "variant_seeds" in exp:
        summary["variant_seeds"] = len(exp["variant_seeds"])
    if damaged:  # absent when there are none: a sound folder's summary reads as before
        summary["damaged"] = damaged
    if write:
        save_json(summary, os.path.join(out, "summary.json"))
    return summary
