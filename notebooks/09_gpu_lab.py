# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 09 · Running the lab on a GPU
#
# Everything in this course runs on a laptop CPU; a classroom GPU lab runs the same code with the
# `gpu` profile (`RLSD_PROFILE=gpu`, the default when CUDA is present). This notebook shows how to
# size a lab: which profile does what, how long a step takes *on the machine you are on* (measured
# here, not quoted), how the step time grows with group size, completion length and model size,
# and which switches make a GPU step faster. It ends with where the path continues for real LLMs.
#
# Setting up a GPU machine: `make install` (on Linux, PyPI's torch is a CUDA build), or
# `make TORCH_INDEX=https://download.pytorch.org/whl/cu<version> install` for one CUDA version
# ([docs/usage.md](../docs/usage.md#which-torch-you-get-and-how-to-choose)), then
# `RLSD_PROFILE=gpu .venv/bin/jupyter lab notebooks/`.
#
# **What it trains:** nothing: it times single steps of every method on the current device.
#
# <!-- generated: notebook-time -->
# **Time.** Its stored run, on the `cpu` profile: 18 s (the cells' times recorded in this notebook; the longest cell 8 s). A notebook run again reads its finished run folders back and trains nothing.
# <!-- end generated -->

# %%
# Set-up, the same first cell in every notebook: make rlsd_min importable, then pick the profile.
import importlib
import importlib.util
import pathlib
import subprocess
import sys

def package_spec():  # rlsd_min's spec, or None: a clone's folder named rlsd_min in the working
    spec = importlib.util.find_spec("rlsd_min")  # directory imports as an empty namespace, no package
    return spec if spec is not None and spec.origin is not None else None

here, spec = pathlib.Path.cwd(), package_spec()
installed = [pathlib.Path(spec.origin).resolve().parents[1]] if spec else []  # an editable install's checkout
ROOT = next((d for d in (*installed, here, *here.parents, *sorted(p for p in here.iterdir() if p.is_dir()))
             if (d / "pyproject.toml").is_file() and (d / "rlsd_min" / "__init__.py").is_file()), None)
if ROOT is None:  # every path below is taken from the checkout's root, whatever the working directory
    raise ModuleNotFoundError(f"no checkout of the rlsd_min repository is in, above or just below {here}: "
                              "clone the repository, then open this notebook from its notebooks/ folder")
if spec is None:  # not installed: install the checkout this notebook is in
    print(f"rlsd_min is not installed: pip install -e {ROOT}")
    if subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-e", str(ROOT)]).returncode:
        print("pip install failed (above): this kernel imports rlsd_min from the checkout, a new one will not")
    importlib.invalidate_caches()
    if package_spec() is None:                        # the install takes effect in Python processes started
        sys.path.insert(0, str(ROOT))                 # after it: this kernel imports the checkout directly

from rlsd_min.config import default_profile

PROFILE = default_profile()  # RLSD_PROFILE if set, else gpu when CUDA is present, else cpu
RUNS = ROOT / "runs" / "course" / PROFILE  # the course's run folders, shared by its notebooks
print("profile:", PROFILE)

# %%
import json
import warnings

warnings.filterwarnings("ignore")

import datasets
import torch

import rlsd_min
from rlsd_min.config import pick_device
from rlsd_min.lab.bench import format_table, step_times, summarize
from rlsd_min.lab.design import COMMITTED_VARIANT_SEEDS, COMMITTED_VARIANTS, PLANS, VERIFY_METHODS, VERIFY_SEEDS, VERIFY_TASKS

datasets.disable_progress_bars()
RESULTS_DIR = ROOT / "results" / "five_seeds"  # the repository's 5-seed verification
DEVICE = pick_device()
name = torch.cuda.get_device_name(DEVICE) if DEVICE.type == "cuda" else f"CPU, {torch.get_num_threads()} torch threads"
print(f"profile: {PROFILE}; device: {DEVICE} ({name})")

# %% [markdown]
# ## 1. The three profiles
#
# Each profile sizes the same jobs for a budget. `ci` exists so the tests and notebooks run in
# seconds; `cpu` is what the committed notebooks and `results/` were made with; `gpu` has four
# times the prompts per step, the whole validation split as its evaluation set and longer runs.

# %%
# NBVAL_CHECK_OUTPUT
fields = ("steps", "prompts_per_step", "group_size", "max_new_tokens", "eval_every", "eval_problems")
print(f"{'profile':8s}" + "".join(f"{f:>18s}" for f in fields))
for prof in ("ci", "cpu", "gpu"):
    cfg = rlsd_min.train_config(prof, method="grpo")
    print(f"{prof:8s}" + "".join(f"{getattr(cfg, f):>18}" for f in fields))
print("\nverification experiment (python -m rlsd_min verify --profile P): steps per run")
for prof, plan in PLANS.items():
    print(f"  {prof:4s} " + ", ".join(f"{task}: {p['steps']} steps, probes on {p['probe_problems']} prompts"
                                    for task, p in plan.items()))

# %% [markdown]
# ## 2. How long is a step here?
#
# `rlsd_min.lab.bench.step_times` runs one RL step of each method per round on one fixed batch of the
# current profile, all from the same weights and sampling seed (A B C A B C ...), and reports
# medians over rounds; ratios to GRPO are taken round by round. Beside the phases (seconds) it
# reports the sampling throughput (completion tokens per second of the sampling phase) and the
# step's peak memory: the most tensor memory allocated during one more, untimed step, above what
# was held before it (the CUDA allocator's counter on a GPU, torch.profiler's allocation events on a
# CPU).

# %%
times = step_times(("grpo", "rlsd", "sdpg"), PROFILE, rounds=5, warmup=1, progress=False)
rows = summarize(times)
print(f"{PROFILE} profile on {name}")
print(format_table(rows))
assert rows[0]["method"] == "grpo" and all(r["median_s"] > 0 for r in rows)

# %% [markdown]
# ## 3. Budget for a lab
#
# A lab plans in minutes. From the medians just measured, the training steps alone of the course's
# runs and of the 5-seed verification experiment on this device take. Evaluations and probes come on
# top; its committed run (`results/five_seeds/`) shows how much (its wall time against the sum of its
# step times):

# %%
s_step = {r["method"]: r["median_s"] for r in rows}
mean_step = sum(s_step.values()) / len(s_step)
demo = rlsd_min.train_config(PROFILE, method="grpo").steps
plan = PLANS[PROFILE]
runs = len(VERIFY_METHODS) * VERIFY_SEEDS + len(COMMITTED_VARIANTS) * COMMITTED_VARIANT_SEEDS
verify_steps = sum(plan[t]["steps"] for t in VERIFY_TASKS) * runs
print(f"one {PROFILE}-profile run of {demo} steps:   ~{demo * mean_step / 60:.1f} min of steps")
print(f"verification as committed, {runs} runs on {', '.join(VERIFY_TASKS)} ({len(VERIFY_METHODS)} methods x {VERIFY_SEEDS} "
      f"seeds, {len(COMMITTED_VARIANTS)} variants x {COMMITTED_VARIANT_SEEDS}; {verify_steps} steps): "
      f"~{verify_steps * mean_step / 60:.1f} min of steps (a lower bound: mul7's completions are about 70 tokens, "
      "the bench's 31-32)")
summary = json.load(open(RESULTS_DIR / "summary.json"))
step_s = sum(r.get("step_time_s", 0.0) for p in RESULTS_DIR.glob("runs/*/*/seed*")
             for r in rlsd_min.read_metrics(str(p)))
print(f"measured: the committed {summary['profile']}-profile verification took {summary['wall_s'] / 60:.1f} min "
      f"for {summary['runs']} runs, of which {step_s / 60:.1f} min in RL steps: evaluations, probes and "
      f"checkpoints add {summary['wall_s'] / step_s - 1:.0%}")

# %% [markdown]
# ## 4. How the step grows
#
# `python -m rlsd_min bench --scaling` (`rlsd_min.lab.bench_scaling`) varies one thing at a time,
# everything else at the profile's setting, and reports each case's median step time and its ratio
# to the axis's first value (taken round by round): group size `G`, completion length (by
# `max_new_tokens`), and model size (0.5M against 2M parameters, fresh weights). Here on this
# device, with few rounds:

# %%
from rlsd_min.lab.bench_scaling import format_scaling, scaling_times, summarize_scaling

scaling = summarize_scaling(scaling_times(("group", "length", "model"), ("grpo",), PROFILE, rounds=3,
                                          warmup=1, progress=False))
print(format_scaling(scaling))
by_case = {(r["axis"], r["value"]): r for r in scaling}
g = sorted(v for a, v in by_case if a == "group")
print(f"G x{g[-1] // g[0]} -> step x{by_case[('group', g[-1])]['ratio']:.2f}")
assert all(r["median_s"] > 0 for r in scaling)

# %% [markdown]
# ## 5. Switches for a faster GPU step
#
# Three `TrainConfig` flags, off by default, each tested on CPU:
#
# - `bf16_autocast=true`: the forwards (sampling, student, teacher, reference) under
#   `torch.autocast(..., dtype=torch.bfloat16)`; log-probabilities and losses stay in float32.
# - `compile_decoding=true`: each decoding step through a `torch.compile`d forward over a
#   static KV cache.
# - `compile_scoring=true`: the forwards that score completions (the student's in the update, with
#   its backward; the teacher's; the reference's) through `torch.compile` with dynamic shapes.
#
# ```bash
# python -m rlsd_min train --method rlsd --profile gpu --set compile_decoding=true compile_scoring=true
# python -m rlsd_min bench --profile gpu --rounds 10 --set compile_decoding=true compile_scoring=true
# python -m rlsd_min bench --scaling --axes flags --profile gpu   # each flag against all off, on this machine
# ```
#
# On the 2-core CPU the two compile flags together take a GRPO step from 0.206 to 0.174 s
# (`benchmarks/RESULTS.md`); each process pays its compiles once, in its first steps. `TrainConfig`
# refuses `bf16_autocast` with `compile_decoding` (under autocast the rotary embedding gives
# float32 keys beside bfloat16 values, and the static cache holds one dtype), and says so.
#
# At 0.5M parameters a GPU is mostly waiting on kernel launches and Python; these flags matter as the
# model grows (section 4), and in long runs. On an H200 (`benchmarks/RESULTS.md`, section "GPU") the
# compiled gpu-profile step took half as long (0.078 s against 0.150 s), but the compile cost about
# 110 s in the first step, so a whole 200-step lab run was faster without the flags (53 s against
# 148 s); they pay past about 1,500 steps. Measured GPU figures go in that file with the device name.
#
# ## 6. Where the path continues
#
# Everything here maps onto a real LLM stack one to one:
#
# | here | at scale |
# |---|---|
# | `sample_group` (HF `generate`) | a serving engine for rollouts (vLLM, SGLang), weights synced each step |
# | `teacher_prompt` = `{context}|{prompt}` | the chat template with the reference in the user turn (why the user turn: [from_tiny_to_cluster.md](../docs/from_tiny_to_cluster.md#the-privileged-context-plain-and-chat)) |
# | the same weights as teacher (`live`) | no second model in memory; `synced`/`frozen` teachers need a copy (or a LoRA-free snapshot) |
# | `completion_logits` sharing the prompt's KV cache over a group | prefix caching in the engine |
# | `methods.py`: a method = a choice of `Ahat`, `D`, `m`, `beta` | TRL's `GRPOTrainer` (the peer in `benchmarks/RESULTS.md`) plus a custom loss, or verl / OpenRLHF |
# | `verify` (5 seeds on `mul7`) | the same claims, re-checked on the benchmark the papers used |
#
# The papers' own settings (4B-8B models, lr 1e-6, 400 steps, coefficients of 1e-3) are listed in
# the method pages ([RLSD](../docs/rlsd.md#implementation-details), [SDPG](../docs/sdpg.md#implementation-details));
# the coefficients used here are larger because the model is tiny (notebook 07).
