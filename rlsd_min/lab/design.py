"""What the verification runs: its methods, tasks, seeds, step budgets and sensitivity variants.

Torch-free, so the command line takes its defaults from here and checks a name in well under a
second. Plain `verify` is every method on `mul7` (the task GRPO does not saturate) with 5 seeds;
the committed results/five_seeds add four variants with 3 seeds each, one per knob:

    python -m rlsd_min verify --profile cpu --variants rlsd_epsw0.9,rlsd_lamconst,sdpg_beta1.0,opsd_live \\
        --variant-seeds 3 --jobs 2 --out results/five_seeds

The final experiment (`FINAL`, `verify --final`), the committed results/, adds seeds, the
baselines that isolate the teacher, the positive controls and the teacher contexts. It evaluates
4 samples per problem (`FINAL_SETS`; the 5-seed runs took 1), so the two are different experiments
and each has its folder:

    python -m rlsd_min verify --profile cpu --final --list            # the plan, run counts, projected time
    python -m rlsd_min verify --profile cpu --final --jobs 2          # -> results/, resumable
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
    "opsd_steps400": ("opsd", dict(steps=400)),
    "sdpg_nodistill": ("sdpg", dict(distill_coef=0.0)),
    "rlsd_solution": ("rlsd", dict(teacher_context="solution")),
    "rlsd_solution_lamconst": ("rlsd", dict(teacher_context="solution", rlsd_lam_steps=10**12)),
    "sdpg_answer": ("sdpg", dict(teacher_context="answer")),
    "grpo_opsd_sibling": ("grpo_opsd", dict(teacher_context="sibling")),
    "grpo_opsd_other": ("grpo_opsd", dict(teacher_context="other_solution")),   # its default context: solution
    "rlsd_sibling": ("rlsd", dict(teacher_context="sibling")),
    "rlsd_other": ("rlsd", dict(teacher_context="other_answer")),               # its default context: answer
}
"""Runs of a method with some settings changed, each against its method at the defaults (RLSD
eps_w 0.2 with lam 0.5 decaying over 50 steps, the answer as context; SDPG beta_base 0.1, the
solution as context; OPSD's frozen teacher, 200 steps on mul7):

- sensitivity of each knob: `rlsd_eps*`, `rlsd_lamconst*`, `sdpg_beta*`, `opsd_<mode>`;
  `rlsd_lamconst` keeps lam at 0.5 for the whole run: lam decays over 10^12 steps, so it moves
  by less than 1e-9 within any run here (below float32 resolution) and no new setting is needed;
  `opsd_steps400` runs OPSD twice as long, for its late decline;
- the teacher's term off, all else equal: `sdpg_nodistill` is SDPG with beta_base 0 (REINFORCE,
  group-token-mean and the reference KL as in SDPG, the distillation term times 0); RLSD with
  lam = 0 is GRPO step for step (tests/test_verify.py trains both), so GRPO serves as RLSD's and
  GRPO+OPSD's;
- positive controls, a teacher that sees the full worked solution: `rlsd_solution` (with lam
  decaying as RLSD's) and `rlsd_solution_lamconst` (lam held at 0.5); SDPG's default teacher
  already sees the solution, so `sdpg_answer` is its answer-only counterpart;
- the contexts of the 'privilege or context' question: `*_sibling` (a successful rollout of the
  row's own group) and `*_other` (another problem's worked example), their teacher_context values
  CONTEXT_ARMS."""
CONTEXT_ARMS = ("sibling", "other_answer", "other_solution")
"""the teacher_context values of the context arms (rlsd_min.teacher.CONTEXT_KINDS has them all)"""


VARIANT_TASKS = ("mul7",)
"""the tasks the variants run on (those of the experiment's tasks that are listed here)"""
COMMITTED_VARIANTS = ("rlsd_epsw0.9", "rlsd_lamconst", "sdpg_beta1.0", "opsd_live")
"""the variants of the committed results/five_seeds, 3 seeds each: one alternative per knob (RLSD's eps_w,
its lam schedule, SDPG's beta_base, OPSD's teacher mode), the one that moves it furthest from the
default, so that a knob that does nothing at this scale shows as nothing; the other six fit a
longer budget (`--variants all`)"""
COMMITTED_VARIANT_SEEDS = 3
"""seeds of each variant in the committed results/five_seeds (`--variant-seeds 3`)"""

FINAL = {
    **{m: 20 for m in VERIFY_METHODS}, "opsd": 5, "sdpg_nodistill": 20,
    **{v: 5 for v in ("opsd_live", "opsd_steps400", "rlsd_epsw0.9", "rlsd_lamconst", "sdpg_beta1.0",
                      "rlsd_solution", "rlsd_solution_lamconst", "sdpg_answer")},
    **{v: 10 for v, (_, sets) in VARIANTS.items() if sets.get("teacher_context") in CONTEXT_ARMS},
}
"""The final experiment on mul7: {run label: seeds 0..n-1}. Every label shares seed indices with
its method and with GRPO, so each comparison is paired over the seeds both have. 20 seeds for the
claims about GRPO, RLSD, SDPG, SDPG without distillation and GRPO+OPSD (paired MDE about 1.0 sd
of the per-seed difference at the family's strictest Holm level); 5 for OPSD and for 8 of the
variants (one sensitivity setting per knob, OPSD's live teacher and 400 steps, the positive
controls); 10 for each context arm. Its runs are ordered seed-major
(rlsd_min.lab.results.plan), so a part of it holds whole paired seeds."""


FINAL_SETS = {"eval_samples": 4}
"""TrainConfig settings of every run of the final experiment: 4 sampled completions of each of
mul7's validation problems (the profile's eval_problems: cpu 256) at each evaluation. One evaluation of a trained GRPO checkpoint
under 12 sampling seeds has sd 0.017 with 1 sample and 0.011 with 4 (`train --method grpo --task
mul7 --set steps=200 --out runs/g`, then `eval --ckpt runs/g --split validation --samples 1
--seeds 12`, and `--samples 4`), against 0.016-0.022 between a run's evaluations over its last 50
steps: with one sample, the evaluation's own noise is most of what moves the endpoint within a
run. (The committed 5-seed results/five_seeds took 1.)"""


def final_plan() -> tuple[tuple, tuple, dict]:
    """(methods, variants, {label: seeds}) of FINAL."""
    methods = tuple(m for m in VERIFY_METHODS if m in FINAL)
    return methods, tuple(v for v in FINAL if v not in methods), dict(FINAL)
