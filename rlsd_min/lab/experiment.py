"""The small-scale verification of the papers' claims: every method, each task, several seeds.

    python -m rlsd_min verify --profile cpu --final --jobs 2          # the final experiment on mul7 -> results/
    python -m rlsd_min verify --profile cpu --jobs 2 --out v          # 5 seeds x every method on mul7 -> v/
    python -m rlsd_min verify --tasks arith,split,mul7 --variants all --jobs 2   # + the other tasks, the variants
    python -m rlsd_min verify --shard 0/4 ...                         # a quarter of the runs, no report

trains GRPO, OPSD, GRPO+OPSD, RLSD and SDPG from the same warm start of each task
(`arith`: one valid answer; `split`: ten, the reference one of them at random; `mul7`: the
unsaturated one), each with seeds 0..S-1 (prompt order and sampling; the warm start is
shared), for longer than the demo so that late-training effects could show. Every run logs
held-out accuracy and the leakage probes at each evaluation (rlsd_min.leakage), and
OPSD-style runs on `split` log the exact floor of their distillation loss (distill_floor).
Sensitivity variants (a method with some of its settings changed) run beside them on the tasks
in VARIANT_TASKS. What runs by default, and the variants, are in rlsd_min.lab.design.

The folder holds `experiment.json` (what was asked), one run folder per
(task, label, seed) under `runs/`, `summary.json` (per-seed values, mean and std), the
figures and `REPORT.md`, all made from the run folders. Interrupted, the same command
resumes: finished runs are kept, unfinished ones go on from their last checkpoint. A
folder made by a different experiment is refused, never mixed or overwritten.

Parallel runs. `jobs` > 1 trains that many runs at once, each in its own worker process with
one torch thread; `jobs` = 1 trains in this process with torch's thread setting as it is.
Measured on the 2-core machine (README, "Verifying"): two one-thread workers make 1.2x the
steps per second of one two-thread process when nothing else runs, and several times more
when other jobs share the cores (a two-thread process slows sharply when they are
oversubscribed); each worker pays a few seconds to start, so short runs gain nothing. A
shard `i/n` trains only the runs whose position in the plan is i modulo n and writes no
report, so n machines (a SLURM array, say) can share the plan; a last plain call then trains
whatever is left and reports. A run folder is locked while it trains (rlsd_min.run_folder.RunDir),
so a run busy elsewhere is skipped, never trained twice at once; it is named, and left out of
the report until it has finished. A run with a damaged file (a metrics line, a checkpoint that
cannot be read or holds more than data) is skipped and named the same way, and the others go on.
"""

from __future__ import annotations

import dataclasses
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context

from tqdm.auto import tqdm

from ..config import TrainConfig, save_json, train_config
from ..leakage import FLOORS
from ..loop import check_problem_counts, train
from ..run_folder import RunFolderBusyError, RunFolderDamagedError, writing
from ..tasks import TASKS, ensure_data, load_splits
from .design import PLANS, VARIANT_TASKS, VARIANTS, VERIFY_METHODS, VERIFY_TASKS
from .report import write_report
from .results import (extends, plan, provenance_commands, read_experiment, run_dir, run_status, summarize,
                      threshold_of, wall_s)
from .stability import COLLAPSE_MARGIN, COLLAPSE_PATIENCE

# --- what the experiment runs -----------------------------------------------------------

def pick_variants(names) -> dict:
    """{name: (method, settings)} for a list of VARIANTS names, or all of them for ['all']."""
    names = list(names or ())
    if names == ["all"]:
        return dict(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {tuple(VARIANTS)} or 'all'")
    return {n: VARIANTS[n] for n in names}


def _config(profile: str, task: str, method: str, settings: dict) -> dict:
    cfg = train_config(profile, method=method, task=task, **settings)
    if task == "split" and cfg.divergence in FLOORS:  # a distillation term with an exact floor: log it
        cfg = dataclasses.replace(cfg, distill_floor=True).validate()
    return cfg.to_dict()


def experiment_config(profile: str, seeds: int, methods=VERIFY_METHODS, tasks=VERIFY_TASKS, sets=None,
                      variants=(), variant_seeds: int | None = None, label_seeds: dict | None = None) -> dict:
    """What the experiment will run: validated, before any long work starts. `variants` names
    entries of VARIANTS (or is ['all']); they run on the tasks that are also in VARIANT_TASKS,
    with seeds 0..variant_seeds-1 (None: the same seeds as the methods). `label_seeds`
    {label: n} gives a method or variant its own seeds 0..n-1 (rlsd_min.lab.design.FINAL)."""
    label_seeds = dict(label_seeds or {})
    for name, n in (("seeds", seeds), ("variant_seeds", seeds if variant_seeds is None else variant_seeds),
                    *((f"label_seeds[{k!r}]", v) for k, v in label_seeds.items())):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {n!r}")
    if profile not in PLANS:
        raise ValueError(f"unknown profile {profile!r}; choose from {tuple(PLANS)}")
    for t in tasks:  # methods are checked by train_config
        if t not in TASKS:
            raise ValueError(f"unknown task {t!r}; choose from {tuple(TASKS)}")
    chosen = pick_variants(variants)
    if chosen and not set(tasks) & set(VARIANT_TASKS):
        raise ValueError(f"variants run on the tasks {VARIANT_TASKS} only; add one of them to the tasks {tuple(tasks)}")
    configs = {}
    for t in tasks:
        for m in methods:
            configs[f"{t}/{m}"] = _config(profile, t, m, {**PLANS[profile][t], **(sets or {})})
        for name, (m, settings) in chosen.items():
            if t in VARIANT_TASKS:
                configs[f"{t}/{name}"] = _config(profile, t, m, {**PLANS[profile][t], **(sets or {}), **settings})
    exp = {"profile": profile, "seeds": list(range(seeds)), "methods": list(methods), "tasks": list(tasks),
           "threshold": {t: threshold_of(t) for t in tasks},
           "collapse": {"margin": COLLAPSE_MARGIN, "patience": COLLAPSE_PATIENCE}, "configs": configs}
    if chosen:  # absent when there are none: an experiment without variants records no such key
        exp["variants"] = {name: settings for name, (m, settings) in chosen.items()}
        if variant_seeds is not None and variant_seeds != seeds:
            exp["variant_seeds"] = list(range(variant_seeds))
    unknown = sorted(set(label_seeds) - set(methods) - set(chosen))
    if unknown:
        raise ValueError(f"label_seeds names {unknown}, which are neither methods {tuple(methods)} nor variants "
                         f"{tuple(chosen)} of this experiment")
    if label_seeds:  # absent when not given: an experiment without it records no such key
        exp["label_seeds"] = {k: list(range(n)) for k, n in label_seeds.items()}
    return exp


def _check_problems(exp: dict) -> None:
    """Every run's task must supply the distinct prompts a step and the probes ask for (the
    check `train` makes, here for all runs before the first one starts)."""
    for cfg in exp["configs"].values():
        cfg = TrainConfig(**cfg)
        ensure_data(cfg.data_path(), cfg.task)
        splits = load_splits(cfg.data_path())
        check_problem_counts(cfg, len(splits["train"]), len(splits["validation"]))


def check_folder(out: str, exp: dict) -> dict | None:
    """The experiment recorded in `out` (None for a folder not made yet), after checking that
    `exp` can train there: the same experiment, or one whose runs `exp` extends
    (results.extends). Anything else is refused, naming what differs and what to do."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"{out} is a file, not a results folder; pass another --out")
    if not os.path.exists(os.path.join(out, "experiment.json")):
        return None
    old = read_experiment(out)
    if old != exp and not extends(exp, old):
        diff = sorted(k for k in set(old) | set(exp) if old.get(k) != exp.get(k))
        fields = sorted({f for key, cfg in old["configs"].items() if key in exp["configs"]
                         for f in cfg if cfg[f] != exp["configs"][key].get(f)})
        diff = diff + [f"run settings {fields}"] if fields else diff
        made = provenance_commands([run_dir(out, t, label, s) for t, label, s in plan(old)])
        made = (f"`{_resume_command(made[0], out)}` (as its runs record it)" if made else
                f"(profile {old.get('profile')!r}, seeds {len(old.get('seeds', []))}, tasks {old.get('tasks')}, "
                f"variants {list(old.get('variants', {}))})")
        raise ValueError(
            f"{out} holds runs of a different experiment ({diff} differ); to resume it, repeat the command "
            f"that made it {made}; to start fresh, pass another --out (or delete {out} yourself)")
    return old


def _resume_command(recorded: str, out: str) -> str:
    """A run's recorded command line (provenance.json: `__main__.py verify ...`) as the command that
    resumes it in `out`: `python -m rlsd_min verify ... --out <out>`, whatever --out it had."""
    words = recorded.split()
    words = ["python -m rlsd_min" if w == "__main__.py" else w for w in words]
    if "--out" in words:
        i = words.index("--out")
        del words[i:i + 2]
    return " ".join(words + ["--out", out])


def _open_folder(out: str, exp: dict) -> None:
    """Record `exp` in a new folder, or check that the folder records the same experiment (then
    its experiment.json is left as it is) or one whose runs `exp` extends (then `exp` is
    recorded in its place, the finished runs kept): `check_folder`."""
    old = check_folder(out, exp)
    if old is not None:
        if old != exp:  # its runs are a first shard of exp: go on as exp
            save_json(exp, os.path.join(out, "experiment.json"))
        return
    with writing(out):
        os.makedirs(out, exist_ok=True)
        save_json(exp, os.path.join(out, "experiment.json"))


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/n' -> (i, n) with 0 <= i < n; None stays None."""
    if text is None:
        return None
    i, sep, n = str(text).partition("/")
    if not (sep and i.strip().isdigit() and n.strip().isdigit()) or not 0 <= int(i) < int(n):
        raise ValueError(f"--shard expects i/n with 0 <= i < n (e.g. 0/4), got {text!r}")
    return int(i), int(n)


def shard_runs(runs: list, shard: tuple[int, int] | None) -> list:
    """The runs of shard (i, n): those at positions i, i + n, i + 2n, ... of the whole plan, so
    the n shards are disjoint, together cover the plan, and do not move as runs finish."""
    if shard is None:
        return list(runs)
    i, n = shard
    return list(runs)[i::n]


# --- training the runs ------------------------------------------------------------------

def train_run(cfg: dict, path: str) -> str:
    """Train (or resume) one run in `path`; add its training seconds to wall_s.json there.
    Returns 'done', 'busy: ...' when another process holds the run folder, or 'damaged: ...'
    naming the file that keeps it from training (the other runs go on); any other error (a full
    disk, a folder of another run) stops the experiment."""
    cfg = TrainConfig(**cfg).validate()
    start, before = time.perf_counter(), wall_s(path)
    try:
        train(cfg, path, progress=False)
    except RunFolderBusyError as e:
        return f"busy: {e}"
    except RunFolderDamagedError as e:
        return f"damaged: {e}"
    with writing(path):
        save_json({"wall_s": before + time.perf_counter() - start}, os.path.join(path, "wall_s.json"))
    return "done"


def _one_thread() -> None:
    """Worker initialiser: one torch thread (intra- and inter-op) for the worker's whole life."""
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)


def _train_all(out: str, exp: dict, todo: list, jobs: int, progress: bool) -> list[str]:
    """Train the runs `todo` [(task, label, seed)], `jobs` at a time; return the messages of those
    busy elsewhere or damaged."""
    work = [(f"{t}/{label}/seed{s}", {**exp["configs"][f"{t}/{label}"], "seed": s}, run_dir(out, t, label, s))
            for t, label, s in todo]
    bar = tqdm(total=len(work), desc="verify", disable=not progress)
    skipped = []
    if jobs == 1:
        for name, cfg, path in work:
            bar.set_postfix(run=name)
            status = train_run(cfg, path)
            skipped += [f"{name} {status}"] if status != "done" else []
            bar.update()
    else:  # one process per run (max_tasks_per_child=1), spawned: nothing inherited from this one
        pool = ProcessPoolExecutor(jobs, mp_context=get_context("spawn"), initializer=_one_thread,
                                   max_tasks_per_child=1)
        try:
            futures = {pool.submit(train_run, cfg, path): name for name, cfg, path in work}
            for future in as_completed(futures):
                status = future.result()  # a failed run raises here; then the queued runs are
                skipped += [f"{futures[future]} {status}"] if status != "done" else []   # cancelled and
                bar.update()                                  # the ones in progress finish first
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    bar.close()
    return skipped


def run_experiment(out: str, profile: str, seeds: int, methods=VERIFY_METHODS, tasks=VERIFY_TASKS,
                   sets=None, variants=(), jobs: int = 1, shard: str | None = None, variant_seeds: int | None = None,
                   progress: bool = True, label_seeds: dict | None = None) -> dict | None:
    """Train every (task, label, seed) of the experiment (of its shard) not yet finished in `out`;
    then, without a shard, summarise and write the report and return the summary (None with a
    shard)."""
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    shard = parse_shard(shard)
    exp = experiment_config(profile, seeds, methods, tasks, sets, variants, variant_seeds, label_seeds)
    _check_problems(exp)
    _open_folder(out, exp)
    status = {(t, label, s): run_status(run_dir(out, t, label, s), exp["configs"][f"{t}/{label}"]["steps"])
              for t, label, s in shard_runs(plan(exp), shard)}
    skipped = [f"{t}/{label}/seed{s} {why}" for (t, label, s), why in status.items() if why.startswith("damaged")]
    skipped += _train_all(out, exp, [run for run, why in status.items() if why == "to do"], jobs, progress)
    for message in skipped:
        print(f"skipped {message}")
    held = sum(" busy: " in m for m in skipped)
    if held:
        print(f"{held} runs are held by another process, which trains them (named above); this call leaves them "
              "out: run the same command again once it has finished, to report them")
    if shard is not None:
        return None
    summary = summarize(out)
    write_report(out, summary)
    return summary
