"""What the verification runs: its methods, tasks, seeds, step budgets and sensitivity variants.

Torch-free, so the command line takes its defaults from here and checks a name in well under a
second. Plain `verify` is every method on `mul7` (the task GRPO does not saturate) with 5 seeds;
the committed results/ add four variants with 3 seeds each, one per knob:

    python -m rlsd_min verify --profile cpu --variants rlsd_epsw0.9,rlsd_lamconst,sdpg_beta1.0,opsd_live \\
        --variant-seeds 3 --jobs 2
"""

from __future__ import annotations

from ..methods import METHODS

VERIFY_METHODS = tuple(METHODS)
"""every method of rlsd_min.methods.METHODS: grpo, opsd, grpo_opsd, rlsd, sdpg"""
VERIFY_TASKS = ("mul7",)
"""the task of the committed results/: on arith and split GRPO ends near 0.9 within 200 steps,
where the methods' differences (0.001-0.013 in the first round's 3-seed runs) sit inside the seed
spread; mul7 starts at 0.34 and GRPO is still climbing at step 200"""
VERIFY_SEEDS = 5
"""seeds per method (0..4): the least that gives a bootstrap interval and a Welch test some power"""
PLANS = {
    "ci": {"arith": dict(steps=4, probe_problems=8), "split": dict(steps=4, probe_problems=8),
           "mul7": dict(steps=4, probe_problems=8)},
    "cpu": {"arith": dict(steps=200, probe_problems=128), "split": dict(steps=300, probe_problems=128),
            "mul7": dict(steps=200, probe_problems=64)},
    "gpu": {"arith": dict(steps=400, probe_problems=256), "split": dict(steps=600, probe_problems=256),
            "mul7": dict(steps=400, probe_problems=256)},
}
"""TrainConfig overrides of each task, on top of the profile: twice (arith, mul7) and three times
(split) the demo's 100 steps on the cpu profile. mul7 probes 64 prompts: its probes cost more
(70-token completions)."""
VARIANTS = {
    "rlsd_epsw0.5": ("rlsd", dict(rlsd_eps_w=0.5)),
    "rlsd_epsw0.9": ("rlsd", dict(rlsd_eps_w=0.9)),
    "rlsd_lamconst": ("rlsd", dict(rlsd_lam_steps=10**12)),
    "rlsd_lamconst_epsw0.9": ("rlsd", dict(rlsd_lam_steps=10**12, rlsd_eps_w=0.9)),
    "sdpg_beta0.03": ("sdpg", dict(distill_coef=0.03)),
    "sdpg_beta0.3": ("sdpg", dict(distill_coef=0.3)),
    "sdpg_beta1.0": ("sdpg", dict(distill_coef=1.0)),
    "opsd_live": ("opsd", dict(teacher_mode="live")),
    "opsd_synced": ("opsd", dict(teacher_mode="synced")),
    "opsd_ema": ("opsd", dict(teacher_mode="ema")),
}
"""The sensitivity runs of each method's knobs, each against its method at the defaults (RLSD
eps_w 0.2 with lam 0.5 decaying over 50 steps; SDPG beta_base 0.1; OPSD's frozen teacher).
`rlsd_lamconst` keeps lam at 0.5 for the whole run: lam decays over 10^12 steps, so it moves by
less than 1e-9 within any run here (below float32 resolution) and no new setting is needed."""
VARIANT_TASKS = ("mul7",)
"""the tasks the variants run on (those of the experiment's tasks that are listed here)"""
COMMITTED_VARIANTS = ("rlsd_epsw0.9", "rlsd_lamconst", "sdpg_beta1.0", "opsd_live")
"""the variants of the committed results/, 3 seeds each: one alternative per knob (RLSD's eps_w,
its lam schedule, SDPG's beta_base, OPSD's teacher mode), the one that moves it furthest from the
default, so that a knob that does nothing at this scale shows as nothing; the other six fit a
longer budget (`--variants all`)"""
COMMITTED_VARIANT_SEEDS = 3
"""seeds of each variant in the committed results/ (`--variant-seeds 3`)"""
