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
# # 03 · The reference-policy KL: k1, k2, k3
#
# GRPO and SDPG can add a penalty `α · KL(π_θ ‖ π_ref)` that keeps the policy near the frozen
# starting policy π_ref (the warm start). The KL over whole completions is intractable, so the
# loss uses a per-token estimate on the token `y_t` that π_θ actually sampled. With
# `l = log π_θ(y_t) − log π_ref(y_t)` (Schulman, *Approximating KL divergence*, 2020):
#
# | name | formula | as a KL estimate | SDPG's name |
# |---|---|---|---|
# | k1 | `l` | unbiased, can be negative, high variance | |
# | k2 | `l² / 2` | biased, low variance when π_θ ≈ π_ref | `urkl` |
# | k3 | `exp(−l) − 1 + l` | unbiased, always ≥ 0 (GRPO, TRL) | `ufkl` (+1) |
#
# All three are `rlsd_min.kl_penalty(logp, ref_logp, estimator)`. This notebook checks their bias
# and variance exactly on a small categorical distribution, then by Monte Carlo, shows which
# gradient each one gives as a loss, and ends with GRPO runs using the penalty.
#
# **What it trains:** two GRPO runs with a k3 reference KL (`kl_coef` 0.05 and 1.0), 100 steps each on the `cpu` profile.
#
# <!-- generated: notebook-time -->
# **Time.** Its stored run, on the `cpu` profile: 66 s (the cells' times recorded in this notebook; the longest cell 64 s). A notebook run again reads its finished run folders back and trains nothing.
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
from rlsd_min.lab.plots import plot_eval_curves

datasets.disable_progress_bars()
torch.manual_seed(0)
ALPHAS = (0.05, 1.0)  # two GRPO runs of section 4, sized by the profile
CFGS = {alpha: rlsd_min.train_config(PROFILE, method="grpo", kl_coef=alpha, kl_estimator="k3") for alpha in ALPHAS}
cfg = CFGS[ALPHAS[0]]
print(f"2 GRPO runs (kl_coef {ALPHAS}): {cfg.steps} steps x {cfg.prompts_per_step} prompts x G={cfg.group_size}")

# %% [markdown]
# ## 1. Exact bias and variance on a small categorical
#
# Take a 5-token vocabulary, a policy `p` = π_θ and two references `r` = π_ref: one **near** `p`,
# one **far** from it. If the token `a ~ p` is sampled, the estimator takes the value `k(a)`;
# enumerating the vocabulary gives its exact mean `Σ_a p(a) k(a)` and variance. The exact KL is
# `Σ_a p(a) log(p(a) / r(a))`. First the three formulas by hand, against the package:

# %%
# NBVAL_CHECK_OUTPUT
p = torch.tensor([0.50, 0.20, 0.15, 0.10, 0.05], dtype=torch.float64)
refs = {"near": torch.tensor([0.45, 0.22, 0.15, 0.10, 0.08], dtype=torch.float64),
        "far": torch.tensor([0.10, 0.10, 0.20, 0.30, 0.30], dtype=torch.float64)}
by_hand = {"k1": lambda l: l, "k2": lambda l: l * l / 2, "k3": lambda l: math.exp(-l) - 1 + l}
for name, r in refs.items():
    l = [math.log(pa) - math.log(ra) for pa, ra in zip(p.tolist(), r.tolist())]
    for est, f in by_hand.items():
        pkg = rlsd_min.kl_penalty(p.log(), r.log(), est)          # (V,) value if token a is sampled
        assert torch.allclose(pkg, torch.tensor([f(x) for x in l], dtype=torch.float64), atol=1e-12)
    print(f"{name:5s} l(a) = {[round(x, 3) for x in l]}")
print("k1, k2, k3 by hand == rlsd_min.kl_penalty")

# %%
# NBVAL_CHECK_OUTPUT
print(f"{'pair':5s} {'KL':>7s} {'est':>4s} {'E[k]':>8s} {'bias':>8s} {'std':>7s} {'min k(a)':>9s}")
exact = {}
for name, r in refs.items():
    kl = (p * (p.log() - r.log())).sum().item()
    for est in ("k1", "k2", "k3"):
        k = rlsd_min.kl_penalty(p.log(), r.log(), est)                # (V,)
        mean = (p * k).sum().item()
        std = math.sqrt((p * k**2).sum().item() - mean**2)
        exact[name, est] = (kl, mean, std)
        bias = round(mean - kl, 4) + 0.0                                  # + 0.0: print -0.0 as 0.0
        print(f"{name:5s} {kl:7.4f} {est:>4s} {mean:8.4f} {bias:+8.4f} {std:7.4f} {k.min().item():9.4f}")
    assert abs(exact[name, "k1"][1] - kl) < 1e-12 and abs(exact[name, "k3"][1] - kl) < 1e-12  # unbiased
    assert rlsd_min.kl_penalty(p.log(), r.log(), "k3").min() >= 0                               # k3 >= 0
    assert exact[name, "k3"][2] < exact[name, "k1"][2]                                          # and less noisy

# %% [markdown]
# Read the table: k1 and k3 have **zero bias** (exactly: `E_p[r/p] = 1` makes the `exp(−l) − 1`
# part of k3 average to zero); k1 takes negative values on tokens where `p < r`, k3 never does,
# and k3's standard deviation is smaller than k1's (five times smaller when `r` is near `p`). k2 is
# biased: by 9 % when `r` is near `p`, by 20 % when it is far.
#
# Monte Carlo agrees: 200,000 tokens sampled from `p`, each estimator averaged; k1 and k3 land on
# the exact KL within a few standard errors.

# %%
gen = torch.Generator().manual_seed(0)
n = 200_000
tokens = torch.multinomial(p, n, replacement=True, generator=gen)         # (n,) a ~ p
for name, r in refs.items():
    for est in ("k1", "k2", "k3"):
        k = rlsd_min.kl_penalty(p.log()[tokens], r.log()[tokens], est)    # (n,)
        kl, mean, std = exact[name, est]
        se = k.std().item() / math.sqrt(n)
        print(f"{name:5s} {est}: MC mean {k.mean().item():.4f} +- {se:.4f} (exact {mean:.4f}, KL {kl:.4f}), MC std {k.std().item():.4f}")
        assert abs(k.mean().item() - mean) < 5 * se
        if est in ("k1", "k3"):
            assert abs(k.mean().item() - kl) < 5 * se


# %% [markdown]
# ## 2. As a loss: which gradient does each estimator give?
#
# In training, the tokens were sampled and are held fixed; only `log π_θ(y_t)` carries gradient
# (`ref_logp` is detached). The expected gradient of the loss is then
# `Σ_a sg[p(a)] ∇ k(a)`, and it is *not* the gradient of what the estimator estimates:
#
# - k1: `E_p[∇ log p] = 0`: on-policy, the k1 penalty has **no gradient** in expectation;
# - k2: `E_p[l ∇ log p] = ∇ KL(π_θ ‖ π_ref)`, the reverse KL ("unnormalized reverse KL", `urkl`);
# - k3: `E_p[(1 − r/p) ∇ log p] = ∇ KL(π_ref ‖ π_θ)`, the **forward** KL (`ufkl`).
#
# That is where SDPG's names come from. Checked exactly with autograd, the logits of `p` as the
# parameters:

# %%
# NBVAL_CHECK_OUTPUT
def rounded(t):  # 4 decimals, and -0.0 printed as 0.0
    return [round(x, 4) + 0.0 for x in t.tolist()]

def grad_of(fn):
    z = p.log().clone().requires_grad_()                        # logits of pi_theta
    fn(z).backward()
    return z.grad

for name, r in refs.items():
    reverse = grad_of(lambda z: (z.softmax(-1) * (z.log_softmax(-1) - r.log())).sum())   # grad KL(p || r)
    forward = grad_of(lambda z: (r * (r.log() - z.log_softmax(-1))).sum())                # grad KL(r || p)
    g = {est: grad_of(lambda z: (p * rlsd_min.kl_penalty(z.log_softmax(-1), r.log(), est)).sum())
         for est in ("k1", "k2", "k3")}
    print(f"{name:4s} grad k1 {rounded(g['k1'])}")
    print(f"{name:4s} grad k2 {rounded(g['k2'])}  grad KL(p||r) {rounded(reverse)}")
    print(f"{name:4s} grad k3 {rounded(g['k3'])}  grad KL(r||p) {rounded(forward)}")
    assert torch.allclose(g["k1"], torch.zeros(5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(g["k2"], reverse, atol=1e-12)
    assert torch.allclose(g["k3"], forward, atol=1e-12)

# %% [markdown]
# Both directions pull π_θ toward π_ref; the forward one (k3, GRPO's choice) penalises π_θ for
# putting too *little* mass where π_ref has mass, so it resists the collapse of the distribution
# that RL tends to cause.

# %% [markdown]
# **Exercise 3: the k3 penalty, as a loss.** Write `my_k3(logp, ref_logp)`: per token
# `k3 = exp(−l) − 1 + l` with `l = log π_θ(y_t) − log π_ref(y_t)`, the shape of `logp`. π_ref is a frozen
# model: its log-probs are a constant of the loss, so no gradient may reach `ref_logp` (even when the
# tensor you are given requires one). The next cell compares the values and the gradients with respect
# to both inputs with those of `rlsd_min.kl_penalty(logp, ref_logp, "k3")`, on fresh random log-probs.

# %% tags=["exercise"]
import os

import torch


def my_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """(N, T) log-probs of the sampled tokens under pi_theta and pi_ref -> (N, T) k3."""
    ...  # YOUR CODE HERE
    raise NotImplementedError("exercise 3: write the body of my_k3")


if os.environ.get("RLSD_SOLUTIONS") == "1":  # CI runs the course with the solutions in (notebooks/solutions/)
    from solutions.nb03 import my_k3

# %% tags=["check"]
import torch

import rlsd_min
from rlsd_min.lab.exercises import compare, fresh_generator, gradient_of


def check_exercise_3():  # a function: the check's variables stay out of the notebook's
    def package_k3(logp, ref_logp):
        return rlsd_min.kl_penalty(logp, ref_logp, "k3")

    gen = fresh_generator()
    for _ in range(20):
        N, T = int(torch.randint(1, 6, (), generator=gen)), int(torch.randint(1, 10, (), generator=gen))
        logp, ref_logp = (-4 * torch.rand(N, T, generator=gen, dtype=torch.float64) for _ in range(2))
        compare("my_k3", my_k3, package_k3, logp, ref_logp, atol=1e-10)
        for wrt, name in enumerate(("logp", "ref_logp")):
            compare(f"the gradient of my_k3(...).sum() with respect to {name}", gradient_of(my_k3, wrt),
                    gradient_of(package_k3, wrt), logp, ref_logp, atol=1e-10)
    print("exercise 3 solved: my_k3 == kl_penalty(..., 'k3'), values and gradients, on 20 random batches")


check_exercise_3()

# %% [markdown]
# ## 3. Where the penalty enters the loss
#
# In `rlsd_min.train`, when `kl_coef > 0`, the frozen warm start is loaded as π_ref, and each step's
# `rlsd_min.collect` scores every sampled completion under it once (`StepBatch.ref_logp`, no
# gradient; logged as the phase `time_ref_s`). The method's loss then adds
# `kl_coef · agg_t[kl_penalty(logp, ref_logp)]` (`rlsd_min.template_loss`, in `rlsd_min/objective.py`)
# and logs the aggregated estimate as `kl_ref`. At the first step π_θ = π_ref, so `kl_ref` starts at exactly 0.
#
# ## 4. GRPO with a reference KL
#
# Two runs from the same warm start, with a small and a large `kl_coef` (α), k3 estimator.
# **Expectation:** the larger α keeps `kl_ref` several times smaller, and holds accuracy closer to
# the warm start's; the small α behaves much like the plain GRPO run of notebook 02.

# %%
histories = {}
for alpha, c in CFGS.items():
    histories[f"kl_coef={alpha}"] = rlsd_min.train(c, str(RUNS / f"grpo_kl{alpha}"), progress=False)
for label, h in histories.items():
    steps = [r for r in h[1:]]
    assert all("kl_ref" in r and "time_ref_s" in r for r in steps)  # every step scores pi_ref and logs the penalty
    assert abs(steps[0]["kl_ref"]) < 1e-6  # on every profile: the first step's policy is pi_ref (exactly 0 on a CPU)
    evals = [r["eval_acc"] for r in h if "eval_acc" in r]
    print(f"{label:13s} mean kl_ref {sum(r['kl_ref'] for r in steps) / len(steps):.4f}  "
          f"first-step kl_ref {steps[0]['kl_ref']:.1e}  eval_acc {evals[0]:.3f} -> {evals[-1]:.3f}")

# %%
fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(9, 3.2), dpi=90)
for label, h in histories.items():
    ax0.plot([r["step"] for r in h[1:]], [r["kl_ref"] for r in h[1:]], label=label)
ax0.set(xlabel="RL step", ylabel="kl_ref (k3, per token)", title="distance from the warm start")
ax0.grid(alpha=0.3)
ax0.legend(fontsize=8)
plot_eval_curves(histories, ax=ax1)
fig.tight_layout()
plt.show()

# %%
mean_kl = {label: sum(r["kl_ref"] for r in h[1:]) / len(h[1:]) for label, h in histories.items()}
small, large = (f"kl_coef={a}" for a in ALPHAS)
print(f"mean kl_ref: {small} {mean_kl[small]:.4f}, {large} {mean_kl[large]:.4f}")
if PROFILE != "ci":  # 4 tiny steps (ci) barely leave the warm start
    assert mean_kl[large] < mean_kl[small], "a larger kl_coef should keep the policy closer to pi_ref"

# %% [markdown]
# On the `cpu` profile, α = 1 keeps `kl_ref` around 0.006 nats per token against about 0.02 for
# α = 0.05, and its accuracy stops near 0.74 while α = 0.05 reaches about 0.86. The penalty trades
# improvement for staying close: useful against collapse and reward hacking at scale, a brake at
# this size. RLSD's released code uses no reference KL; SDPG uses a small one (`ufkl`, i.e. k3).
