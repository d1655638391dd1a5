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
# # 05 · Information leakage: the floor under OPSD, and probes for shortcuts
#
# OPSD (notebook 04) distils a teacher that has seen the reference `r` into a student that has not.
# The RLSD paper (arXiv 2604.03128, Theorem 1) shows what the student can at best learn from that.
# Average the teacher over the references it could have been shown, `q̄_t = E_r q_t(· | r)` (the
# best target a student *without* `r` could have); then for **any** student `p_t`
#
# $$\mathbb{E}_r\, \mathrm{KL}\big(q_t(\cdot\mid r)\,\|\,p_t\big) \;=\; \mathrm{KL}\big(\bar q_t\,\|\,p_t\big) \;+\; I(Y_t; R \mid X, Y_{<t}).$$
#
# The mutual information does not depend on the student: it is a **floor** the OPSD loss cannot go
# below. It is zero only when the teacher ignores which reference it saw. Where it is not, the
# per-sample OPSD gradient carries a mean-zero term driven only by `r`; once the useful part is
# learnt, the optimiser walks on that term and can learn *question → reference* shortcuts:
# **leakage**.
#
# This notebook:
# 1. computes the floor by hand and checks the package (`rlsd_min.leakage`);
# 2. introduces a task with ten valid answers (`split`), where the floor is strictly positive;
# 3. computes the exact floor under a real OPSD run, token by token;
# 4. probes for leakage over training, from the first verification experiment in `results/arith_split/`;
# 5. looks at the teacher-student log-ratio token by token on the arithmetic task.
#
#
# **What it trains:** one OPSD run on `split` with its exact floor logged (section 3, 100 steps on the `cpu` profile); it reads the committed `results/arith_split/` for the rest.
#
# <!-- generated: notebook-time -->
# **Time.** Its stored run, on the `cpu` profile: 28 s (the cells' times recorded in this notebook; the longest cell 22 s). A notebook run again reads its finished run folders back and trains nothing.
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
import math
import os
import warnings

warnings.filterwarnings("ignore")

import datasets
import matplotlib.pyplot as plt
import numpy as np
import torch

import rlsd_min
from rlsd_min import model as model_io
from rlsd_min.leakage import (TOKEN_KINDS, leakage_probes, reference_floor, reverse_kl_floor,
                              token_kinds, token_log_ratios)
from rlsd_min.lab.plots import plot_seed_bands
from rlsd_min.sampling import sample_group
from rlsd_min.tasks import TASKS, SplitProblem, load_splits, problems_of

datasets.disable_progress_bars()
ARITH = TASKS["arith"]  # the task's data folder and warm start: ARITH.data_dir, ARITH.base_checkpoint
RESULTS_DIR = ROOT / "results" / "arith_split"  # the first verification (arith, split)
_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. The floor by hand
#
# Three references, a vocabulary of four tokens. Reference 0 makes the teacher prefer token 0,
# reference 1 token 1, reference 2 tells it nothing. With `w_r = P(r | x, y_<t)`:
#
# $$I = \sum_r w_r\, \mathrm{KL}(q_r \,\|\, \bar q), \qquad \bar q = \sum_r w_r q_r .$$
#
# The student's samples do not depend on `r` (it never sees it), so `w` is simply the prior over
# references.

# %%
# NBVAL_CHECK_OUTPUT
q = torch.tensor([[0.70, 0.10, 0.10, 0.10],
                  [0.10, 0.70, 0.10, 0.10],
                  [0.25, 0.25, 0.25, 0.25]], dtype=torch.float64)   # (R, V) teacher under each reference
w = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)             # (R,) P(r)
qbar = (w[:, None] * q).sum(0)                                       # (V,) the best a student can do
by_hand = sum(w[r] * (q[r] * (q[r] / qbar).log()).sum() for r in range(3))
floor = rlsd_min.mutual_information_floor(q.log(), w)
print("qbar =", [round(x, 4) for x in qbar.tolist()])
print(f"I by hand {by_hand:.6f} nats, package {floor:.6f} nats")
assert abs(by_hand - floor) < 1e-12
for p in ([0.25] * 4, [0.4, 0.3, 0.2, 0.1], qbar.tolist()):          # three students
    p = torch.tensor(p, dtype=torch.float64)
    loss = sum(w[r] * (q[r] * (q[r] / p).log()).sum() for r in range(3))
    gap = (qbar * (qbar / p).log()).sum()
    print(f"student {[round(x, 3) for x in p.tolist()]}: E_r KL(q_r || p) = {loss:.4f} = KL(qbar || p) {gap:.4f} + I {floor:.4f}")
    assert abs(loss - (gap + floor)) < 1e-12 and loss >= floor

# %% [markdown]
# The last student *is* `q̄` and sits exactly on the floor. The package's default OPSD divergence
# is the **reverse** KL, `KL(p ‖ q_r)`. Its floor is found the same way: `E_r KL(p ‖ q_r) = KL(p ‖ g) − log Z`
# with `g ∝ exp(E_r log q_r)` (a normalised geometric mean), so the floor is `−log Z`, attained at
# `p = g` (`rlsd_min.leakage.reverse_kl_floor`). It is not bounded by the entropy of `w`: two
# confident teachers that disagree make it large.

# %%
# NBVAL_CHECK_OUTPUT
log_g = (w[:, None] * q.log()).sum(0)                                 # (V,) E_r log q_r
Z = log_g.exp().sum()
g = log_g.exp() / Z                                                   # the best student for reverse KL
reverse_loss = lambda p: sum(w[r] * (p * (p / q[r]).log()).sum() for r in range(3))
print(f"-log Z by hand {-Z.log():.6f}, package {reverse_kl_floor(q.log(), w):.6f}")
print(f"E_r KL(g || q_r) = {reverse_loss(g):.6f};  uniform student: {reverse_loss(torch.full((4,), 0.25, dtype=torch.float64)):.6f}")
assert abs(-Z.log() - reverse_kl_floor(q.log(), w)) < 1e-12 and abs(reverse_loss(g) + Z.log()) < 1e-12

# %% [markdown]
# **Exercise 5: the floor.** Write `my_mutual_information_floor(log_q, w)`: the teacher's next-token
# log-probs `log_q (R, V)` under each of `R` references, their probabilities `w (R,)`, to the floor
# `I = Σ_r w_r KL(q_r ‖ q̄)` with `q̄ = Σ_r w_r q_r`, in nats (a 0-dim tensor). A zero probability adds
# nothing to a KL (`0 · log 0 = 0`). The next cell compares with `rlsd_min.mutual_information_floor` on
# fresh random teachers, then uses your function on a question: on the `split` task below every problem
# has ten valid answers and the reference is one of them, uniformly at random. Suppose the teacher is
# *certain* of its reference's first digit. What is the floor at that token? (Ten one-hot teachers,
# `-1e9` for "impossible", against `ln 10`.)

# %% tags=["exercise"]
import os  # noqa: F811 (each exercise cell runs on its own in the tests)

import torch


def my_mutual_information_floor(log_q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """(R, V) teacher log-probs under each reference, (R,) weights -> 0-dim tensor, nats."""
    ...  # YOUR CODE HERE
    raise NotImplementedError("exercise 5: write the body of my_mutual_information_floor")


if os.environ.get("RLSD_SOLUTIONS") == "1":  # CI runs the course with the solutions in (notebooks/solutions/)
    from solutions.nb05 import my_mutual_information_floor

# %% tags=["check"]
import math  # noqa: F811 (each check cell runs on its own in the tests)

import torch

import rlsd_min
from rlsd_min.lab.exercises import compare, fresh_generator


def check_exercise_5():  # a function: the check's variables stay out of the notebook's
    gen = fresh_generator()
    for _ in range(30):
        R, V = int(torch.randint(1, 7, (), generator=gen)), int(torch.randint(2, 13, (), generator=gen))
        log_q = (3 * torch.randn(R, V, generator=gen, dtype=torch.float64)).log_softmax(-1)   # (R, V)
        w = torch.rand(R, generator=gen, dtype=torch.float64) + 0.01
        compare("my_mutual_information_floor", my_mutual_information_floor, rlsd_min.mutual_information_floor,
                log_q, w / w.sum(), atol=1e-9)
    one_hot = torch.full((10, 10), -1e9, dtype=torch.float64)    # teacher d is sure of digit d
    one_hot.fill_diagonal_(0.0)
    answer = float(my_mutual_information_floor(one_hot, torch.full((10,), 0.1, dtype=torch.float64)))
    print(f"exercise 5 solved: == rlsd_min.mutual_information_floor on 30 random teachers; "
          f"ten sure teachers: floor {answer:.6f} nats, ln 10 = {math.log(10):.6f}")
    assert abs(answer - math.log(10)) < 1e-9


check_exercise_5()

# %% [markdown]
# ## 2. A task with many valid answers
#
# `split`: write `n` as one digit plus the rest, `123=` → `7+116`. Every digit `d` in 0-9 gives a valid
# answer and the verifier accepts each. The data files store one of them as the reference, drawn at
# random, so the reference is **not** a function of the question: a student cannot know it, and
# the forward-KL floor at the first answer token can reach `ln 10`. The task has its own data
# (`data/split`, 400 training prompts) and its own warm start (`data/base_split`, made by
# `python -m rlsd_min warmstart --task split`, which stops at 0.45 sampled accuracy as for arithmetic).

# %%
# NBVAL_CHECK_OUTPUT
p = SplitProblem(123, 3, 7)
print("prompt", repr(p.prompt), " reference", repr(p.solution), " teacher sees", repr(f"{p.context('answer')}|{p.prompt}"))
print("valid answers:", p.references)
for text in ("7+116", "0+123", "4+119", "7+117", "123", "12+111"):
    print(f"  reward({text!r}) = {p.reward(text)}")
split_data, split_base = TASKS["split"].data_dir, TASKS["split"].base_checkpoint
split = {k: problems_of(v) for k, v in load_splits(str(split_data)).items()}
print({k: len(v) for k, v in split.items()})
print("reference digits in train:", np.bincount([q.ref for q in split["train"]], minlength=10).tolist())

# %% [markdown]
# ## 3. The exact floor under OPSD, token by token
#
# `reference_floor` scores the student's own samples under the teacher once per possible reference
# (ten forwards on `split`) and applies the floor formula at every completion token. On the split
# warm start, sampled answers of 32 validation prompts:

# %%
split_model, tok = model_io.load(str(split_base))
problems = split["validation"][:32]
rollout = sample_group(split_model, tok, [q.prompt for q in problems], 4, 10)           # N = 128 rows
kinds = [token_kinds(tok.convert_ids_to_tokens(ids[:n]), split=True)
         for ids, n in zip(rollout.completion_ids.tolist(), rollout.completion_mask.sum(1).tolist())]
fig, ax = plt.subplots(figsize=(6.4, 3.2))
for i, div in enumerate(("forward", "reverse")):
    floor = reference_floor(split_model, tok, problems, rollout, div)                    # (N, T)
    per_kind = {k: [floor[r, t].item() for r, ks in enumerate(kinds) for t, kk in enumerate(ks) if kk == k]
                for k in ("choice", "answer", "format")}
    means = [float(np.mean(v)) for v in per_kind.values()]
    ax.bar(np.arange(3) + 0.4 * i, means, width=0.4, label=f"{div} KL floor")
    print(f"{div:8s} floor, mean nats per token:", {k: round(m, 3) for k, m in zip(per_kind, means)})
    if div == "forward":
        assert floor.max() <= math.log(10) + 1e-4  # I <= H(R) = ln 10
ax.axhline(math.log(10), color="k", ls=":", lw=1, label="ln 10")
ax.set_xticks(np.arange(3) + 0.2, ["choice digit d", "digits of the rest", "format (+, eos)"])
ax.set_ylabel("nats per token")
ax.set_title("OPSD floor at the split warm start, by token kind")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Where the student picks `d`, the teacher shown `7+116` insists on 7, but the reference is a coin
# with ten faces: the forward floor there is close to its maximum `ln 10`, and the reverse floor,
# unbounded, is larger still. On the remaining digits it is not zero either: this
# small teacher, shown `7+116` after the student wrote `4+`, partly *copies* the reference instead of
# computing `119`, so it still depends on `r`.
#
# Now a real OPSD run on `split` from this warm start. With `distill_floor=True` the training loop logs
# `distill_floor`, the floor computed on the same samples and aggregated like `distill_loss`. It is an
# option, off by default (ten more teacher forwards per step), accepted only where the floor exists
# in closed form: a task with several references and a forward or reverse divergence (the
# verification experiment of notebook 08 turns it on for those runs):

# %%
cfg = rlsd_min.train_config(PROFILE, method="opsd", task="split", distill_floor=True)
try:  # one valid answer: no floor to compute, and the option is refused
    rlsd_min.train_config(PROFILE, method="opsd", task="arith", distill_floor=True)
    raise AssertionError("distill_floor=True should be refused on arith")
except ValueError:
    pass
history = rlsd_min.train(cfg, str(RUNS / "opsd_split_floor"), progress=False)
rows = [r for r in history if "distill_loss" in r]
steps = [r["step"] for r in rows]
loss, floor = np.array([r["distill_loss"] for r in rows]), np.array([r["distill_floor"] for r in rows])
fig, ax = plt.subplots(figsize=(6.4, 3.4))
ax.plot(steps, loss, label="OPSD loss (reverse KL, per token)")
ax.plot(steps, floor, label="its exact floor on the same samples")
ax.fill_between(steps, floor, 0, color="C1", alpha=0.15)
ax.set_xlabel("RL step")
ax.set_ylabel("nats per token")
ax.set_ylim(bottom=0)
ax.legend(fontsize=8)
ax.set_title(f"OPSD on split, {cfg.steps} steps ({PROFILE} profile)")
plt.show()
print(f"mean loss {loss.mean():.3f}, mean floor {floor.mean():.3f}; accuracy {history[0]['eval_acc']:.3f} -> {rlsd_min.last_eval(history):.3f}")
assert loss.mean() > floor.mean()

# %% [markdown]
# The loss falls toward the floor and stays above it: the gap between the two curves is all a
# student without the reference can still learn. (Per batch the loss can dip below the floor by
# noise: the floor is an expectation over references.)
#
# ## 4. Leakage probes over training, from the verification experiment
#
# The first verification, `python -m rlsd_min verify --profile cpu --seeds 3 --tasks arith,split --out
# results/arith_split`, trained every method on both tasks and called `leakage_probes` at each evaluation, on the same number of **training** prompts and
# **held-out** prompts:
#
# - `ref_match` (split): the fraction of *correct* answers that are exactly the data's reference.
#   The student never sees the reference, so on held-out prompts it sits near chance (1/10).
#   On training prompts, above chance means it has learnt question → reference shortcuts.
# - `disagree` (arith): the fraction of answers that differ from what the completion's own scratchpad
#   computes: the answer decoupling from the worked steps.
# - `gap`: training accuracy minus held-out accuracy.
#
# The curves below are read from the committed run folders (`results/arith_split/runs/<task>/<method>/seed*/metrics.jsonl`).

# %%
runs = {}
for task in ("split", "arith"):
    for m in ("grpo", "opsd", "rlsd", "sdpg"):
        paths = sorted((RESULTS_DIR / "runs" / task / m).glob("seed*/metrics.jsonl"))
        runs.setdefault(task, {})[m.upper()] = [rlsd_min.read_metrics(str(p.parent)) for p in paths]
assert all(len(h) >= 1 for t in runs.values() for h in t.values()), "run `python -m rlsd_min verify` first"
fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
for ax, key, title in zip(axes, ("probe_ref_match_train", "probe_ref_match_heldout", "probe_disagree_heldout"),
                          ("split: reference match, training prompts", "split: reference match, held-out",
                           "arith: answer disagrees with own scratchpad")):
    plot_seed_bands(runs["arith" if "disagree" in key else "split"], key, ax, ylabel=key.replace("probe_", ""))
    ax.set_title(title, fontsize=10)
for ax in axes[:2]:
    ax.axhline(0.1, color="k", ls=":", lw=1)
axes[0].legend(fontsize=7)
plt.show()
summary = json.load(open(RESULTS_DIR / "summary.json"))
for m, row in summary["table"]["split"].items():
    print(f"split {m:9s} ref_match train {row['probe_ref_match_train']['mean']:.3f}  held-out {row['probe_ref_match_heldout']['mean']:.3f}"
          f"  gap {row['probe_gap']['mean']:+.3f}")
opsd = summary["table"]["split"]["opsd"]
print(f"split opsd accuracy in the verification runs ({json.load(open(RESULTS_DIR / 'experiment.json'))['configs']['split/opsd']['steps']} "
      f"steps): final {opsd['final_acc']['mean']:.3f} ± {opsd['final_acc']['std']:.3f}, best {opsd['best_acc']['mean']:.3f}")

# %% [markdown]
# What to look for: whether OPSD's training-prompt curve rises above the dotted chance line while
# its held-out curve does not. At this scale it does not, clearly: OPSD's accuracy on `split` falls
# from 0.54 to 0.10 over the verification's 300-step runs (the last line printed above, and notebook
# 08; the 100-step run of section 3, on the `cpu` profile, had already fallen to 0.227), so late in training it has very few correct
# answers to count and its curve is noise. The methods with a verifier stay at or below chance on
# both sets; `results/arith_split/REPORT.md` judges the shortcut claim inconclusive.
# What OPSD does learn on `split` is
# the floor's optimum: its loss meets the floor at the end of the run (`results/arith_split/floor_split.png`),
# and that student, the geometric mean of ten teachers that each insist on a different answer,
# does not write valid answers.
#
# ## 5. The teacher-student log-ratio, token by token
#
# On the arithmetic task the reference *is* a function of the question, so the floor is zero in
# principle. What the teacher adds is visible in `Δ_t = log q_t(y_t) − log p_t(y_t)` (the current
# model shown the answer vs not), here at the arithmetic warm start on six sampled completions:

# %%
base, tok = model_io.load(str(ARITH.base_checkpoint))
arith = problems_of(load_splits(str(ARITH.data_dir))["validation"])
torch.manual_seed(1)
few = arith[:6]
roll = sample_group(base, tok, [q.prompt for q in few], 1, 40)
delta = token_log_ratios(base, tok, few, roll, "answer")                                   # (6, T)
T = int(roll.completion_mask.sum(1).max())
fig, ax = plt.subplots(figsize=(14, 3.2))
im = ax.imshow(delta[:, :T].numpy(), cmap="RdBu", vmin=-3, vmax=3, aspect="auto")
for i, ids in enumerate(roll.completion_ids.tolist()):
    for t, s in enumerate(tok.convert_ids_to_tokens(ids[:int(roll.completion_mask[i].sum())])):
        ax.text(t, i, {"\n": "⏎", "<eos>": "$"}.get(s, s), ha="center", va="center", fontsize=8)
ax.set_yticks(range(6), [f"{q.prompt} {'✓' if q.reward(t) else '✗'}" for q, t in zip(few, roll.texts)])
ax.set_xticks([])
fig.colorbar(im, ax=ax, label="Δ = log q − log p")
ax.set_title("teacher (shown the answer) vs student on the student's own tokens; red: the teacher doubts the token")
plt.show()

# %% [markdown]
# The teacher's strongest doubts (dark red) sit on the first wrong digit of a wrong completion; an
# answer digit that disagrees with the completion's own scratchpad is doubted only mildly. Pooled
# over 128 prompts, by token kind (the boxes hide outliers; the means carry the rare strong doubts):

# %%
torch.manual_seed(2)
many = arith[:128]
roll = sample_group(base, tok, [q.prompt for q in many], 1, 40)
delta = token_log_ratios(base, tok, many, roll, "answer")
by_kind = {k: [] for k in TOKEN_KINDS}
for row, ids, n in zip(delta.tolist(), roll.completion_ids.tolist(), roll.completion_mask.sum(1).tolist()):
    for d, k in zip(row[:n], token_kinds(tok.convert_ids_to_tokens(ids[:n]), split=False)):
        by_kind[k].append(d)
kinds = [k for k in TOKEN_KINDS if by_kind[k]]
fig, ax = plt.subplots(figsize=(6.4, 3.2))
ax.boxplot([by_kind[k] for k in kinds], showfliers=False)
ax.set_xticks(range(1, len(kinds) + 1), kinds)
ax.axhline(0, color="k", lw=0.8)
ax.set_ylabel("Δ = log q − log p")
ax.set_title("teacher-student log-ratio by token kind (arith warm start)")
plt.show()
for k in kinds:
    print(f"{k:10s} {len(by_kind[k]):5d} tokens, mean Δ {np.mean(by_kind[k]):+.3f}, 5th percentile {np.percentile(by_kind[k], 5):+.3f}")
probes = leakage_probes(base, tok, problems_of(load_splits(str(ARITH.data_dir))["train"])[:128], arith[:128])
print({k: round(v, 3) for k, v in probes.items()})
assert set(probes) >= {"acc_train", "acc_heldout", "gap", "disagree_train", "disagree_heldout"}

# %% [markdown]
# **What to take away.** On `split`, OPSD is asked to match a teacher that knows which of ten
# answers the data happened to store: its reverse-KL loss has a floor of about 2.4 nats per token
# that no student can cross, and the student that reaches it is a blend of ten incompatible
# teachers, not a solver. On arithmetic, where the answer is a function of the question, the
# teacher's disagreement is small and points at real mistakes. RLSD uses the same teacher only to scale
# the verifier's update token by token (notebook 06), and SDPG distils only on rollouts the
# verifier endorsed (notebook 07). Notebook 08 compares all of them over several seeds.
