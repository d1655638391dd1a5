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
# # 06 · RLSD: the verifier sets the direction, the teacher the magnitude
#
# GRPO (notebook 02) gives every token of a completion the same advantage `A_i`: the verifier
# knows *whether* the completion is right, not *which* tokens made it so. The privileged teacher
# (notebook 04) knows which tokens it finds more or less likely once it has seen the answer, but
# distilling it directly (OPSD) stalls. RLSD (Yang et al., "Self-Distilled RLVR",
# arXiv 2604.03128) combines the two without letting the teacher overrule the verifier:
#
# $$\Delta_t = \mathrm{sg}\big[\log q_t(y_t) - \log p_t(y_t)\big], \qquad
# w_t = \exp\big(\operatorname{sign}(A_i)\,\Delta_t\big) = \Big(\tfrac{q_t(y_t)}{p_t(y_t)}\Big)^{\operatorname{sign}(A_i)}$$
#
# $$\hat A_{i,t} = A_i\,\Big((1-\lambda) + \lambda\,\operatorname{clip}(w_t,\ 1-\varepsilon_w,\ 1+\varepsilon_w)\Big)$$
#
# `Â_{i,t}` then replaces `A_i` in GRPO's clipped surrogate; nothing else changes (no extra loss
# term, no reference KL). The factor in brackets is always positive, so the **sign** of every
# token's advantage is the verifier's; the teacher only scales its **magnitude**:
#
# - in a correct completion (`A > 0`), a token the teacher finds likelier (`q > p`) is pushed up
#   *more*, one it doubts *less*;
# - in a wrong completion (`A < 0`), `w = p/q`: a token the teacher doubts is pushed down *more*
#   (likely the mistake), one it endorses *less* (a correct step inside a wrong answer).
#
# Defaults ([RLSD's details](../docs/rlsd.md#implementation-details)): `ε_w = 0.2`; `λ` starts at 0.5 and decays linearly to 0 over 50 steps,
# after which RLSD *is* GRPO; the teacher is a **synced** copy of the student (refreshed every 10
# steps) shown only the **answer**.
#
# **What it trains:** one RLSD run (100 steps on the `cpu` profile) and reads notebook 02's GRPO run back (run 02 first, as for the stored outputs, or it trains that too).
#
# <!-- generated: notebook-time -->
# **Time.** Its stored run, on the `cpu` profile: 34 s (the cells' times recorded in this notebook; the longest cell 29 s). A notebook run again reads its finished run folders back and trains nothing.
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
import math
import warnings

warnings.filterwarnings("ignore")

import datasets
import matplotlib.pyplot as plt
import torch

import rlsd_min
from rlsd_min import last_eval
from rlsd_min import model as model_io
from rlsd_min.lab.plots import plot_eval_curves
from rlsd_min.methods import rlsd_lambda, rlsd_weights
from rlsd_min.step import make_teacher, method_loss
from rlsd_min.tasks import TASKS, load_splits, problems_of
from rlsd_min.teacher import teacher_logprobs, teacher_prompt

datasets.disable_progress_bars()
ARITH = TASKS["arith"]  # the task's data folder and warm start: ARITH.data_dir, ARITH.base_checkpoint
torch.manual_seed(0)
STEPS = rlsd_min.train_config(PROFILE).steps
# the runs of section 5; lam decays over the paper's 50 steps, or over half of a shorter run (the ci
# profile's 4 steps), so that on every profile lam reaches 0 within the run
CFG = {"grpo": rlsd_min.train_config(PROFILE, method="grpo"),
       "rlsd": rlsd_min.train_config(PROFILE, method="rlsd", rlsd_lam_steps=min(50, STEPS // 2))}
R_CFG = CFG["rlsd"]
print(f"runs: {R_CFG.steps} steps x {R_CFG.prompts_per_step} prompts x G={R_CFG.group_size}, lr {R_CFG.lr}, "
      f"evaluation on {R_CFG.eval_problems} validation problems every {R_CFG.eval_every} steps")
print(f"RLSD: lam {R_CFG.rlsd_lam} -> 0 over {R_CFG.rlsd_lam_steps} steps, eps_w {R_CFG.rlsd_eps_w}, "
      f"teacher {R_CFG.teacher_mode} every {R_CFG.sync_every} steps, context {R_CFG.teacher_context}")

# %% [markdown]
# ## 1. A worked example by hand
#
# Two completions, `A = +1` (correct) and `A = −1` (wrong), that happen to share four tokens, with
# `λ = 0.5`, `ε_w = 0.2` (so the clip range is `[0.8, 1.2]`):
#
# | token | p(y_t) | q(y_t) | q/p | A = +1: w | clip | Â | A = −1: w = p/q | clip | Â |
# |---|---|---|---|---|---|---|---|---|---|
# | 0 | 0.40 | 0.80 | 2.0 | 2.0 | 1.2 | +1.10 | 0.5 | 0.8 | −0.90 |
# | 1 | 0.50 | 0.55 | 1.1 | 1.1 | 1.1 | +1.05 | 0.909 | 0.909 | −0.955 |
# | 2 | 0.60 | 0.30 | 0.5 | 0.5 | 0.8 | +0.90 | 2.0 | 1.2 | −1.10 |
# | 3 | 0.50 | 0.45 | 0.9 | 0.9 | 0.9 | +0.95 | 1.111 | 1.111 | −1.056 |
#
# (`Â = A · (0.5 + 0.5 · clip(w))`.) Token 2, which the teacher doubts, is pushed up least in the
# correct completion and pushed down most in the wrong one; token 0 the other way round.

# %%
# NBVAL_CHECK_OUTPUT
p = [0.40, 0.50, 0.60, 0.50]
q = [0.80, 0.55, 0.30, 0.45]
A, lam, eps_w = [1.0, -1.0], 0.5, 0.2
hand = []
for a in A:  # by hand, one token at a time
    row = []
    for pt, qt in zip(p, q):
        w = math.exp(math.copysign(1, a) * (math.log(qt) - math.log(pt)))
        row.append(a * ((1 - lam) + lam * min(max(w, 1 - eps_w), 1 + eps_w)))
    hand.append(row)
student_logp = torch.log(torch.tensor([p, p]))                     # (N=2, T=4) log p_t(y_t)
teacher_logp = torch.log(torch.tensor([q, q]))                     # (N, T)     log q_t(y_t)
pkg = rlsd_min.rlsd_advantages(torch.tensor(A), teacher_logp, student_logp, lam, eps_w)  # (N, T)
for i, a in enumerate(A):
    print(f"A={a:+.0f}  hand   ", [round(x, 4) for x in hand[i]])
    print("      package", [round(x, 4) for x in pkg[i].tolist()])
assert torch.allclose(pkg, torch.tensor(hand), atol=1e-6)

# %% [markdown]
# **Exercise 6: RLSD's token advantages.** Write `my_rlsd_advantages(A, teacher_logp, student_logp, lam, eps_w)`
# for a whole batch: `A (N,)`, log-probs `(N, T)` to `Â (N, T)` by the formulas at the top of this
# notebook. The sign of `A_i` picks which ratio `w_t` is, and `A_i = 0` must give `Â = 0`; the teacher
# signal `Δ_t` carries no gradient (`.detach()` it). The next cell compares with `rlsd_min.rlsd_advantages`
# on fresh random advantages (some zero), log-probs, `λ` and `ε_w`: the values, and the gradients of
# their sum with respect to both log-probs (zero: an answer without the detach is rejected there).

# %% tags=["exercise"]
import os

import torch


def my_rlsd_advantages(A: torch.Tensor, teacher_logp: torch.Tensor, student_logp: torch.Tensor,
                       lam: float, eps_w: float) -> torch.Tensor:
    """(N,) advantages, (N, T) teacher and student log-probs of the sampled tokens -> (N, T)."""
    ...  # YOUR CODE HERE
    raise NotImplementedError("exercise 6: write the body of my_rlsd_advantages")


if os.environ.get("RLSD_SOLUTIONS") == "1":  # CI runs the course with the solutions in (notebooks/solutions/)
    from solutions.nb06 import my_rlsd_advantages

# %% tags=["check"]
import torch

import rlsd_min
from rlsd_min.lab.exercises import compare, fresh_generator, gradient_of


def check_exercise_6():  # a function: the check's variables stay out of the notebook's
    gen = fresh_generator()
    for _ in range(30):
        N, T = int(torch.randint(1, 9, (), generator=gen)), int(torch.randint(1, 12, (), generator=gen))
        A = torch.randn(N, generator=gen) * (torch.rand(N, generator=gen) > 0.25)     # about a quarter zero
        student_logp = -3 * torch.rand(N, T, generator=gen)
        teacher_logp = student_logp + torch.randn(N, T, generator=gen)              # Delta ~ N(0, 1): clips often
        lam, eps_w = float(torch.rand((), generator=gen)), 0.05 + 0.9 * float(torch.rand((), generator=gen))
        args = (A, teacher_logp, student_logp, lam, eps_w)
        compare("my_rlsd_advantages", my_rlsd_advantages, rlsd_min.rlsd_advantages, *args)
        for wrt, name in ((1, "teacher_logp"), (2, "student_logp")):  # Delta_t = sg[...]: no gradient through it
            compare(f"the gradient of my_rlsd_advantages(...).sum() with respect to {name}",
                    gradient_of(my_rlsd_advantages, wrt), gradient_of(rlsd_min.rlsd_advantages, wrt), *args)
    print("exercise 6 solved: my_rlsd_advantages == rlsd_min.rlsd_advantages, values and gradients (none through "
          "Delta_t), on 30 random batches")


check_exercise_6()

# %% [markdown]
# ## 2. Three properties, checked on random numbers
#
# 1. **The sign never flips**: `sign(Â_{i,t}) = sign(A_i)` for every token (and `A_i = 0` gives 0).
# 2. **`λ = 0` is GRPO**: `Â_{i,t} = A_i` exactly.
# 3. **Bounded magnitude**: `Â/A = (1−λ) + λ·clip(w)` lies in `[1 − λε_w, 1 + λε_w]`; at the
#    default start `λ = 0.5` that is ±10 %, at `λ = 1` the teacher's clipped weight alone (±20 %).
#
# On 8 completions (two of them with `A = 0`) × 200 tokens with large random log-ratios, so the
# clip is reached at both ends:

# %%
# NBVAL_CHECK_OUTPUT
gen = torch.Generator().manual_seed(0)
A = torch.tensor([1.5, -0.5, -0.5, -0.5, 0.0, 0.0, 0.9, -0.9])          # (N,)
s_logp = -torch.rand(8, 200, generator=gen) * 3                          # (N, T) student log-probs
t_logp = s_logp + torch.randn(8, 200, generator=gen)                     # (N, T) teacher: Delta ~ N(0, 1)
for lam in (0.0, 0.25, 0.5, 1.0):
    ahat = rlsd_min.rlsd_advantages(A, t_logp, s_logp, lam, eps_w)      # (N, T)
    assert torch.equal(torch.sign(ahat), torch.sign(A)[:, None].expand_as(ahat))   # 1. same sign
    factor = ahat[A != 0] / A[A != 0][:, None]                           # (6, T) Ahat / A
    lo, hi = 1 - lam * eps_w, 1 + lam * eps_w
    assert factor.min() >= lo - 1e-6 and factor.max() <= hi + 1e-6      # 3. bounded
    if lam == 0:
        assert torch.equal(ahat, A[:, None].expand_as(ahat))             # 2. GRPO exactly
    if lam == 1:
        w = torch.exp(torch.sign(A)[:, None] * (t_logp - s_logp))[A != 0]
        assert torch.allclose(factor, w.clamp(1 - eps_w, 1 + eps_w))     # the clipped weight alone
    print(f"lam={lam:4.2f}  Ahat/A in [{factor.min():.4f}, {factor.max():.4f}]   bound [{lo:.2f}, {hi:.2f}]")

# %% [markdown]
# ## 3. The λ schedule
#
# `rlsd_min.methods.rlsd_lambda(k, λ_0, K)` = `λ_0 · max(0, 1 − k/K)` at (0-based) RL step `k`:
# the paper decays over `K = 50` steps, its released script over 60. From step `K` on, RLSD is
# GRPO. The right panel shows what that means per token: the range `1 ± ε_w λ(k)` that the teacher
# can scale an advantage by shrinks to nothing.

# %%
# NBVAL_CHECK_OUTPUT
for k in (0, 10, 25, 49, 50, 60):
    hand = 0.5 * max(0.0, 1 - k / 50)
    got = rlsd_lambda(k, 0.5, 50)
    print(f"k={k:3d}  lam hand {hand:.3f}  package {got:.3f}")
    assert abs(got - hand) < 1e-12

# %%
ks = list(range(0, 101))
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 2.8), dpi=90)
for K, label in ((50, "paper: K=50"), (60, "released script: K=60")):
    ax0.plot(ks, [rlsd_lambda(k, 0.5, K) for k in ks], label=label)
ax0.set(xlabel="RL step k", ylabel="lam", title="lam(k) = 0.5 max(0, 1 - k/K)")
ax0.grid(alpha=0.3)
ax0.legend(fontsize=8)
lam_k = [rlsd_lambda(k, R_CFG.rlsd_lam, R_CFG.rlsd_lam_steps) for k in ks]
ax1.fill_between(ks, [1 - R_CFG.rlsd_eps_w * l for l in lam_k], [1 + R_CFG.rlsd_eps_w * l for l in lam_k], alpha=0.4)
ax1.axhline(1, color="k", lw=0.8)
ax1.set(xlabel="RL step k", ylabel="Ahat / A", title=f"range of the teacher's factor (eps_w={R_CFG.rlsd_eps_w})")
ax1.grid(alpha=0.3)
fig.tight_layout()
plt.show()

# %% [markdown]
# ## 4. On a real group: where does the teacher move the advantage?
#
# One RL step is two calls of `rlsd_min/step.py`. `rlsd_min.collect` does everything that comes
# before the update: it samples a group of completions per prompt, rewards each with the verifier,
# computes the group advantages `A_i` and scores the completions under the method's teacher
# (`teacher_logprobs`, no gradient), and returns them as one `StepBatch`. `rlsd_min.update` then
# runs the method's loss, backward, gradient clipping and the optimiser step; its forward and loss
# alone are `method_loss`, which records the student's log-probs as those of the sampling policy
# (`old_logp`) and, for RLSD, turns `A_i` into `Â_{i,t}` with `rlsd_advantages` at the step's `λ`.
#
# Here `collect` runs on one batch: the warm start `data/base`, four validation problems,
# 8 completions each. The RLSD teacher (`make_teacher`) is a `synced` copy of the student
# (`rlsd_min.teacher.Teacher`): at step 0 it has exactly the student's weights, and it sees the
# answer-only prompt `answer|question` (`teacher_prompt`). Every part of the batch is recomputed by
# hand and must equal the package's.

# %%
model, tok = model_io.load(str(ARITH.base_checkpoint))
DEMO = rlsd_min.train_config(PROFILE, method="rlsd", prompts_per_step=4, group_size=8)  # one batch: 4 prompts x G=8
G = DEMO.group_size
teacher = make_teacher(model, DEMO)          # synced: a frozen copy of the student, refreshed every sync_every steps
assert teacher.mode == "synced" and all(torch.equal(a, b) for a, b in zip(teacher.model.parameters(), model.parameters()))
val = problems_of(load_splits(str(ARITH.data_dir))["validation"])[:4]
torch.manual_seed(0)
batch = rlsd_min.collect(model, tok, val, DEMO, teacher=teacher)      # sample, verify, A_i, teacher scores
rollout, rewards, adv, teacher_logp = batch.rollout, batch.rewards, batch.advantages, batch.teacher_logp
loss, metrics = method_loss(model, batch, DEMO, step=0)               # the loss at step 0; fills batch.old_logp
student_logp = batch.old_logp                                         # (N, T) log p_t(y_t), detached
lam0 = rlsd_lambda(0, DEMO.rlsd_lam, DEMO.rlsd_lam_steps)
ahat = rlsd_min.rlsd_advantages(adv, teacher_logp, student_logp, lam0, DEMO.rlsd_eps_w)  # (N, T)
mask = rollout.completion_mask                                        # (N, T)

# by hand, against the batch: rewards, advantages, the teacher's and the student's log-probs
answers = [q.answer for q in val for _ in range(G)]
assert torch.equal(rewards, torch.tensor([rlsd_min.verify(t, a) for t, a in zip(rollout.texts, answers)]))
assert torch.equal(adv, rlsd_min.group_advantages(rewards, G))
t_prompts = [teacher_prompt(q.prompt, q.context(DEMO.teacher_context)) for q in val]
scored = adv != 0  # collect scores only the rows whose loss the teacher can change (A_i != 0)
assert torch.equal(teacher_logp[scored], teacher_logprobs(teacher.model, tok, t_prompts, rollout)[scored])
assert torch.equal(student_logp, rlsd_min.token_logprobs(model, rollout)[0].detach())
# and the loss: at ratio 1 the clipped surrogate is -Ahat, averaged over the batch's tokens (token-mean)
assert metrics["lam"] == lam0
assert abs(loss.item() + ((ahat * mask).sum() / mask.sum()).item()) < 1e-6
print("teacher prompts:", t_prompts)
print("rewards per group:\n", rewards.view(-1, G).int())
print(f"method_loss at step 0: {loss.item():+.5f} = -token-mean(Ahat), lam {metrics['lam']}")

# %% [markdown]
# Take the first group with both right and wrong completions and show each distinct completion
# once. Each cell is one token (one character) of the completion, coloured by the factor
# `Â_t / A_i`: red above 1 (the verifier's push, up or down, made stronger), blue below 1 (made
# weaker), white exactly 1 (GRPO's value).

# %%
mixed = next(g for g in range(len(val)) if 0 < rewards[g * G:(g + 1) * G].sum() < G)
prob = val[mixed]
rows, seen = [], set()
for i in sorted(range(mixed * G, (mixed + 1) * G), key=lambda i: -rewards[i].item()):  # correct ones first
    if rollout.texts[i] not in seen:
        seen.add(rollout.texts[i])
        rows.append(i)
rows = rows[:6]
mask = rollout.completion_mask
factor = (ahat / adv[:, None]).masked_fill(mask == 0, float("nan"))    # (N, T) Ahat / A, nan after eos
print(f"problem {prob.prompt}  reference {prob.solution!r}")
for i in rows:
    wrong = next((t for t, (a, b) in enumerate(zip(rollout.texts[i], prob.solution)) if a != b), None)
    moved = [t for t in range(int(mask[i].sum())) if abs(factor[i, t] - 1) > 0.01]
    print(f"R={rewards[i]:.0f} A={adv[i]:+.2f} {rollout.texts[i]!r:40s} first token off the reference: {wrong}; "
          f"tokens with |factor-1| > 0.01: {moved}")

SHOW = {"\n": "↵", " ": "·", "eos": "■"}  # how to draw the invisible characters
bound = lam0 * DEMO.rlsd_eps_w
width = int(mask[rows].sum(1).max())
fig, ax = plt.subplots(figsize=(10, 0.45 * len(rows) + 0.9), dpi=90)
im = ax.imshow(factor[rows, :width], cmap="bwr", vmin=1 - bound, vmax=1 + bound, aspect="auto")
for r, i in enumerate(rows):
    for t, ch in enumerate(list(rollout.texts[i]) + ["eos"]):
        strong = abs(factor[i, t].item() - 1) > 0.6 * bound               # white text on saturated cells
        ax.text(t, r, SHOW.get(ch, ch), ha="center", va="center", fontsize=8, color="w" if strong else "k")
ax.set_yticks(range(len(rows)), [f"R={rewards[i]:.0f}  A={adv[i]:+.2f}" for i in rows], fontsize=8)
ax.set_xticks([])
ax.set_title(f"Ahat_t / A_i at lam={lam0} (red: stronger push, blue: weaker; · space, ↵ newline, ■ eos)", fontsize=9)
fig.colorbar(im, ax=ax, pad=0.01)
plt.show()

# %% [markdown]
# Read the rows against the printout (the verifier checks only the final answer, so a completion
# can be rewarded with a wrong step inside it).
#
# - **Where the teacher acts.** Only a few positions move away from 1, and the printout lists the
#   same ones for every row: the sum digit of each scratchpad step and the last digit of the
#   answer, the only tokens where the warm start hesitates. Everything else is copied
#   deterministically; student and teacher agree there and `Â_t` stays within 1 % of `A_i`.
# - **A wrong step in a wrong completion** (red at the first token off the reference): the
#   answer-aware teacher doubts it, so it is pushed down harder than GRPO would push it.
# - **A correct step in a wrong completion** (blue): the teacher endorses it, so it is pushed down
#   less.
# - **A wrong step in a rewarded completion** (the `R=1` row whose scratchpad is off the
#   reference): the verifier's reward reaches that token *weakened*
#   (blue), which GRPO cannot do.
# - **The teacher is no oracle.** At the answer's last digit the answer-only teacher of this tiny
#   model is about as unsure as the student, and there the factor stays near 1, sometimes on the
#   wrong side.
#
# Over the whole batch:

# %%
m, nz = mask.bool(), adv != 0                                             # tokens, rollouts with a signal
w = torch.exp(torch.sign(adv)[:, None] * (teacher_logp - student_logp))   # (N, T) unclipped w_t, by hand
assert torch.allclose(w, rlsd_weights(adv, teacher_logp, student_logp))
clipped = (w < 1 - DEMO.rlsd_eps_w) | (w > 1 + DEMO.rlsd_eps_w)
sel = m & nz[:, None]                                                     # the tokens w_clip_frac counts
by_hand = clipped[sel].float().mean().item()
print(f"{int(nz.sum())} of {len(adv)} completions have A != 0; of their {int(sel.sum())} tokens:")
print(f"  w_t clipped: {by_hand:.3f} by hand, {metrics['w_clip_frac']:.3f} logged by method_loss (w_clip_frac)")
print(f"  |Ahat/A - 1| > 0.01: {((factor - 1).abs() > 0.01)[sel].float().mean():.3f}")
assert abs(by_hand - metrics["w_clip_frac"]) < 1e-6
assert torch.equal(torch.sign(ahat) * mask, torch.sign(adv)[:, None] * mask)    # the verifier's sign, everywhere
assert ((factor[sel] - 1).abs() <= bound + 1e-6).all()

# %% [markdown]
# **Two more checks of the package's step on this batch.** Once `λ` has decayed to 0 (step
# `k = rlsd_lam_steps`), RLSD's loss on the same batch *is* GRPO's, exactly. And `rlsd_min.update` is
# `method_loss` followed by backward, clipping and one AdamW step: its loss is the one above, the
# student's weights move, and the `synced` teacher keeps the step-0 weights until it is refreshed
# after `sync_every` steps (the loop's `teacher.update(policy, steps_done)`).

# %%
k_end = DEMO.rlsd_lam_steps                                               # lam(k_end) = 0
loss_end, metrics_end = method_loss(model, batch, DEMO, step=k_end)
grpo = rlsd_min.train_config(PROFILE, method="grpo", prompts_per_step=4, group_size=8)
loss_grpo = method_loss(model, batch, grpo, step=k_end)[0]
print(f"step {k_end}: lam {metrics_end['lam']}, RLSD loss {loss_end.item():+.6f}, GRPO loss {loss_grpo.item():+.6f}")
assert metrics_end["lam"] == 0.0 and torch.equal(loss_end, loss_grpo)

optimizer = torch.optim.AdamW(model.parameters(), lr=DEMO.lr)
row = rlsd_min.update(model, optimizer, batch, DEMO, step=0)            # forward + loss, backward, clip, AdamW step
print("update:", {k: round(v, 4) for k, v in row.items()})
assert row["loss"] == loss.item() and row["lam"] == lam0 and row["w_clip_frac"] == metrics["w_clip_frac"]
same = lambda: all(torch.equal(a, b) for a, b in zip(teacher.model.parameters(), model.parameters()))
assert not same()                      # the student moved, the synced teacher did not
teacher.update(model, 1)               # after step 1: no refresh
assert not same()
teacher.update(model, DEMO.sync_every) # after sync_every steps: refreshed from the student
assert same()

# %% [markdown]
# So at the start the teacher changes a small fraction of the tokens, each by at most ±10 %, and
# that range shrinks to zero by step 50. At this scale RLSD should therefore behave like a gently
# reweighted GRPO.
#
# ## 5. RLSD vs GRPO from the same warm start
#
# Two runs of `rlsd_min.train` from the warm start, identical but for `method` (same seed, so the
# same prompts at each step and the same evaluation samples). The GRPO run is notebook 02's
# (`runs/course/<profile>/grpo`, read again, not retrained); the RLSD run, in
# `runs/course/<profile>/rlsd`, is the one notebook 07 compares with. RLSD logs `lam`, `w_clip_frac` (the
# fraction of the tokens of completions with `A_i ≠ 0` whose `w_t` was clipped, as in section 4; the
# paper reports 3–6 %) and `teacher_kl` (the mean of `log p − log q` on the sampled tokens: how far
# the synced teacher is from the student). `λ` decays over the paper's 50 steps on the `cpu` and
# `gpu` profiles, and over 2 of the `ci` profile's 4 steps, so that every profile checks that it
# reaches 0. In the table below, row `k` is the `k`-th update and logs the `λ` that update used,
# `λ(k − 1)`, computed from the `k − 1` steps done before it: row 10 shows 0.5 · (1 − 9/50) = 0.410,
# and row 50 the last non-zero value, 0.010.
#
# **Expectation.** The RLSD paper reports RLSD ending highest (validation reward about 0.62 vs
# GRPO's 0.60 in its Fig. 1a). Here, with one seed, 256 validation problems (a standard error of
# about 2–3 points at these accuracies) and a teacher that moves advantages by at most ±10 % for
# half the run, the two curves are expected to lie within noise of each other. The `ci` profile
# runs 4 tiny steps only to show the loop works.

# %%
histories = {m: rlsd_min.train(cfg, str(RUNS / m), progress=False) for m, cfg in CFG.items()}  # grpo: 02's run
rl = histories["rlsd"]
print(" step " + "".join(f"{m + ' eval_acc':>16s}" for m in histories) + f"{'rlsd lam':>12s}")
evals = {m: {r["step"]: r["eval_acc"] for r in h if "eval_acc" in r} for m, h in histories.items()}
for step in evals["rlsd"]:
    lam_s = f"{rl[step]['lam']:12.3f}" if step > 0 else f"{'-':>12s}"
    print(f"{step:5d} " + "".join(f"{evals[m][step]:16.3f}" for m in histories) + lam_s)

# %%
fig = plt.figure(figsize=(10, 5.6), dpi=85)
ax = fig.add_subplot(2, 1, 1)
plot_eval_curves(histories, title="held-out accuracy, same warm start and seed", ax=ax)
ax.axhline(rl[0]["eval_acc"], color="gray", ls="--", lw=1)
steps = [r["step"] for r in rl[1:]]
for j, (key, title) in enumerate([("lam", "lam (RLSD)"), ("w_clip_frac", "w_clip_frac (RLSD)"),
                                  ("teacher_kl", "teacher_kl: mean log p - log q")]):
    a = fig.add_subplot(2, 3, 4 + j)
    a.plot(steps, [r[key] for r in rl[1:]], lw=1)
    a.set(xlabel="RL step", title=title)
    a.grid(alpha=0.3)
fig.tight_layout()
plt.show()

# %%
n = R_CFG.eval_problems
start = rl[0]["eval_acc"]
end = {m: last_eval(h) for m, h in histories.items()}
se = math.sqrt(sum(e * (1 - e) for e in end.values()) / n)   # standard error of the difference of two accuracies
print(f"warm start {start:.3f};  after {R_CFG.steps} steps: " + ", ".join(f"{m} {e:.3f}" for m, e in end.items()))
print(f"rlsd - grpo = {end['rlsd'] - end['grpo']:+.3f}   (standard error of that difference on {n} problems: {se:.3f})")
print(f"w_clip_frac: mean {sum(r['w_clip_frac'] for r in rl[1:]) / len(rl[1:]):.4f}, max {max(r['w_clip_frac'] for r in rl[1:]):.4f}")

# robust on every profile: the logged lam follows the schedule; w_clip_frac is a fraction
for r in rl[1:]:
    assert r["lam"] == rlsd_lambda(r["step"] - 1, R_CFG.rlsd_lam, R_CFG.rlsd_lam_steps)
    assert 0.0 <= r["w_clip_frac"] <= 1.0
assert R_CFG.rlsd_lam_steps < R_CFG.steps   # from step k = rlsd_lam_steps (row k + 1) on, lam = 0: RLSD is GRPO
assert rl[R_CFG.rlsd_lam_steps]["lam"] > 0 and all(r["lam"] == 0.0 for r in rl[R_CFG.rlsd_lam_steps + 1:])
assert all("time_teacher_s" in r for r in rl[1:]) and not any("time_teacher_s" in r for r in histories["grpo"][1:])
if PROFILE != "ci":  # 4 steps of 4 prompts (ci) are too few to promise anything
    assert all(e > start for e in end.values()), "both methods should improve on the warm start"

# %% [markdown]
# **What the run shows** (`cpu` profile, the stored outputs). Both methods lift the warm start
# from 0.539 by more than 30 points. RLSD ends at 0.883 and GRPO at 0.871: about one point apart,
# against a standard error of about three points for that difference. That is within noise, as
# expected, and it is also about the size of the margin the paper reports (two points), so one
# seed can neither confirm nor refute it: that takes several seeds. The two curves track each other step by step
# (same prompts, same evaluation samples), which is what a teacher that rescales a few tokens by
# at most ±10 %, and nothing after step 50, should give.
#
# `w_clip_frac` averages about 1.4 % over the run, with a maximum of 3.7 % (the printout), below
# the paper's 3–6 %. Like the 4.2 % of the warm-start batch of section 4, it counts only the tokens
# of completions with `A ≠ 0` (on the others `w` has no effect), so the all-correct groups that
# become common as accuracy rises do not dilute it. It is highest over the first ten steps, when
# the student is least sure, drops when the synced teacher is first refreshed from the student
# (after step 10), and keeps falling as the policy sharpens; it is still logged after step 50, when
# `λ = 0` gives it no effect. `teacher_kl` shrinks as the student
# becomes surer of the digits the answer-aware teacher already knew.
#
# Notebook 07 turns to SDPG, which keeps the teacher's full-vocabulary distribution as a separate
# distillation term, but only on rollouts the verifier endorses.
