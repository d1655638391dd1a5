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
# # 08 · Stability and the verification: what this scale shows
#
# The papers make claims about long training (the method pages' results: [OPSD](../docs/opsd.md#results),
# [RLSD](../docs/rlsd.md#results), [SDPG](../docs/sdpg.md#results)):
#
# - **RLSD paper**: OPSD jumps early (peak within roughly the first 10-50 steps), then declines or
#   oscillates; GRPO rises steadily while its entropy falls fast; RLSD ends highest, with higher entropy.
# - **SDPG paper**: SDPG beats GRPO and RLSD; the gap opens within the first 50 steps; SDPG keeps
#   entropy up where RLSD collapses.
#
# One seed proves nothing, and a task that GRPO saturates cannot separate the methods (the first
# verification, on `arith` and `split`, ended with every verifier method near 0.9 and the differences
# inside the seed spread; it is kept in `results/arith_split/`). The final experiment trains every
# method on `mul7` (7-digit by 1-digit multiplication with its digit-by-digit scratchpad: 71-token
# completions, twice arith's; the warm start at 0.34; `data/mul7/level.json`) from the same warm
# start, 200 steps: 20 paired seeds of GRPO, GRPO+OPSD, RLSD, SDPG and SDPG without its distillation
# term; 10 of each teacher context; 5 of OPSD and of the other variants (one setting per knob, OPSD's
# live teacher and 400 steps, the positive controls); each evaluation 4 sampled completions per
# validation problem (`rlsd_min.lab.design.FINAL`):
#
#     python -m rlsd_min verify --profile cpu --final --jobs 2
#
# The committed run of that command:
# <!-- generated: clock mul7 -->
# **An interim report**: 173 of the plan's 185 runs finished so far, **14.3 hours of training** summed over runs (`wall_s` in [`results/summary.json`](../results/summary.json)), trained over several sittings of the command their provenance records; a run cut off at a sitting's end resumed from its checkpoint, so the runs have no single span on the clock.
# <!-- end generated -->
#
# It writes `results/`: one run folder per (task, run label, seed) with its `metrics.jsonl`,
# `summary.json`, the figures, and `REPORT.md`. This notebook reads those committed files (it trains
# nothing long), checks that the summary really is computed from the run folders, and goes through
# the claims.
#
# **What it trains:** nothing long: it reads the committed `results/` and runs a tiny verification on the `ci` profile to show the mechanics.
#
# <!-- generated: notebook-time -->
# **Time.** Its stored run, on the `cpu` profile: 55 s (the cells' times recorded in this notebook; the longest cell 48 s). A notebook run again reads its finished run folders back and trains nothing.
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
import os
import warnings

warnings.filterwarnings("ignore")

import datasets
import matplotlib.pyplot as plt

from rlsd_min.lab.experiment import run_experiment
from rlsd_min.lab.plots import plot_seed_bands
from rlsd_min.lab.report import LABELS, claims, claims_table, efficiency_rows, judged_table, load_runs, sensitivity_rows
from rlsd_min.lab.results import summarize
from rlsd_min.lab.stability import collapsed

datasets.disable_progress_bars()
RESULTS_DIR = ROOT / "results"  # the final experiment's folder in the repository
experiment = json.load(open(RESULTS_DIR / "experiment.json"))
summary = json.load(open(RESULTS_DIR / "summary.json"))
print(f"results/: profile {experiment['profile']}, tasks {experiment['tasks']}; {summary['runs']} finished runs, "
      f"{summary['wall_s'] / 3600:.1f} h of training")
print("seeds per run label:", ", ".join(f"{label} {len(seeds)}" for label, seeds in experiment["label_seeds"].items()))
for task in experiment["tasks"]:
    cfg = experiment["configs"][f"{task}/grpo"]
    print(f"  {task}: {cfg['steps']} steps x {cfg['prompts_per_step']} prompts x G={cfg['group_size']}, "
          f"evaluation every {cfg['eval_every']} steps: {cfg['eval_samples']} samples of each of "
          f"{cfg['eval_problems']} validation problems")

# %% [markdown]
# ## 1. The summary is computed from the run folders
#
# `summarize` reads every `metrics.jsonl` again; the result must equal the committed `summary.json`
# exactly (no number in the report was typed in):

# %%
# NBVAL_CHECK_OUTPUT
recomputed = summarize(str(RESULTS_DIR), write=False)
assert recomputed == summary
print("summary.json == summarize(results/):", recomputed == summary)

# %% [markdown]
# ## 2. When has a run collapsed?
#
# A stated rule (`rlsd_min.lab.stability.collapsed`): a run collapses if its last 3 held-out evaluations
# all lie more than 0.10 below the best it reached before them. A dip that recovers does not count.

# %%
# NBVAL_CHECK_OUTPUT
examples = {"steady rise":            [0.55, 0.70, 0.80, 0.85, 0.86, 0.87],
            "early peak, then falls": [0.55, 0.75, 0.62, 0.60, 0.58, 0.61],
            "dip that recovers":      [0.55, 0.80, 0.60, 0.65, 0.75, 0.78],
            "within the margin":      [0.55, 0.80, 0.72, 0.71, 0.70, 0.72]}
for name, accs in examples.items():
    print(f"{name:24s} {accs} -> collapsed: {collapsed(accs)}")
assert [collapsed(a) for a in examples.values()] == [False, True, False, False]

# %% [markdown]
# ## 3. Held-out accuracy over training, every seed
#
# Lines are the mean over seeds, bands the lowest and highest seed.

# %%
runs = load_runs(str(RESULTS_DIR), summary)
methods = {task: {m: h for m, h in by_label.items() if m in experiment["methods"]} for task, by_label in runs.items()}
fig, axes = plt.subplots(1, len(runs), figsize=(7 * len(runs), 4), squeeze=False)
for ax, task in zip(axes[0], runs):
    plot_seed_bands({LABELS[m]: h for m, h in methods[task].items()}, "eval_acc", ax,
                    ylabel="validation accuracy (sampled, T=1)")
    ax.set_title(f"{task}")
    ax.legend(fontsize=8)
plt.show()
for task, rows in summary["table"].items():
    print(f"\n{task}: run            final acc        AUC              steps to {summary['threshold'][task]}   collapses")
    for m, r in rows.items():
        steps = r["steps_to_threshold"]
        reach = f"{steps['mean']:.0f} ({r['reached']}/{r['seeds']})" if steps["n"] else f"- (0/{r['seeds']})"
        print(f"      {LABELS.get(m, m):14s} {r['final_acc']['mean']:.3f} ± {r['final_acc']['std']:.3f}    "
              f"{r['auc']['mean']:.3f} ± {r['auc']['std']:.3f}    {reach:12s}   {r['collapsed']}/{r['seeds']}")

# %% [markdown]
# ## 4. Stability signals
#
# Entropy of the policy, the teacher-student KL (sampled estimate, for methods with a teacher),
# completion length and the fraction of groups whose rewards are all equal (no signal), as a running
# mean over 10 steps:

# %%
keys = (("entropy", "entropy (nats/token)"), ("teacher_kl", "teacher-student KL"),
        ("completion_len", "completion length"), ("frac_zero_std", "zero-std groups"))
fig, axes = plt.subplots(len(runs), 4, figsize=(16, 3.3 * len(runs)), squeeze=False)
for row, task in zip(axes, runs):
    for ax, (key, label) in zip(row, keys):
        plot_seed_bands({LABELS[m]: h for m, h in methods[task].items()}, key, ax, smooth=10, ylabel=label)
        ax.set_title(f"{task}: {label}", fontsize=9)
axes[0, 0].legend(fontsize=7)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 5. The claims, judged by a fixed rule
#
# `rlsd_min.lab.report.claims` judges each claim as a paired comparison over seeds
# (`rlsd_min.lab.stats`): seed k of every run label shares the warm start, the prompt order and the
# evaluation's random stream, so the claim is about the per-seed differences: their mean with a 95 %
# bootstrap interval over seeds, the paired t-test and the exact sign-flip test, Holm-corrected over
# the claims of the task. *Reproduced* (or *contradicted*) when the interval lies on the claimed (or
# the other) side of 0 and the corrected t-test's p < 0.05, else *inconclusive*. The **paired MDE**
# is the smallest true difference these seeds detect with 80 % power; the last column the paired
# seeds that would detect the observed one. The same table is in `results/REPORT.md`.

# %%
verdicts = claims(summary)
print("\n".join(claims_table(verdicts)))
assert all(c.verdict in ("reproduced", "contradicted", "inconclusive") for c in verdicts)

# %% [markdown]
# Sample efficiency, each run label against GRPO: the area under the accuracy curve (its mean
# accuracy over training) and the steps to the threshold (a run that never gets there counts at
# its last step):

# %%
for task, t in summary["table"].items():
    print(f"{task}:")
    print("\n".join(judged_table(efficiency_rows(t))))

# %% [markdown]
# ## 6. How much can the teacher's token-level signal do here?
#
# The final experiment's variants (`rlsd_min.lab.design.VARIANTS`), each against its method at its
# defaults and against GRPO: one setting per knob, SDPG without its distillation term, the positive
# controls (a teacher shown the worked solution) and the teacher contexts (a sibling's success,
# another problem's reference):

# %%
variants = summary["variants"]
bases = list(dict.fromkeys(v["method"] for v in variants.values()))
for task, by_label in runs.items():
    if not any(name in by_label for name in variants):
        continue
    fig, axes = plt.subplots(1, len(bases), figsize=(4.6 * len(bases), 3.6), squeeze=False)
    for ax, base in zip(axes[0], bases):
        group = ["grpo", base] + [n for n, v in variants.items() if v["method"] == base]
        plot_seed_bands({LABELS.get(n, n): by_label[n] for n in group if n in by_label}, "eval_acc", ax,
                        ylabel="validation accuracy")
        ax.set_title(f"{task}: {LABELS[base]} and its variants", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    plt.show()
    print("\n".join(judged_table(sensitivity_rows(summary["table"][task], variants))))

# %% [markdown]
# OPSD's course over the run, with its default frozen teacher, with a live one, and frozen for 400
# steps (means over seeds; the quarters are the first and last quarter of the run's steps), then
# each live-teacher seed:

# %%
for label in ("opsd", "opsd_live", "opsd_steps400"):
    r = summary["table"]["mul7"][label]
    print(f"{label:10s} step 0 {r['start_acc']['mean']:.2f}, first quarter {r['early_acc']['mean']:.2f}, "
          f"last quarter {r['late_acc']['mean']:.2f}, final {r['final_acc']['mean']:.2f}")
for seed, history in enumerate(runs["mul7"]["opsd_live"]):
    evals = [(row["step"], row["eval_acc"]) for row in history if "eval_acc" in row]
    peak_step, peak = max(evals, key=lambda e: e[1])
    zero = next((step for step, acc in evals if acc == 0), None)
    by_step = {row["step"]: row for row in history}
    course = ", ".join(f"step {t}: {by_step[t]['completion_len']:.0f} tokens, truncated {by_step[t]['truncated_frac']:.2f}, "
                       f"teacher KL {by_step[t]['teacher_kl']:.3f}" for t in (1, 60, 100, 200))
    print(f"opsd_live seed {seed}: peak {peak:.2f} at step {peak_step}, accuracy 0 from step {zero}\n    {course}")

# %% [markdown]
# **What this scale shows** (0.5M parameters, 200 steps; the numbers are the outputs above; while the
# experiment runs, a claim's `n` column is the paired seeds it rests on so far, and the claims of the
# 5-seed arms, OPSD, the variants and the positive controls, have all theirs):
#
# - **OPSD against the verifier methods.** OPSD ends below GRPO and RLSD in every seed. It does not
#   rise *above GRPO* early either: at the same steps it is below. With its default frozen teacher
#   it does **not** decline, in 200 steps or in 400 (its last quarter lies above its first:
#   contradicted); with a **live** teacher (the student itself, shown the solution) it does what the
#   RLSD paper describes, and worse: it peaks within its first tens of steps, then falls to 0 in
#   every seed while the teacher-student KL rises: the teacher is the student, so nothing holds the
#   target still as the student drifts.
# - **RLSD and SDPG against GRPO: inconclusive.** Their paired differences from GRPO, at the end and
#   in area under the curve, are small beside the paired MDE; the last column puts settling them at
#   hundreds of paired seeds, or says no number of seeds would. The same holds for the claim that
#   isolates SDPG's teacher (SDPG against itself with `distill_coef = 0`): at this scale these teacher
#   terms change little.
# - **GRPO+OPSD**, the verifier plus a small distillation term on the worked solution, has the
#   largest gain over GRPO of the methods with a teacher, in most seeds (*seeds better*); its
#   verdict says whether that survives Holm's correction.
# - **The positive controls answer no**: a teacher shown the whole worked solution moves RLSD and
#   SDPG no more than the answer-only one, with λ held at 0.5 or not. Through RLSD's per-token weights
#   the teacher's log-ratio is too small to act (its teacher KL is a few hundredths of a nat per
#   token, so w_t stays near 1 whatever the clip), and moving `eps_w` or `lam` changes little (the
#   sensitivity table). SDPG with ten times the distillation weight (`sdpg_beta1.0`) ends above SDPG
#   at its default (exploratory, without correction): where the teacher enters as a full
#   distribution rather than a per-token weight, it has room to act.
# - **The teacher's context** (docs/opsd.md): another problem's worked example turns GRPO+OPSD's
#   teacher term harmful (it ends below GRPO), so there its gain needs the problem's own reference;
#   for RLSD, whose teacher moves little, every context ends near RLSD.

# %% [markdown]
# ## 7. The command itself, in miniature
#
# The same experiment on the `ci` profile (4 steps per run, one seed, two methods) takes seconds.
# Running it again resumes: finished runs are kept. A folder holding a *different* experiment is
# refused, with the way out in the message (more seeds of the same experiment are not different:
# they extend it, and its finished runs are kept, as the final experiment grew from 5 seeds).

# %%
d = RUNS.parent / "ci" / "verify"  # a course run folder: run again, it resumes (trains nothing)
small = run_experiment(str(d), "ci", 1, methods=("grpo", "rlsd"), tasks=("arith", "split"), progress=False)
print(f"{small['runs']} runs; files: {sorted(f for f in os.listdir(d) if f != 'runs')}")
refused = None
try:  # the same folder, another profile: a different experiment, refused before anything trains
    run_experiment(str(d), "cpu", 1, methods=("grpo", "rlsd"), tasks=("arith", "split"), progress=False)
except ValueError as e:
    refused = str(e)
    print("refused:", refused.replace(str(d), "runs/course/ci/verify")[:170], "...")
assert small["runs"] == 4 and refused is not None
