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
# # 02 · Sampling and GRPO
#
# One RL step of GRPO (Shao et al. 2024), top to bottom:
#
# 1. sample a **group** of `G` completions for each prompt from the current policy π_θ;
# 2. score each with the verifier: `R_i ∈ {0, 1}`;
# 3. turn rewards into **group-relative advantages** `A_i`;
# 4. push up the log-probability of every token of completions with `A_i > 0`, down for `A_i < 0`,
#    through PPO's clipped ratio, aggregated over tokens.
#
# Each piece is one function of `rlsd_min`; here each is computed by hand on a tiny example first
# and checked against the package. The notebook ends with a short GRPO run.
#
# **What it trains:** one GRPO run from the shipped warm start (`train_config(PROFILE, method="grpo")`: 100 steps on the `cpu` profile), the run notebooks 04, 06 and 07 read back.
#
# <!-- generated: notebook-time -->
# **Time.** Its stored run, on the `cpu` profile: 28 s (the cells' times recorded in this notebook; the longest cell 24 s). A notebook run again reads its finished run folders back and trains nothing.
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
from rlsd_min.objective import aggregate, clipped_surrogate
from rlsd_min.tasks import TASKS, load_splits, max_completion_chars, problems_of

datasets.disable_progress_bars()
ARITH = TASKS["arith"]  # the task's data folder and warm start: ARITH.data_dir, ARITH.base_checkpoint
torch.manual_seed(0)
CFG = rlsd_min.train_config(PROFILE, method="grpo")  # the run of section 5, sized by the profile
print(f"GRPO run: {CFG.steps} steps x {CFG.prompts_per_step} prompts x G={CFG.group_size}, lr {CFG.lr}, "
      f"evaluation on {CFG.eval_problems} validation problems every {CFG.eval_every} steps")

# %% [markdown]
# ## 1. Sampling a group
#
# `rlsd_min.sample_group` repeats each prompt `G` times and samples with `generate` at
# temperature 1 with `top_k=0, top_p=1`: exactly from π_θ, which the policy gradient assumes
# (`transformers` would otherwise truncate to the top 50 tokens). Rows of a group are adjacent.

# %%
model, tok = model_io.load(str(ARITH.base_checkpoint))
val = problems_of(load_splits(str(ARITH.data_dir))["validation"])
problems, G = val[:3], 8
rollout = rlsd_min.sample_group(model, tok, [q.prompt for q in problems], G, max_new_tokens=max_completion_chars("add", 3) + 4)
answers = [q.answer for q in problems for _ in range(G)]
rewards = torch.tensor([rlsd_min.verify(t, a) for t, a in zip(rollout.texts, answers)])  # (N,) N = 3 * G
adv = rlsd_min.group_advantages(rewards, G)                                              # (N,)
for i, text in enumerate(rollout.texts):
    if i % G == 0:
        print(f"--- group {i // G}: {problems[i // G].prompt} (answer {problems[i // G].answer})")
    print(f"R={rewards[i]:.0f}  A={adv[i]:+.2f}  {text!r}")
print("frac_zero_std of these groups:", round(rlsd_min.frac_zero_std(rewards, G), 3))

# %% [markdown]
# The rollout keeps the token ids in the package's layout: prompts left-padded to width `P`,
# completions right-padded to width `T` with a mask that is 1 up to and including the first
# `<eos>`. Completion token `t` of every row sits in column `P + t`.

# %%
print("prompt_ids", tuple(rollout.prompt_ids.shape), " completion_ids", tuple(rollout.completion_ids.shape))
print("row 0 completion ids :", rollout.completion_ids[0].tolist())
print("row 0 completion mask:", rollout.completion_mask[0].tolist())

# %% [markdown]
# ## 2. Group advantages
#
# $$A_i = \frac{R_i - \operatorname{mean}_{\text{group}}(R)}{\operatorname{std}_{\text{group}}(R) + \varepsilon}$$
#
# with the unbiased std (`torch.std`, as TRL). No value network: each completion is judged against
# its siblings. By hand for three groups of `G = 4`: group 0 has rewards `1 0 0 1`, mean 0.5 and
# unbiased std `sqrt(4 · 0.25 / 3) = 0.5774`, so `A = ±0.5 / 0.5774 = ±0.866`.

# %%
# NBVAL_CHECK_OUTPUT
R = torch.tensor([1., 0., 0., 1.,   1., 1., 1., 0.,   0., 0., 0., 0.])  # 3 groups of G = 4
G4, eps = 4, 1e-6
hand = []
for g in range(3):
    r = R[g * G4:(g + 1) * G4].tolist()
    mean = sum(r) / G4
    std = math.sqrt(sum((x - mean) ** 2 for x in r) / (G4 - 1))
    hand += [(x - mean) / (std + eps) for x in r]
pkg = rlsd_min.group_advantages(R, G4, scale="group", eps=eps)
print("hand   ", [round(a, 3) for a in hand])
print("package", [round(a, 3) for a in pkg.tolist()])
assert torch.allclose(pkg, torch.tensor(hand), atol=1e-6)

# %% [markdown]
# **Scale.** `scale="group"` (GRPO) divides by each group's std; `"batch"` by the std of all
# rewards of the batch; `"none"` only centres (Dr. GRPO, which argues the per-group division
# over-weights groups that are almost all right or all wrong). **Zero-std groups** get `A = 0`
# whatever the scale: the third group below carries no signal, and `frac_zero_std` counts it.

# %%
# NBVAL_CHECK_OUTPUT
centred = (R.view(-1, G4) - R.view(-1, G4).mean(1, keepdim=True)).view(-1)  # by hand: R_i - group mean
by_hand = {"group": pkg, "batch": centred / (R.std() + eps), "none": centred}
for scale in ("group", "batch", "none"):
    a = rlsd_min.group_advantages(R, G4, scale=scale, eps=eps)
    print(f"{scale:6s}", " ".join(f"{x:+.3f}" for x in a.tolist()))
    assert torch.allclose(a, by_hand[scale], atol=1e-6)
    assert torch.all(a[8:] == 0)  # the all-zero group: no signal under any scale
print("frac_zero_std:", round(rlsd_min.frac_zero_std(R, G4), 3))
assert abs(rlsd_min.frac_zero_std(R, G4) - 1 / 3) < 1e-6

# %% [markdown]
# **Exercise 1: group advantages, for a whole batch.** Write `my_group_advantages(rewards, G, scale, eps)`
# without a loop over groups: view the `(N,)` rewards as `(N / G, G)` (the `G` completions of a prompt
# are adjacent rows), centre each group on its mean, then divide by `std + eps`, where the std is each
# group's (`scale="group"`, unbiased as `torch.std`) or that of the whole batch (`"batch"`), or do not
# divide at all (`"none"`). A group whose rewards are all equal must get `A = 0`. The next cell checks
# your function against `rlsd_min.group_advantages` on fresh random rewards and says what is wrong.

# %% tags=["exercise"]
import os

import torch


def my_group_advantages(rewards: torch.Tensor, G: int, scale: str = "group", eps: float = 1e-6) -> torch.Tensor:
    """(N,) rewards, groups of G adjacent rows -> (N,) advantages A_i."""
    ...  # YOUR CODE HERE
    raise NotImplementedError("exercise 1: write the body of my_group_advantages")


if os.environ.get("RLSD_SOLUTIONS") == "1":  # CI runs the course with the solutions in (notebooks/solutions/)
    from solutions.nb02 import my_group_advantages

# %% tags=["check"]
import torch

import rlsd_min
from rlsd_min.lab.exercises import compare, fresh_generator


def check_exercise_1():  # a function: the check's variables stay out of the notebook's
    gen = fresh_generator()  # new random inputs on every run
    for _ in range(30):
        G, B = int(torch.randint(2, 9, (), generator=gen)), int(torch.randint(1, 6, (), generator=gen))
        rewards = torch.randint(0, 2, (B * G,), generator=gen).float()   # 0/1 rewards: some groups all equal
        for scale in ("group", "batch", "none"):
            compare("my_group_advantages", my_group_advantages, rlsd_min.group_advantages, rewards, G, scale=scale)
    print("exercise 1 solved: my_group_advantages == rlsd_min.group_advantages on 30 random batches, every scale")


check_exercise_1()

# %% [markdown]
# ## 3. From REINFORCE to GRPO's clipped ratio
#
# REINFORCE estimates the policy gradient as `E[(R - b) ∇ log π_θ(y|x)]`, and
# `log π_θ(y|x) = Σ_t log π_θ(y_t | x, y_<t)`, so every token of a completion shares its
# advantage. GRPO uses `A_i` as `(R - b)` and PPO's clipped surrogate per token, with the ratio
# `ρ_t = π_θ(y_t) / π_old(y_t)` against the policy that sampled:
#
# $$L_t = -\min\big(\rho_t A_i,\ \operatorname{clip}(\rho_t, 1-\varepsilon_{low}, 1+\varepsilon_{high})\,A_i\big)$$
#
# The clip only matters when one batch is used for several updates (`num_iterations > 1`). By hand,
# with `π_old = 0.5` for four tokens and ε = 0.2:
#
# | token | π_θ | ρ | A | ρA | clip(ρ)A | L = -min | gradient w.r.t. log π_θ |
# |---|---|---|---|---|---|---|---|
# | 0 | 0.70 | 1.4 | +1 | 1.4 | 1.2 | -1.2 | 0 (clipped: no further push up) |
# | 1 | 0.70 | 1.4 | -1 | -1.4 | -1.2 | 1.4 | -ρA = 1.4 (pessimistic branch keeps it) |
# | 2 | 0.30 | 0.6 | -1 | -0.6 | -0.8 | 0.8 | 0 (clipped: no further push down) |
# | 3 | 0.55 | 1.1 | +1 | 1.1 | 1.1 | -1.1 | -ρA = -1.1 |

# %%
# NBVAL_CHECK_OUTPUT
p_old, p_new, A = 0.5, [0.7, 0.7, 0.3, 0.55], [1.0, -1.0, -1.0, 1.0]
eps_clip = 0.2
hand_loss, hand_grad = [], []
for pn, a in zip(p_new, A):  # by hand, one token at a time
    rho = pn / p_old
    unclipped, clipped = rho * a, min(max(rho, 1 - eps_clip), 1 + eps_clip) * a
    hand_loss.append(-min(unclipped, clipped))
    hand_grad.append(-rho * a if unclipped <= clipped else 0.0)  # d/dlog pi of -rho*A is -rho*A

logp = torch.log(torch.tensor([p_new])).requires_grad_()     # (1, 4)
old_logp = torch.log(torch.full((1, 4), p_old))              # (1, 4)
loss, was_clipped = clipped_surrogate(logp, old_logp, torch.tensor([A]), eps_clip, eps_clip)
loss.sum().backward()
print("loss     hand", [round(x, 3) for x in hand_loss], " package", [round(x, 3) for x in loss[0].tolist()])
print("gradient hand", [round(x, 3) for x in hand_grad], " package", [round(x, 3) for x in logp.grad[0].tolist()])
print("clipped  ", was_clipped[0].tolist())
assert torch.allclose(loss[0], torch.tensor(hand_loss), atol=1e-6)
assert torch.allclose(logp.grad[0], torch.tensor(hand_grad), atol=1e-6)

# %% [markdown]
# With one update per sampled batch (`num_iterations = 1`, the default) the weights that are
# updated *are* the sampling weights: ρ = 1, the clip never acts, and the gradient of the
# surrogate is exactly REINFORCE's `-A ∇ log π_θ`:

# %%
# NBVAL_CHECK_OUTPUT
logp = torch.log(torch.tensor([p_new])).requires_grad_()
loss, was_clipped = clipped_surrogate(logp, logp.detach(), torch.tensor([A]), eps_clip, eps_clip)
loss.sum().backward()
reinforce = -torch.tensor([A])                    # gradient of -A * log pi w.r.t. log pi
print("ratio-1 gradient", logp.grad[0].tolist(), " REINFORCE", reinforce[0].tolist())
assert torch.equal(logp.grad, reinforce) and not was_clipped.any()

# %% [markdown]
# ## 4. Token aggregation
#
# The per-token losses `(N, T)` are reduced to one number by `rlsd_min.objective.aggregate`; tokens
# after `<eos>` (mask 0) never count. Three conventions (`loss_agg`, [GRPO's details](../docs/grpo.md#implementation-details)):
#
# - `token-mean`: sum over all tokens of the batch / number of tokens (DAPO, TRL's default): every
#   token weighs the same;
# - `seq-mean`: mean within each sequence, then over sequences (original GRPO): a token of a short
#   completion weighs more;
# - `group-token-mean`: sum within each group / that group's tokens, then mean over groups (SDPG).
#
# By hand for 4 sequences (2 groups of 2); the 9s sit after `<eos>` and must not count:
#
# - token-mean: (1+2+3 + 4 + 1+1 + 2+2+2) / 9 = 18 / 9 = 2.0
# - seq-mean: (2 + 4 + 1 + 2) / 4 = 2.25
# - group-token-mean: ((6 + 4) / 4 + (2 + 6) / 5) / 2 = (2.5 + 1.6) / 2 = 2.05

# %%
# NBVAL_CHECK_OUTPUT
x = torch.tensor([[1., 2., 3.], [4., 9., 9.], [1., 1., 9.], [2., 2., 2.]])  # (N=4, T=3) per-token values
mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])        # (N, T) completion mask
hand = {"token-mean": 18 / 9, "seq-mean": (2 + 4 + 1 + 2) / 4, "group-token-mean": (10 / 4 + 8 / 5) / 2}
for mode, value in hand.items():
    got = aggregate(x, mask, mode, group_size=2).item()
    print(f"{mode:17s} hand {value:.4f}  package {got:.4f}")
    assert abs(got - value) < 1e-6

# %% [markdown]
# **Exercise 2: token aggregation.** Write `my_aggregate(x, mask, mode, G)`: per-token values `x (N, T)`,
# the completion mask `(N, T)` (1 up to and including `<eos>`), groups of `G` adjacent rows, to one
# number for each of the three modes above. Tokens after `<eos>` must not count, whatever `x` holds
# there: the check puts `nan` in them (`x * mask` keeps a `nan`; `torch.where` does not). Every row has
# at least one token. The next cell compares with `rlsd_min.objective.aggregate` on fresh random inputs.

# %% tags=["exercise"]
import os

import torch


def my_aggregate(x: torch.Tensor, mask: torch.Tensor, mode: str, G: int) -> torch.Tensor:
    """(N, T) values and mask -> a 0-dim tensor: token-mean, seq-mean or group-token-mean."""
    ...  # YOUR CODE HERE
    raise NotImplementedError("exercise 2: write the body of my_aggregate")


if os.environ.get("RLSD_SOLUTIONS") == "1":  # CI runs the course with the solutions in (notebooks/solutions/)
    from solutions.nb02 import my_aggregate

# %% tags=["check"]
import torch

from rlsd_min.lab.exercises import compare, fresh_generator  # noqa: F811 (each check cell runs on its own in the tests)
from rlsd_min.objective import aggregate


def check_exercise_2():  # a function: the check's variables stay out of the notebook's
    gen = fresh_generator()
    for _ in range(30):
        G, B, T = (int(torch.randint(lo, hi, (), generator=gen)) for lo, hi in ((1, 5), (1, 5), (1, 9)))
        lengths = torch.randint(1, T + 1, (B * G,), generator=gen)                     # tokens per row, >= 1
        mask = (torch.arange(T)[None] < lengths[:, None]).long()                       # (N, T)
        x = torch.randn(B * G, T, generator=gen).masked_fill(mask == 0, float("nan"))  # junk after <eos>
        for mode in ("token-mean", "seq-mean", "group-token-mean"):
            compare(f"my_aggregate(mode={mode!r})", my_aggregate, aggregate, x, mask, mode, G)
    print("exercise 2 solved: my_aggregate == rlsd_min.objective.aggregate on 30 random batches, every mode")


check_exercise_2()

# %% [markdown]
# ## 5. A short GRPO run
#
# `rlsd_min.train` runs the whole loop from the warm start `data/base` and writes a run folder
# (config, `metrics.jsonl`, checkpoints): here `runs/course/<profile>/grpo`, the course's GRPO run,
# which notebooks 04, 06 and 07 read again instead of training GRPO once more (`train` on a finished
# run folder returns its history: run this notebook twice and the second time trains nothing). Each of its steps is the
# two halves of `rlsd_min/step.py`: `rlsd_min.collect` (sample, verify, group advantages: sections 1
# and 2) and `rlsd_min.update` (the clipped surrogate, aggregated, then backward and an optimiser
# step: sections 3 and 4). Step 0 of the history is
# the evaluation of the starting policy. On the `cpu` profile this is 100 steps of 16 prompts × 8
# completions (the time its steps took is printed below); the `ci` profile runs 4 tiny steps only to show the
# loop works.
#
# **Expectation:** held-out sampled accuracy rises above the warm start's (about 0.54 on the full
# validation set), and `frac_zero_std` rises as the model gets more prompts always right.

# %%
history = rlsd_min.train(CFG, str(RUNS / "grpo"), progress=False)  # trains, resumes, or reads a finished run
cols = ["eval_acc", "eval_acc_greedy", "reward_mean", "frac_zero_std"]  # step 0 is evaluation only
print(" step " + "".join(f"{c:>16s}" for c in cols))
for row in history:
    if "eval_acc" in row:
        print(f"{row['step']:5d} " + "".join(f"{row[c]:16.3f}" if c in row else f"{'-':>16s}" for c in cols))

# %%
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=90)
plot_eval_curves({"grpo": history}, title="held-out accuracy", ax=ax0)
ax0.axhline(history[0]["eval_acc"], color="gray", ls="--", lw=1)
steps = [r["step"] for r in history[1:]]
ax1.plot(steps, [r["reward_mean"] for r in history[1:]], label="reward_mean (training batch)")
ax1.plot(steps, [r["frac_zero_std"] for r in history[1:]], label="frac_zero_std")
ax1.set(xlabel="RL step", title="training batches")
ax1.grid(alpha=0.3)
ax1.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
start, end = history[0]["eval_acc"], last_eval(history)
print(f"held-out sampled accuracy: warm start {start:.3f} -> after {CFG.steps} GRPO steps {end:.3f}")
print(f"greedy: {history[0]['eval_acc_greedy']:.3f} -> {history[-1]['eval_acc_greedy']:.3f}; "
      f"the {CFG.steps} RL steps took {sum(r['step_time_s'] for r in history[1:]):.0f} s (evaluations not counted)")
# on every profile: one row per step after the step-0 evaluation, evaluations where eval_every says,
# and only the phases GRPO runs are timed (no reference model at kl_coef = 0, no teacher)
assert [r["step"] for r in history] == list(range(CFG.steps + 1))
assert [r["step"] for r in history if "eval_acc" in r] == sorted({0, CFG.steps, *range(CFG.eval_every, CFG.steps + 1, CFG.eval_every)})
assert all("time_sample_s" in r and "time_ref_s" not in r and "time_teacher_s" not in r for r in history[1:])
if PROFILE != "ci":  # 4 steps of 4 prompts (ci) are too few to promise anything
    assert end > start, "GRPO should improve on the warm start"

# %% [markdown]
# On the `cpu` profile (the stored outputs) sampled accuracy climbs from 0.539 to 0.871 in 100 steps,
# while greedy accuracy, already 0.707, reaches 0.969: RL mostly sharpens the distribution toward what the model
# already knows at its mode. Notebook 03 adds a penalty that keeps π_θ near the warm start;
# notebook 04 brings in the teacher.
