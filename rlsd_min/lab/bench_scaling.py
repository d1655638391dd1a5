"""How the RL step time grows: group size, completion length, model size; and the speed flags.

    python -m rlsd_min bench --scaling                      # axes group, length, model
    python -m rlsd_min bench --scaling --axes flags         # bf16_autocast, compile_decoding, compile_scoring

Each axis is measured on its own. Its cases (every method at every value of the axis)
run one step each per round, in turn (interleaved, as in rlsd_min.bench), each from the
same starting weights, prompts and sampling seed; medians over rounds after warm-up.
The ratio is the median of per-round ratios to the same method at the axis's first
value, so a pair is always measured side by side. Everything not on the axis is the
profile's setting (cpu: 16 prompts, G = 8, max_new_tokens = 40).

    group   G = 4, 8, 16 completions per prompt, on the shipped 0.5M warm start.
    length  max_new_tokens = 8, 16, 32 on the shipped warm start. Its completions are
            about 32 tokens long, so (nearly) every row runs to the limit and a step
            samples and scores exactly max_new_tokens tokens per row. Simplified: the
            length is set by truncation, not by a harder task (the warm start only knows
            3-digit addition; at 2 or 4 digits its lengths are erratic). At 8 and 16 no
            completion reaches its answer, so every reward is 0; the work is the same, as
            no method skips zero-advantage rows.
    model   0.5M (128/512, 2 layers, 4 heads) against 2M (256/1024, 2 layers, 4 heads),
            both built fresh with random weights (timing needs no training, and fresh
            weights for both keep the comparison fair). An untrained model emits <eos> at
            random (about 1 token in 21), so the mean-length column is short, but a batch
            samples until its longest row ends, nearly always at max_new_tokens with the
            cpu profile's 128 rows, and every forward runs over the full padded width.
    flags   the shipped warm start with TrainConfig.bf16_autocast, compile_decoding
            and compile_scoring off, then each on alone. The compiles happen in the
            warm-up round.
"""

from __future__ import annotations

import copy
import statistics

from ..config import ModelConfig, pick_device, train_config
from ..methods import METHODS
from ..model import build_model, load, n_params
from ..step import batch_problems
from ..tasks import load_splits, problems_of
from .bench import measure

MODEL_SIZES = {"0.5M": ModelConfig(), "2M": ModelConfig(hidden_size=256, intermediate_size=1024)}
FLAGS = ("off", "bf16_autocast", "compile_decoding", "compile_scoring")
AXES = {"group": (4, 8, 16), "length": (8, 16, 32), "model": tuple(MODEL_SIZES), "flags": FLAGS}
"""the default values of each axis; the first value of an axis is the ratio's baseline"""


def _check(axes, methods, values: dict, rounds: int, warmup: int) -> None:
    """A ValueError naming the first bad argument (group sizes, lengths and methods are
    checked by train_config when the cases are built)."""
    for axis in axes:
        if axis not in AXES:
            raise ValueError(f"unknown axis {axis!r}; choose from {tuple(AXES)}")
        if not values[axis]:
            raise ValueError(f"axis {axis!r} has no values")
    if not methods:
        raise ValueError(f"no method given; choose from {sorted(METHODS)}")
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got rounds={rounds}, warmup={warmup}")
    for axis, known in (("model", tuple(MODEL_SIZES)), ("flags", FLAGS)):
        bad = [v for v in values[axis] if v not in known] if axis in axes else []
        if bad:
            raise ValueError(f"{axis} values must be among {known}; got {bad}")


def _case(axis: str, value) -> tuple[str, dict]:
    """(which model, TrainConfig overrides) of one value of an axis; 'base' = the shipped warm start."""
    if axis == "group":
        return "base", {"group_size": value}
    if axis == "length":
        return "base", {"max_new_tokens": value}
    if axis == "model":
        return value, {}
    return "base", ({} if value == "off" else {value: True})


SCALING_METHODS = tuple(m.name for m in METHODS.values() if m.teacher in (None, "logp"))
"""the methods --scaling times by default: one with no teacher, one with a sampled-token teacher
(GRPO and RLSD)"""


def scaling_times(axes=("group", "length", "model"), methods=SCALING_METHODS, profile: str = "cpu",
                  rounds: int = 5, warmup: int = 1, values: dict | None = None, device=None,
                  progress: bool = True) -> dict:
    """{axis: {(method, value): {"rounds": [one_step's metrics, one dict per timed round],
    "params": parameter count of the model that ran, "peak_mem_mb": from one more, untimed step}}}
    (rlsd_min.bench.measure). `values` overrides AXES per axis."""
    values = {**AXES, **(values or {})}
    _check(axes, methods, values, rounds, warmup)
    plan = {}  # {axis: {(method, value): (model key, TrainConfig)}}, validated before any work
    for axis in axes:
        plan[axis] = {}
        for v in values[axis]:
            key, overrides = _case(axis, v)
            plan[axis].update({(m, v): (key, train_config(profile, method=m, **overrides)) for m in methods})
    device = pick_device(device)
    first = train_config(profile, method=methods[0])
    base, tokenizer = load(first.base_path(), device)
    problems = batch_problems(problems_of(load_splits(first.data_path())["train"]), 0, first)
    models = {"base": base}
    for size in values["model"] if "model" in axes else ():
        models[size] = build_model(MODEL_SIZES[size], tokenizer, seed=0).to(device)
    starts = {k: copy.deepcopy(m.state_dict()) for k, m in models.items()}
    needs_ref = any(train_config(profile, method=m).needs_reference() for m in methods)
    refs = {k: copy.deepcopy(m).eval().requires_grad_(False) if needs_ref else None for k, m in models.items()}
    times = {}
    for axis, cases in plan.items():
        runs = {case: (models[key], starts[key], refs[key], cfg) for case, (key, cfg) in cases.items()}
        times[axis] = measure(runs, tokenizer, problems, rounds, warmup, f"scaling {axis}", progress)
        for case, (key, _) in cases.items():
            times[axis][case]["params"] = n_params(models[key])
    return times


def summarize_scaling(times: dict) -> list[dict]:
    """One row per (axis, method, value): median and spread of the step time, the median of
    per-round ratios to the same method at the axis's first value, phase medians, peak memory."""
    rows = []
    for axis, cases in times.items():
        firsts = {}
        for (method, value), measured in cases.items():
            steps = measured["rounds"]
            ts = [s["step_time_s"] for s in steps]
            base = firsts.setdefault(method, ts)
            rows.append({"axis": axis, "value": value, "method": method, "params": measured["params"],
                         "peak_mem_mb": measured["peak_mem_mb"],
                         "median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
                         "ratio": statistics.median(t / b for t, b in zip(ts, base)),
                         **{k: statistics.median(s[k] for s in steps)
                            for k in ("completion_len", "time_sample_s", "time_teacher_s", "time_update_s")
                            if k in steps[0]}})
    return sorted(rows, key=lambda r: (list(times).index(r["axis"]), r["method"]))


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_scaling(rows: list[dict]) -> str:
    """A markdown table of summarize_scaling's rows (peak memory: rlsd_min.bench.MEMORY_NOTE)."""
    lines = ["| axis | value | method | params | median s/step | min-max | ratio to first value | mean tokens "
             "| sample | teacher fwd | student fwd+bwd | peak MiB |", "|---" * 12 + "|"]
    for r in rows:
        lines.append(f"| {r['axis']} | {r['value']} | {r['method']} | {r['params'] / 1e6:.2f}M | {r['median_s']:.3f} "
                     f"| {r['min_s']:.3f}-{r['max_s']:.3f} | {r['ratio']:.2f} | {r['completion_len']:.1f} "
                     f"| {r['time_sample_s']:.3f} | {_seconds(r.get('time_teacher_s'))} | {r['time_update_s']:.3f} "
                     f"| {r['peak_mem_mb']:.1f} |")
    return "\n".join(lines)
