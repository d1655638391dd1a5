"""Command line: python -m rlsd_min {data,warmstart,train,eval,demo,bench,verify} ...

    python -m rlsd_min data                       # write data/arith/{train,validation,test,ood}.jsonl
    python -m rlsd_min warmstart                  # supervised warm start -> data/base
    python -m rlsd_min train --method grpo --profile cpu --out runs/grpo
    python -m rlsd_min eval --ckpt runs/grpo/checkpoint --split test
    python -m rlsd_min demo                       # what `make demo` runs
    python -m rlsd_min bench --rounds 5           # seconds per step of each method, same batch
    python -m rlsd_min bench --scaling            # step time against group size, length, model size
    python -m rlsd_min verify --profile cpu --jobs 2    # every method x mul7 x 5 seeds -> runs/verify
    python -m rlsd_min verify --profile cpu --final --jobs 2    # the final experiment -> results/
    python -m rlsd_min verify ... --jobs 2 / --shard 0/4 / --list   # parallel, a quarter of the runs, the plan
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import statistics
import sys
import time

# Nothing heavier than torch at the top (the method records hold their losses): --help and every
# check of a name or a --set answer in about a second; transformers, datasets and matplotlib load
# inside the commands that need them.
from ..config import (BOOLS, PROFILES, RENAMED_FIELDS, ModelConfig, SFTConfig, TrainConfig, field_docs, field_types,
                      parse_field, pick_device, train_config)
from ..methods import METHODS
from ..tasks import TASKS
from .design import COMMITTED_VARIANTS, VARIANT_TASKS, VARIANTS, VERIFY_METHODS, VERIFY_SEEDS, VERIFY_TASKS

FLAG_FIELDS = {"method": "--method", "task": "--task", "profile": "--profile"}
"""TrainConfig fields that have their own flag: not settable through --set too"""


def _parse_sets(pairs: list[str]) -> dict:
    """--set key=value pairs, typed like the TrainConfig field they name."""
    types = field_types(TrainConfig)
    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        if key in RENAMED_FIELDS:
            raise ValueError(f"--set {pair!r}: {key} is now called {RENAMED_FIELDS[key]}; "
                             f"pass --set {RENAMED_FIELDS[key]}={value}")
        if key in FLAG_FIELDS:
            raise ValueError(f"--set {pair!r}: {key} has its own flag; pass {FLAG_FIELDS[key]} {value} instead")
        if key not in types:
            close = difflib.get_close_matches(key, list(types), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else "; `train --help` lists the fields"
            raise ValueError(f"unknown TrainConfig field {key!r} in --set {pair!r}{hint}")
        if key in out:
            raise ValueError(f"--set {key} is given twice ({out[key]!r} and {value!r})")
        try:
            out[key] = parse_field(TrainConfig, key, value)
        except ValueError as e:
            raise ValueError(f"--set {pair!r}: {e}") from None
    return out


class _Help(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks and shows every option's default (where its help
    does not already say it)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


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
    ensure_data(data, args.task)
    sft = {**task.sft, "seed": args.seed, **({"target_acc": args.target_acc} if args.target_acc is not None else {})}
    s = warm_start(out, data, ModelConfig(**task.model), task.data, SFTConfig(**sft), device=pick_device())
    print(f"warm start: {s['steps']} steps, {s['seconds']} s, {s['params']} parameters, "
          f"validation accuracy sampled {s['val_acc_sampled']:.3f} / greedy {s['val_acc_greedy']:.3f} -> {out}")


def cmd_train(args) -> None:
    sets = _parse_sets(args.set)  # before any heavy import: a typo answers at once
    cfg = train_config(args.profile, **{"method": args.method, "task": args.task, **sets})
    if args.print_config:  # exactly what the run folder's config.json would hold
        print(json.dumps(cfg.to_dict(), indent=2, sort_keys=True))
        return
    from ..loop import last_eval, train
    from ..tasks import ensure_data

    ensure_data(cfg.data_path(), cfg.task)
    out = args.out or os.path.join("runs", f"{cfg.task}-{cfg.method}-{cfg.profile}-seed{cfg.seed}")
    history = train(cfg, out)
    print(f"{cfg.method}: validation accuracy {history[0]['eval_acc']:.3f} -> {last_eval(history):.3f}; run in {out}")


def cmd_eval(args) -> None:
    for name in ("samples", "seeds"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.ckpt:
        from ..run_folder import checkpoint_of

        ckpt, run_task, step = checkpoint_of(args.ckpt)
        task = args.task or run_task or "arith"
        if args.task and run_task and args.task != run_task:
            raise ValueError(f"--task {args.task} but the run in {args.ckpt} trained on task {run_task!r}")
        what = f"{ckpt} (task {task})" + ("" if step is None else f" at step {step} of the run")
    else:
        task = args.task or "arith"
        ckpt = str(TASKS[task].base_checkpoint)
        what = f"the warm start of task {task!r} ({ckpt})"
    print(f"evaluating {what}")
    from tqdm.auto import tqdm

    from ..evaluation import evaluate
    from ..model import load
    from ..tasks import load_splits, problems_of

    model, tok = load(ckpt, pick_device())
    problems = problems_of(load_splits(args.data or str(TASKS[task].data_dir))[args.split])
    seeds = range(args.seed, args.seed + args.seeds)
    accs = [evaluate(model, tok, problems, samples=args.samples, seed=s) for s in tqdm(seeds, desc="eval",
                                                                                    disable=args.seeds == 1)]
    greedy = evaluate(model, tok, problems, greedy=True)
    if args.seeds > 1:  # the evaluation's own noise: the same weights, other sampling seeds
        print("sampled accuracy per seed: " + ", ".join(f"{s} {a:.4f}" for s, a in zip(seeds, accs)))
        print(f"{args.split} ({len(problems)} problems, {args.samples} per problem): sampled accuracy mean "
              f"{statistics.fmean(accs):.4f}, sd over {args.seeds} seeds {statistics.stdev(accs):.4f}; "
              f"greedy accuracy {greedy:.3f}")
        return
    print(f"{args.split} ({len(problems)} problems): sampled accuracy {accs[0]:.3f} ({args.samples} per problem, "
          f"seed {args.seed}), greedy accuracy {greedy:.3f}")


def cmd_demo(args) -> None:
    """Warm start if needed, then each demo method from the same base; plot and print."""
    import matplotlib.pyplot as plt

    from ..loop import last_eval, train
    from ..tasks import ensure_data
    from .plots import plot_eval_curves

    t0 = time.time()
    ensure_data(str(TASKS["arith"].data_dir), "arith")
    if not os.path.exists(os.path.join(TASKS["arith"].base_checkpoint, "config.json")):
        cmd_warmstart(argparse.Namespace(task="arith", out=None, data=None, target_acc=0.45, seed=0, force=False))
    histories = {}
    demo = [m.name for m in METHODS.values() if m.demo]
    for method in demo:
        cfg = train_config(args.profile, method=method)
        histories[method] = train(cfg, os.path.join(args.out, method))
    ax = plot_eval_curves(histories, title=f"{args.profile} profile, from the same warm start")
    path = os.path.join(args.out, "demo.png")
    ax.figure.savefig(path, bbox_inches="tight")
    plt.close(ax.figure)
    print(f"\nwarm start validation accuracy (sampled): {histories[demo[0]][0]['eval_acc']:.3f}")
    for method, history in histories.items():
        print(f"after {history[-1]['step']} steps of {method:5s}: {last_eval(history):.3f}")
    print(f"plot: {path}   ({time.time() - t0:.0f} s)")


def cmd_bench(args) -> None:
    import torch

    from .bench import MEMORY_NOTE, format_limits, format_table, step_times, summarize

    fields = _parse_sets(args.set)
    if fields and (args.scaling or args.trl_trainers or args.vocab):
        which = "--scaling (its flags axis sets the speed flags itself)" if args.scaling else \
            "--trl-trainers (each trainer runs its method's defaults)" if args.trl_trainers else \
            "--vocab (each method at its defaults)"
        raise ValueError(f"--set is not taken by {which}")
    header = f"device {pick_device()}, torch threads {torch.get_num_threads()}"
    if fields:
        header += ", " + " ".join(f"{k}={v}" for k, v in fields.items())

    if args.trl_trainers:
        import warnings

        from .bench_trl import TRAINER_METHODS, format_trainer_comparison, trainer_comparison

        warnings.filterwarnings("ignore", category=FutureWarning)
        methods = tuple(args.methods.split(",")) if args.methods else TRAINER_METHODS
        times = trainer_comparison(args.profile, args.rounds, args.warmup, methods)
        print(f"\n{args.profile} profile, {args.rounds} rounds after {args.warmup} warm-up, interleaved, {header}")
        print(format_trainer_comparison(times))
        return
    if args.vocab:
        from .bench_vocab import format_vocab, vocab_peaks

        print(format_vocab(vocab_peaks(tuple(args.methods.split(",")) if args.methods else tuple(METHODS))))
        return
    if args.trl:
        import warnings

        from .bench_trl import format_comparison, trl_comparison

        warnings.filterwarnings("ignore", category=FutureWarning)
        times = trl_comparison(args.profile, args.rounds, args.warmup, fields)
        print(f"\n{args.profile} profile, GRPO, {args.rounds} steps after {args.warmup} warm-up, interleaved, {header}")
        print(format_comparison(times))
        return
    if args.scaling:
        from .bench_scaling import SCALING_METHODS, format_scaling, scaling_times, summarize_scaling

        methods = tuple(args.methods.split(",")) if args.methods else SCALING_METHODS
        times = scaling_times(tuple(args.axes.split(",")), methods,
                              args.profile, args.rounds, args.warmup)
        print(f"\n{args.profile} profile, {args.rounds} rounds after {args.warmup} warm-up, interleaved per axis, "
              f"{header}; {MEMORY_NOTE}")
        print(format_scaling(summarize_scaling(times)))
        return
    methods = tuple(args.methods.split(",")) if args.methods else tuple(METHODS)
    times = step_times(methods, args.profile, args.rounds, args.warmup, fields=fields)
    print(f"\n{args.profile} profile, {args.rounds} rounds after {args.warmup} warm-up, {header}; "
          f"phases in seconds; {MEMORY_NOTE}")
    rows = summarize(times)
    print(format_table(rows))
    print()
    print(format_limits(rows))


def cmd_verify(args) -> None:
    from .blocks import refresh_after_report
    from .design import FINAL_SETS, final_plan
    from .experiment import check_folder, experiment_config, run_experiment
    from .report import write_report
    from .results import plan, plan_budget, run_dir, run_status, summarize

    methods = tuple(m for m in args.methods.split(",") if m)
    variants = tuple(v for v in (args.variants or "").split(",") if v)
    label_seeds, sets = None, _parse_sets(args.set)
    if args.out is None:  # the committed final experiment resumes in place; anything else is the user's own
        args.out = "results" if args.final else os.path.join("runs", "verify")
    if args.final:  # design.FINAL in place of --seeds, --methods, --variants, --variant-seeds
        methods, variants, label_seeds = final_plan()
        sets = {**FINAL_SETS, **sets}
    if args.report and (args.list or args.shard):
        raise ValueError("--report trains nothing and writes the report of the whole folder: it takes no "
                         f"{'--list' if args.list else '--shard'}")
    if args.list or args.report:
        exp = experiment_config(args.profile, args.seeds, methods, tuple(args.tasks.split(",")), sets, variants,
                                args.variant_seeds, label_seeds)
        recorded = check_folder(args.out, exp)  # as verify would: a folder of another experiment is refused
    if args.list:  # the plan, one run a line: what a scheduler fans out with --shard
        runs = plan(exp)
        for i, (t, label, s) in enumerate(runs):
            status = run_status(run_dir(args.out, t, label, s), exp["configs"][f"{t}/{label}"]["steps"])
            print(f"{i}\t{t}/{label}/seed{s}\t{status}")
        print("\n".join(plan_budget(args.out, exp)))
        return
    if args.report:  # the runs finished so far, training nothing: an interim look at a long experiment
        if recorded is None:
            raise ValueError(f"{args.out} holds no experiment (no experiment.json): nothing to report; "
                             "run the same command without --report to train it")
        summary = summarize(args.out)
        write_report(args.out, summary)
        print(f"{summary['runs']} finished runs, {len(summary['missing'])} not finished -> "
              f"{os.path.join(args.out, 'REPORT.md')}")
        refresh_after_report(args.out)
        return
    t0 = time.time()
    summary = run_experiment(args.out, args.profile, args.seeds, methods, tuple(args.tasks.split(",")),
                             sets, variants, args.jobs, args.shard, args.variant_seeds,
                             label_seeds=label_seeds)
    if summary is None:
        print(f"shard {args.shard} done in {(time.time() - t0) / 60:.1f} min; once every shard is done, the same "
              f"command without --shard reports -> {os.path.join(args.out, 'REPORT.md')}")
        return
    missing = f"; {len(summary['missing'])} runs not finished" if summary["missing"] else ""
    print(f"{summary['runs']} runs ({summary['wall_s'] / 60:.1f} min of training in total; this call "
          f"{(time.time() - t0) / 60:.1f} min{missing}) -> {os.path.join(args.out, 'REPORT.md')}")
    refresh_after_report(args.out)  # results/ itself: the README's, pages' and notebooks' results blocks too


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlsd_min", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name, summary, **kwargs):
        return sub.add_parser(name, help=summary, description=summary, formatter_class=_Help, **kwargs)

    task_help = "arith (one valid answer), split (ten), mul7 (one, longer and unsaturated)"
    profile_help = "ci (seconds), cpu (minutes on a laptop) or gpu (a classroom GPU)"
    p = command("data", "write a task's data files (train, validation, test, ood)")
    p.add_argument("--task", default="arith", choices=tuple(TASKS), help=task_help)
    p.add_argument("--out", default=None, help="folder (default: the task's folder in the data root)")
    p.add_argument("--seed", type=int, default=0, help="seed of the problem draws")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=cmd_data)

    p = command("warmstart", "supervised warm start of a fresh model to partial competence")
    p.add_argument("--task", default="arith", choices=tuple(TASKS), help=task_help)
    p.add_argument("--out", default=None, help="checkpoint folder (default: the task's warm start in the data root)")
    p.add_argument("--data", default=None, help="data folder (default: the task's)")
    p.add_argument("--target-acc", type=float, default=None,
                   help=f"stop at this sampled validation accuracy (default: the task's, else {SFTConfig().target_acc})")
    p.add_argument("--seed", type=int, default=SFTConfig().seed, help="seed of initialisation and data order")
    p.add_argument("--force", action="store_true", help="replace an existing checkpoint")
    p.set_defaults(func=cmd_warmstart)

    fields = "\n".join(f"  {name} = {default!r}: {doc}" for name, (default, doc) in field_docs(TrainConfig).items()
                        if name not in FLAG_FIELDS)
    p = command("train", "RL from the warm start into a resumable run folder",
                epilog=f"TrainConfig fields for --set KEY=VALUE (None = the method's, task's or profile's value; "
                       f"bools take {'/'.join(BOOLS)}):\n" + fields)
    p.add_argument("--method", default="grpo", choices=tuple(METHODS), help="the method")
    p.add_argument("--task", default="arith", choices=tuple(TASKS), help=task_help)
    p.add_argument("--profile", default=None, choices=tuple(PROFILES),
                   help=profile_help + "; default: $RLSD_PROFILE, else gpu with CUDA, else cpu")
    p.add_argument("--out", default=None, help="run folder, resumed if it holds a checkpoint "
                   "(default: runs/<task>-<method>-<profile>-seed<seed>)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override TrainConfig fields")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config, as the run folder would record it, and exit")
    p.set_defaults(func=cmd_train)

    p = command("eval", "accuracy of a checkpoint (or a run folder's) on a split")
    p.add_argument("--task", default=None, choices=tuple(TASKS), help=task_help + " (default: the run's, else arith)")
    p.add_argument("--ckpt", default=None, help="a checkpoint or a run folder (default: the task's warm start)")
    p.add_argument("--data", default=None, help="data folder (default: the task's)")
    p.add_argument("--split", default="test", choices=["train", "validation", "test", "ood"], help="which split")
    p.add_argument("--samples", type=int, default=4, help="sampled completions per problem")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--seeds", type=int, default=1,
                   help="evaluate under this many seeds (--seed, --seed + 1, ...) and print each, their mean and sd: "
                        "the evaluation's own noise")
    p.set_defaults(func=cmd_eval)

    p = command("demo", "warm start if needed, GRPO, RLSD and SDPG from it, one plot")
    p.add_argument("--profile", default="cpu", choices=tuple(PROFILES), help=profile_help)
    p.add_argument("--out", default=os.path.join("runs", "demo"), help="folder of the three runs and the plot")
    p.set_defaults(func=cmd_demo)

    p = command("bench", "median seconds per RL step of each method on the same batch, with the "
                "cost split, sampling throughput and peak memory")
    p.add_argument("--profile", default="cpu", choices=tuple(PROFILES), help=profile_help)
    p.add_argument("--methods", default=None, help="comma-separated (default: all five; with --scaling: grpo,rlsd; "
                   "with --trl-trainers, sdpo adds TRL's SDPOTrainer against rlsd_min's GRPO+OPSD trainer)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--trl", action="store_true", help="rlsd_min GRPO against TRL's GRPOTrainer (needs .[bench])")
    p.add_argument("--trl-trainers", action="store_true", help="each rlsd_min TRL trainer against TRL's "
                   "GRPOTrainer on the same work (rlsd_min.integrations.trl; needs .[trl])")
    p.add_argument("--vocab", action="store_true", help="peak memory of one step of each method at V = 151,936, "
                   "the logits chunked against held whole (rlsd_min.lab.bench_vocab)")
    p.add_argument("--scaling", action="store_true", help="step time against each axis of --axes (rlsd_min.lab.bench_scaling)")
    p.add_argument("--axes", default="group,length,model", help="with --scaling: any of group, length, model, flags")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override TrainConfig fields of every timed step (the speed flags: compile_decoding, "
                        "compile_scoring, bf16_autocast); not with --scaling, --trl-trainers or --vocab")
    p.set_defaults(func=cmd_bench)

    p = command("verify", "every method on each task over several seeds -> results/ and REPORT.md")
    p.add_argument("--profile", default="cpu", choices=tuple(PROFILES), help=profile_help)
    p.add_argument("--seeds", type=int, default=VERIFY_SEEDS, help="seeds 0..S-1 of each method")
    p.add_argument("--out", default=None, help="results folder, resumed if it holds this experiment (default: "
                   "results, the committed final experiment, with --final; runs/verify without)")
    p.add_argument("--methods", default=",".join(VERIFY_METHODS), help="comma-separated")
    p.add_argument("--tasks", default=",".join(VERIFY_TASKS), help=f"comma-separated, from {tuple(TASKS)}")
    p.add_argument("--variants", default="", help=f"sensitivity variants, comma-separated, from {tuple(VARIANTS)}, "
                   f"or 'all'; they run on {', '.join(VARIANT_TASKS)} (the committed results/five_seeds: "
                   f"{','.join(COMMITTED_VARIANTS)})")
    p.add_argument("--variant-seeds", type=int, default=None, help="seeds of each variant (default: --seeds)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override TrainConfig fields of every run")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own one-thread process "
                   "(1: in this process, torch's threads as they are)")
    p.add_argument("--shard", default=None, metavar="I/N", help="train only the runs at positions I, I+N, ... of "
                   "the plan (0 <= I < N) and write no report; the same command without --shard reports")
    p.add_argument("--final", action="store_true", help="the final experiment (rlsd_min.lab.design.FINAL: "
                   "20 paired seeds of the main labels, 5 or 10 of the others), in place of --seeds, --methods, "
                   "--variants and --variant-seeds, with its settings design.FINAL_SETS (eval_samples=4): the committed results/")
    p.add_argument("--list", action="store_true", help="print the plan (position, run, finished or not), the "
                   "seeds, finished runs and projected time of each label, and exit")
    p.add_argument("--report", action="store_true", help="write REPORT.md and summary.json of the runs "
                   "finished in --out so far, training nothing (an interim report: the others are listed as not "
                   "finished), and exit")
    p.set_defaults(func=cmd_verify)

    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ValueError, FileNotFoundError, FloatingPointError) as e:
        sys.exit(f"error: {e}")
    except KeyboardInterrupt as e:  # a run says where its checkpoint is (rlsd_min.loop.RunInterrupted)
        print(str(e) or "interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
