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

from ..config import TrainConfig, current_names, save_json
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
    """The seeds a run label is trained with: its own in `label_seeds` (a plan with a seed count
    per label, rlsd_min.lab.design.FINAL), else `variant_seeds` for a variant, else the
    experiment's."""
    if label in exp.get("label_seeds", {}):
        return exp["label_seeds"][label]
    return exp.get("variant_seeds", exp["seeds"]) if label in exp.get("variants", {}) else exp["seeds"]


def extends(exp: dict, old: dict) -> bool:
    """Whether experiment `exp` holds every run of the recorded experiment `old` unchanged: the
    same profile, tasks, thresholds and collapse rule, each of old's run labels with the same
    config and its seeds among exp's. A folder of `old` then serves as the first shard of
    `exp` (its finished runs are kept); any other difference is another experiment."""
    same = all(exp.get(k) == old.get(k) for k in ("profile", "tasks", "threshold", "collapse"))
    return same and all(exp["configs"].get(f"{t}/{label}") == old["configs"].get(f"{t}/{label}")
                        and set(seeds_of(old, label)) <= set(seeds_of(exp, label))
                        for t, label, _ in plan(old))


def plan(exp: dict) -> list[tuple[str, str, int]]:
    """Every run of an experiment, (task, label, seed), in a fixed order: task, then seed, then label.
    Seed-major, so a plan trained part of the way holds whole paired seeds: seed k of every label
    that has it before any label's seed k + 1."""
    runs = [(t, label, k, s) for t in exp["tasks"] for label in labels(exp) if f"{t}/{label}" in exp["configs"]
            for k, s in enumerate(seeds_of(exp, label))]                   # k: the seed's place in its label's
    runs.sort(key=lambda run: (exp["tasks"].index(run[0]), run[2]))        # stable: labels keep their order
    return [(t, label, s) for t, label, _, s in runs]


def upgrade(exp: dict) -> dict:
    """A recorded experiment in the current form: renamed TrainConfig fields under their current names,
    fields added since it ran filled in at
    their resolved defaults (the value those runs had in effect), and a single threshold for
    every task (the form before per-task thresholds) written per task. So an older folder is
    neither orphaned nor rewritten."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    exp["configs"] = {key: current_names(cfg) for key, cfg in exp["configs"].items()}   # renamed fields
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


def _cell(values: list, seeds: list) -> dict:
    """Mean, std (n - 1) and n of the non-None values, the values themselves (in seed order) and
    the seed of each (what the paired statistics pair on)."""
    kept = [(s, v) for s, v in zip(seeds, values) if v is not None]
    values = [v for _, v in kept]
    if not values:
        return {"mean": None, "std": None, "n": 0, "values": [], "seeds": []}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values), "values": values, "seeds": [s for s, _ in kept]}


def window_acc(evals: list[dict], lo: float, hi: float) -> float | None:
    """Mean held-out accuracy of the evaluations at steps in (lo, hi], or None if there is none."""
    accs = [r["eval_acc"] for r in evals if lo < r["step"] <= hi]
    return statistics.fmean(accs) if accs else None


ENDPOINT = "mean held-out accuracy over the evaluations at steps in (3T/4, T], T the run's steps"
"""what `final_acc` is (the cpu profile's mul7 runs: steps 160, 170, 180, 190 and 200 of 200)"""


def final_window(total: int) -> tuple[float, float]:
    """The steps (lo, hi] whose evaluations `final_acc` averages: the last quarter of training."""
    return 3 * total / 4, total


def missing_probes(probes: dict) -> dict:
    """An evaluation's probes with the ones whose fraction has no denominator set to None. Today's
    probes leave such a fraction out (`leakage.leakage_probes`); runs of earlier code logged it as 0,
    so it is set to None where the evaluation shows it had nothing to count: ref_match_s (a
    fraction of the correct answers) where probe_acc_s is 0, and both disagree_s (a fraction of the
    completions with a parsed answer and scratchpad) where the log-ratio probes ran but no
    completion of either probe sample has a final-answer token (probe_logratio_answer absent: no
    completion ends on a line of digits after a newline, so none has both). A sibling run has no
    log-ratio probes at all (`leakage_probes`), so its disagree_s is kept as logged."""
    out = dict(probes)
    ratios = any(k.startswith("probe_logratio_") for k in out)
    for split in ("train", "heldout"):
        if f"probe_ref_match_{split}" in out and out.get(f"probe_acc_{split}") == 0:
            out[f"probe_ref_match_{split}"] = None
        if f"probe_disagree_{split}" in out and ratios and "probe_logratio_answer" not in out:
            out[f"probe_disagree_{split}"] = None
    return out


def run_summary(history: list[dict], threshold: float = THRESHOLD) -> dict:
    """The numbers of one run: `final_acc` (ENDPOINT: the mean held-out accuracy over the last
    quarter's evaluations, robust to one evaluation's noise), `last_acc` (the last evaluation
    alone), best and starting held-out accuracy, the area under the accuracy curve (`auc`,
    normalised by steps: the mean accuracy over training), steps to threshold (None if never
    reached; `steps_to_threshold_or_end` counts such a run at its last step), the mean accuracy
    over the first quarter (`early_acc`) and the last (`late_acc`, the same window as
    final_acc), collapse, the last evaluation's probes (`missing_probes`), and per-step metrics
    averaged over the last TAIL steps."""
    evals = [r for r in history if "eval_acc" in r]
    accs = [r["eval_acc"] for r in evals]
    steps = [r for r in history if r["step"] > 0][-TAIL:]
    total, reached = history[-1]["step"], steps_to_threshold(history, threshold)
    final = window_acc(evals, *final_window(total))
    out = {"final_acc": final, "last_acc": accs[-1], "best_acc": max(accs), "start_acc": accs[0],
           "auc": auc([r["step"] for r in evals], accs) if len(evals) > 1 else None,
           "steps_to_threshold": reached, "steps_to_threshold_or_end": total if reached is None else reached,
           "early_acc": window_acc(evals, 0, total / 4), "late_acc": final,
           "collapsed": collapsed(accs)}
    out.update(missing_probes({k: v for k, v in evals[-1].items() if k.startswith("probe_")}))
    for key in ("entropy", "completion_len", "teacher_kl", "teacher_frac", "distill_loss", "distill_floor",
                "frac_zero_std", "grad_norm", "reward_mean"):
        if steps and key in steps[0]:
            out[f"tail_{key}"] = statistics.fmean(r[key] for r in steps)
    return out


SETTINGS = ("method", "steps", "teacher_mode", "teacher_context", "distill_coef", "loss_agg", "sdpg_gate",
            "rlsd_lam", "rlsd_lam_steps", "eval_problems", "eval_samples")
"""the settings of each run label copied into the summary (what the report names a claim by, and
what each evaluation samples)"""


def provenance_commands(paths: list[str]) -> list[str]:
    """The distinct command lines that trained the runs in `paths` (each start's, as provenance.json
    records it: the script's name, `__main__.py` for `python -m ...`, then its arguments), in the
    order first met."""
    commands = []
    for path in paths:
        record = os.path.join(path, "provenance.json")
        if not os.path.exists(record):
            continue
        with open(record) as f:
            for start in json.load(f)["starts"]:
                argv = start.get("command") or []
                text = " ".join(argv) if argv else None
                if text and text not in commands:
                    commands.append(text)
    return commands


def summarize(out: str, write: bool = True) -> dict:
    """{task: {label: {metric: {mean, std, n, values, seeds}}}} over the finished seeds of `out`,
    plus the run count, the runs not finished (`missing`; those of them with a damaged file also under
    `damaged`, with the message naming it), the training seconds summed over runs
    (`wall_s`) and per run of each task/label (`run_wall_s`), the experiment's wall-clock span
    (`clock`, clock_span), the endpoint (`endpoint`, ENDPOINT), the command lines of the runs'
    provenance (`commands`) and each task/label's SETTINGS (`settings`); written to
    out/summary.json when `write`."""
    exp = read_experiment(out)
    table, wall, runs, missing, done, walls, damaged = {}, 0.0, 0, [], [], {}, {}
    for t in exp["tasks"]:
        for label in labels(exp):
            if f"{t}/{label}" not in exp["configs"]:
                continue
            per_seed, seeds = [], []
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
                seeds.append(s)
                walls.setdefault(f"{t}/{label}", []).append(wall_s(path))
                wall += wall_s(path)
                runs += 1
                done.append(path)
            if not per_seed:
                continue
            keys = list(dict.fromkeys(k for r in per_seed for k in r))
            row = {k: _cell([r.get(k) for r in per_seed], seeds) for k in keys if k not in ("collapsed",)}
            row["collapsed"] = sum(r["collapsed"] for r in per_seed)
            row["reached"] = sum(r["steps_to_threshold"] is not None for r in per_seed)
            row["seeds"] = len(per_seed)
            table.setdefault(t, {})[label] = row
    summary = {"profile": exp["profile"], "seeds": len(exp["seeds"]), "runs": runs, "wall_s": wall,
               "threshold": exp["threshold"], "collapse": exp["collapse"], "table": table,
               "clock": clock_span(done), "methods": list(exp["methods"]), "variants": variants(exp),
               "missing": missing, "endpoint": ENDPOINT, "commands": provenance_commands(done),
               "settings": {key: {k: cfg[k] for k in SETTINGS} for key, cfg in exp["configs"].items()},
               "run_wall_s": {key: statistics.fmean(v) for key, v in walls.items()}}
    if "variant_seeds" in exp:
        summary["variant_seeds"] = len(exp["variant_seeds"])
    if damaged:  # absent when there are none: a sound folder's summary has no such key
        summary["damaged"] = damaged
    if write:
        save_json(summary, os.path.join(out, "summary.json"))
    return summary


def plan_budget(out: str, exp: dict) -> list[str]:
    """The plan of `exp` per run label (seeds, finished in `out`, to do) and its projected time:
    a run's training seconds are the mean of that label's finished runs in `out` (wall_s.json),
    else its method's label's scaled by the ratio of steps; the clock time divides the seconds to
    do by the runs that trained at once on average in `out` (clock_span: --jobs 2 gave 1.92)."""
    finished = {(t, label, s) for t, label, s in plan(exp)
                if run_status(run_dir(out, t, label, s), exp["configs"][f"{t}/{label}"]["steps"]) == "finished"}
    measured = {}
    for t, label, s in sorted(finished):
        measured.setdefault(f"{t}/{label}", []).append(wall_s(run_dir(out, t, label, s)))
    lines, todo_s, unknown = [], 0.0, []
    for key, cfg in exp["configs"].items():
        t, label = key.split("/")
        seeds = seeds_of(exp, label)
        done = sum((t, label, s) in finished for s in seeds)
        base = key if key in measured else f"{t}/{cfg['method']}"
        per_run = (statistics.fmean(measured[base]) * cfg["steps"] / exp["configs"][base]["steps"]
                   if base in measured else None)
        if per_run is None:
            unknown.append(key)
        else:
            todo_s += (len(seeds) - done) * per_run
        basis = "no finished run to time it by" if per_run is None else \
            f"{per_run / 60:.1f} min per run ({'measured' if base == key else f'from {base}'})"
        lines.append(f"{key}: {len(seeds)} seeds, {done} finished, {len(seeds) - done} to do; {basis}")
    runs, done = len(plan(exp)), len(finished)
    clock = clock_span([run_dir(out, t, label, s) for t, label, s in sorted(finished)])
    at_once = sum(v for vs in measured.values() for v in vs) / clock["elapsed_s"] if clock else None
    lines.append(f"total: {runs} runs, {done} finished, {runs - done} to do: {todo_s / 3600:.1f} h of training"
                 + (f" (not counting {', '.join(unknown)})" if unknown else "")
                 + (f", about {todo_s / at_once / 3600:.1f} h on the clock at the {at_once:.2f} runs at once "
                    f"measured in {out} ({done / clock['elapsed_s'] * 3600:.1f} runs per hour there)" if at_once else ""))
    return lines
