"""Command line: python -m rlsd_min {data,warmstart,train,eval,demo,bench,verify} ...

    python -m rlsd_min data                       # write data/arith/{train,validation,test,ood}.jsonl
    python -m rlsd_min warmstart                  # supervised warm start -> data/base
    python -m rlsd_min train --method grpo --profile cpu --out runs/grpo
    python -m rlsd_min eval --ckpt runs/grpo/checkpoint --split test
    python -m rlsd_min demo                       # what `make demo` runs
    python -m rlsd_min bench --rounds 5           # seconds per step of each method, same batch
    python -m rlsd_min bench --scaling            # step time against group size, length, model size
    python -m rlsd_min verify --profile cpu --seeds 3   # every method x both tasks x 3 seeds -> results/
    python -m rlsd_min verify ... --jobs 2 / --shard 0/4 / --list   # parallel, a quarter of the runs, the plan
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

from ..config import PROFILES, ModelConfig, SFTConfig, TrainConfig, field_docs, pick_device, train_config
from ..tasks import TASKS

DEMO_METHODS = ("grpo", "rlsd", "sdpg")


def _bool(value: str) -> bool:
    if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(value)
    return value.lower() in ("true", "1")


def _parse_sets(pairs: list[str]) -> dict:
    """--set key=value pairs, typed like the TrainConfig field they name."""
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        if key not in types:
            raise ValueError(f"unknown TrainConfig field {key!r} in --set {pair!r}")
        kind = {"int": int, "float": float, "str": str, "bool": _bool}.get(str(types[key]).split(" | ")[0], str)
        try:
            out[key] = kind(value)
        except ValueError:
            raise ValueError(f"--set {pair!r}: {value!r} is not a valid {types[key]}") from None
    return out


def cmd_data(args) -> None:
    from ..tasks import SPLITS, build_datasets

    out = args.out or str(TASKS[args.task].data_dir)
    existing = [s for s in SPLITS if os.path.exists(os.path.join(out, f"{s}.jsonl"))]
    if existing and not args.force:
        raise SystemExit(f"{out} already holds {existing}; pass --force to overwrite them")
    paths = build_datasets(dataclasses.replace(TASKS[args.task].data, seed=args.seed), out, args.seed)
    print("\n".join(f"{k}: {v}" for k, v in paths.items()))


def cmd_warmstart(args) -> None:
    from ..sft import warm_start
    from ..tasks import ensure_data

    data, out = args.data or str(TASKS[args.task].data_dir), args.out or str(TASKS[args.task].base_checkpoint)
    if os.path.exists(os.path.join(out, "config.json")) and not args.force:
        raise SystemExit(f"{out} already holds a checkpoint; pass --force to replace it")
    task = TASKS[args.task]
    ensure_data(data, task.data)
    sft = {**task.sft, "seed": args.seed, **({"target_acc": args.target_acc} if args.target_acc is not None else {})}
    s = warm_start(out, data, ModelConfig(**task.model), task.data, SFTConfig(**sft), device=pick_device())
    print(f"warm start: {s['steps']} steps, {s['seconds']} s, {s['params']} parameters, "
          f"validation accuracy sampled {s['val_acc_sampled']:.3f} / greedy {s['val_acc_greedy']:.3f} -> {out}")


def cmd_train(args) -> None:
    from ..loop import last_eval, train
    from ..tasks import ensure_data

    cfg = train_config(args.profile, **{"method": args.method, "task": args.task, **_parse_sets(args.set)})
    ensure_data(cfg.data_path(), TASKS[cfg.task].data)
    out = args.out or os.path.join("runs", f"{cfg.task}-{cfg.method}-{cfg.profile}-seed{cfg.seed}")
    history = train(cfg, out)
    print(f"{cfg.method}: validation accuracy {history[0]['eval_acc']:.3f} -> {last_eval(history):.3f}; run in {out}")


def cmd_eval(args) -> None:
    from ..evaluation import evaluate
    from ..model import load
    from ..tasks import load_splits, problems_of

    model, tok = load(args.ckpt or str(TASKS[args.task].base_checkpoint), pick_device())
    problems = problems_of(load_splits(args.data or str(TASKS[args.task].data_dir))[args.split])
    acc = evaluate(model, tok, problems, samples=args.samples, seed=args.seed)
    greedy = evaluate(model, tok, problems, greedy=True)
    print(f"{args.ckpt} on {args.split} ({len(problems)} problems): "
          f"sampled accuracy {acc:.3f} ({args.samples} per problem), greedy accuracy {greedy:.3f}")


def cmd_demo(args) -> None:
    """Warm start if needed, then each demo method from the same base; plot and print."""
    import matplotlib.pyplot as plt

    from ..loop import last_eval, train
    from ..tasks import ensure_data
    from .plots import plot_eval_curves

    t0 = time.time()
    ensure_data(str(TASKS["arith"].data_dir), TASKS["arith"].data)
    if not os.path.exists(os.path.join(TASKS["arith"].base_checkpoint, "config.json")):
        cmd_warmstart(argparse.Namespace(task="arith", out=None, data=None, target_acc=0.45, seed=0, force=False))
    histories = {}
    for method in DEMO_METHODS:
        cfg = train_config(args.profile, method=method)
        histories[method] = train(cfg, os.path.join(args.out, method))
    ax = plot_eval_curves(histories, title=f"{args.profile} profile, from the same warm start")
    path = os.path.join(args.out, "demo.png")
    ax.figure.savefig(path, bbox_inches="tight")
    plt.close(ax.figure)
    print(f"\nwarm start validation accuracy (sampled): {histories[DEMO_METHODS[0]][0]['eval_acc']:.3f}")
    for method, history in histories.items():
        print(f"after {history[-1]['step']} steps of {method:5s}: {last_eval(history):.3f}")
    print(f"plot: {path}   ({time.time() - t0:.0f} s)")


def cmd_bench(args) -> None:
    import torch

    from .bench import MEMORY_NOTE, format_table, step_times, summarize

    header = f"device {pick_device()}, torch threads {torch.get_num_threads()}"

    if args.trl:
        import warnings

        from .bench_trl import format_comparison, trl_comparison

        warnings.filterwarnings("ignore", category=FutureWarning)
        times = trl_comparison(args.profile, args.rounds, args.warmup)
        print(f"\n{args.profile} profile, GRPO, {args.rounds} steps after {args.warmup} warm-up, interleaved, {header}")
        print(format_comparison(times))
        return
    if args.scaling:
        from .bench_scaling import format_scaling, scaling_times, summarize_scaling

        times = scaling_times(tuple(args.axes.split(",")), tuple((args.methods or "grpo,rlsd").split(",")),
                              args.profile, args.rounds, args.warmup)
        print(f"\n{args.profile} profile, {args.rounds} rounds after {args.warmup} warm-up, interleaved per axis, "
              f"{header}; {MEMORY_NOTE}")
        print(format_scaling(summarize_scaling(times)))
        return
    methods = tuple((args.methods or "grpo,opsd,grpo_opsd,rlsd,sdpg").split(","))
    times = step_times(methods, args.profile, args.rounds, args.warmup)
    print(f"\n{args.profile} profile, {args.rounds} rounds after {args.warmup} warm-up, {header}; "
          f"phases in seconds; {MEMORY_NOTE}")
    print(format_table(summarize(times)))


def cmd_verify(args) -> None:
    from .experiment import experiment_config, run_experiment
    from .results import finished_history, plan, run_dir

    methods = tuple(m for m in args.methods.split(",") if m)
    variants = tuple(v for v in (args.variants or "").split(",") if v)
    if args.list:  # the plan, one run a line: what a scheduler fans out with --shard
        exp = experiment_config(args.profile, args.seeds, methods, tuple(args.tasks.split(",")),
                                _parse_sets(args.set), variants, args.variant_seeds)
        runs = plan(exp)
        for i, (t, label, s) in enumerate(runs):
            done = finished_history(run_dir(args.out, t, label, s), exp["configs"][f"{t}/{label}"]["steps"])
            print(f"{i}\t{t}/{label}/seed{s}\t{'finished' if done is not None else 'to do'}")
        return
    t0 = time.time()
    summary = run_experiment(args.out, args.profile, args.seeds, methods, tuple(args.tasks.split(",")),
                             _parse_sets(args.set), variants, args.jobs, args.shard, args.variant_seeds)
    if summary is None:
        print(f"shard {args.shard} done in {(time.time() - t0) / 60:.1f} min; once every shard is done, the same "
              f"command without --shard reports -> {os.path.join(args.out, 'REPORT.md')}")
        return
    missing = f"; {len(summary['missing'])} runs not finished" if summary["missing"] else ""
    print(f"{summary['runs']} runs ({summary['wall_s'] / 60:.1f} min of training in total; this call "
          f"{(time.time() - t0) / 60:.1f} min{missing}) -> {os.path.join(args.out, 'REPORT.md')}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlsd_min", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    task_help = f"one of {tuple(TASKS)}: arith (one valid answer), split (ten), mul7 (one, longer and unsaturated)"
    p = sub.add_parser("data", help="write the data files")
    p.add_argument("--task", default="arith", choices=tuple(TASKS), help=task_help)
    p.add_argument("--out", default=None, help="default: the task's folder under data/")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("warmstart", help="supervised warm start of a fresh model")
    p.add_argument("--task", default="arith", choices=tuple(TASKS), help=task_help)
    p.add_argument("--out", default=None, help="default: data/base (arith), data/base_split (split)")
    p.add_argument("--data", default=None, help="default: the task's data folder")
    p.add_argument("--target-acc", type=float, default=None,
                   help=f"stop at this sampled validation accuracy (default: the task's, else {SFTConfig().target_acc})")
    p.add_argument("--seed", type=int, default=SFTConfig().seed)
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint")
    p.set_defaults(func=cmd_warmstart)

    fields = "\n".join(f"  {name} = {default!r}: {doc}" for name, (default, doc) in field_docs(TrainConfig).items()
                        if name not in ("profile", "method"))
    p = sub.add_parser("train", help="RL from the warm start", epilog="TrainConfig fields for --set (cpu defaults; "
                       "a method's own defaults apply on top):\n" + fields,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="grpo", help="one of grpo, opsd, grpo_opsd, rlsd, sdpg")
    p.add_argument("--task", default="arith", choices=tuple(TASKS), help=task_help)
    p.add_argument("--profile", default=None, help=f"one of {tuple(PROFILES)} (default: $RLSD_PROFILE, else gpu with CUDA, else cpu)")
    p.add_argument("--out", default=None, help="run folder (resumed if it holds a checkpoint)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override TrainConfig fields")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="accuracy of a checkpoint on a split")
    p.add_argument("--task", default="arith", choices=tuple(TASKS), help=task_help)
    p.add_argument("--ckpt", default=None, help="default: the task's warm start")
    p.add_argument("--data", default=None, help="default: the task's data folder")
    p.add_argument("--split", default="test", choices=["train", "validation", "test", "ood"])
    p.add_argument("--samples", type=int, default=4, help="sampled completions per problem")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("demo", help="warm start if needed, RL from it, plot")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--out", default=os.path.join("runs", "demo"))
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("bench", help="median seconds per RL step of each method on the same batch, with the "
                       "cost split, sampling throughput and peak memory")
    p.add_argument("--profile", default="cpu")
    p.add_argument("--methods", default=None, help="comma-separated (default: all five; grpo,rlsd with --scaling)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--trl", action="store_true", help="rlsd_min GRPO against TRL's GRPOTrainer (needs .[bench])")
    p.add_argument("--scaling", action="store_true", help="step time against each axis of --axes (rlsd_min.bench_scaling)")
    p.add_argument("--axes", default="group,length,model", help="with --scaling: any of group, length, model, flags")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("verify", help="every method on each task over several seeds -> results/ and REPORT.md")
    p.add_argument("--profile", default="cpu", help=f"one of {tuple(PROFILES)}")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--out", default="results", help="results folder (resumed if it holds this experiment)")
    p.add_argument("--methods", default="grpo,opsd,grpo_opsd,rlsd,sdpg")
    p.add_argument("--tasks", default="arith,split", help=f"comma-separated, from {tuple(TASKS)}")
    p.add_argument("--variants", default="", help="sensitivity variants (rlsd_min.lab.experiment.VARIANTS), "
                   "comma-separated, or 'all'; they run on mul7")
    p.add_argument("--variant-seeds", type=int, default=None, help="seeds of each variant (default: --seeds)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override TrainConfig fields of every run")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own one-thread process "
                   "(1: in this process, torch's threads as they are)")
    p.add_argument("--shard", default=None, metavar="I/N", help="train only the runs at positions I, I+N, ... of "
                   "the plan (0 <= I < N) and write no report; the same command without --shard reports")
    p.add_argument("--list", action="store_true", help="print the plan (position, run, finished or not) and exit")
    p.set_defaults(func=cmd_verify)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
