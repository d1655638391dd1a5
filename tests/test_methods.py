"""The self-distillation methods: RLSD weights, SDPG schedule and gate, teacher alignment, each method end to end."""

import copy

import pytest
import torch

import rlsd_min
from rlsd_min import rlsd_advantages, sdpg_beta, teacher_logprobs, token_logprobs
from rlsd_min.config import train_config
from rlsd_min.methods import METHODS
from rlsd_min.objective import template_loss
from rlsd_min.batch import StepBatch
from rlsd_min.model import load
from rlsd_min.sampling import sample_group
from rlsd_min.tasks import Problem
from rlsd_min.teacher import Teacher, teacher_prompt


def _random_case(seed, N=16, T=9):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(N, generator=g)
    A[::5] = 0.0
    return A, torch.randn(N, T, generator=g) - 1, torch.randn(N, T, generator=g) - 1


# --- RLSD ---------------------------------------------------------------------------------

def test_rlsd_advantages_equal_the_formula_in_float64():
    A, q, p = _random_case(0)
    lam, eps = 0.37, 0.2
    w = torch.exp(torch.sign(A.double())[:, None] * (q.double() - p.double()))
    expected = A.double()[:, None] * ((1 - lam) + lam * w.clamp(1 - eps, 1 + eps))
    torch.testing.assert_close(rlsd_advantages(A, q, p, lam, eps).double(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("seed", range(5))
def test_rlsd_never_flips_the_sign_and_stays_within_the_clip(seed):
    A, q, p = _random_case(seed)
    lam, eps = float(torch.rand(1)), 0.2
    ahat = rlsd_advantages(A, q, p, lam, eps)
    nz = A != 0
    assert (torch.sign(ahat[nz]) == torch.sign(A[nz])[:, None]).all()
    assert (ahat[~nz] == 0).all()                                     # A = 0 gives 0
    factor = ahat[nz] / A[nz][:, None]
    assert (factor >= (1 - lam) + lam * (1 - eps) - 1e-6).all()
    assert (factor <= (1 - lam) + lam * (1 + eps) + 1e-6).all()
    torch.testing.assert_close(rlsd_advantages(A, q, p, 0.0, eps), A[:, None].expand_as(q))  # lam = 0 is GRPO


def test_rlsd_clips_at_one_plus_minus_eps():
    A = torch.tensor([1.0, 1.0, -1.0, -1.0])
    p = torch.zeros(4, 1)
    q = torch.tensor([[5.0], [-5.0], [5.0], [-5.0]])                 # w = e^{+-5}: far outside
    ahat = rlsd_advantages(A, q, p, lam=1.0, eps_w=0.2)[:, 0]
    torch.testing.assert_close(ahat, torch.tensor([1.2, 0.8, -0.8, -1.2]))


def test_rlsd_bad_input():
    A, q, p = _random_case(1)
    with pytest.raises(ValueError, match="1.5"):
        rlsd_advantages(A, q, p, lam=1.5, eps_w=0.2)
    for eps in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match=str(eps)):
            rlsd_advantages(A, q, p, lam=0.5, eps_w=eps)


# --- SDPG ---------------------------------------------------------------------------------

def test_sdpg_beta_schedule():
    # warm-up, plateau, decay with separate windows: T=100, T_warm=10, T_decay=20
    assert sdpg_beta(0, 100, 2.0, 10, 20) == 0.0
    assert sdpg_beta(5, 100, 2.0, 10, 20) == pytest.approx(1.0)        # 2 * 5/10
    assert sdpg_beta(10, 100, 2.0, 10, 20) == pytest.approx(2.0)
    assert sdpg_beta(50, 100, 2.0, 10, 20) == pytest.approx(2.0)       # plateau
    assert sdpg_beta(90, 100, 2.0, 10, 20) == pytest.approx(1.0)       # 2 * 10/20
    assert sdpg_beta(100, 100, 2.0, 10, 20) == 0.0
    assert sdpg_beta(120, 100, 2.0, 10, 20) == 0.0                     # never negative
    # the paper's overlapping windows: T=400, T_warm=50, T_decay=350 -> triangle peaking at k=50
    vals = [sdpg_beta(k, 400, 1e-3, 50, 350) for k in range(401)]
    assert max(range(401), key=vals.__getitem__) == 50
    assert vals[50] == pytest.approx(1e-3)
    assert vals[25] == pytest.approx(0.5e-3)
    assert vals[225] == pytest.approx(1e-3 * 175 / 350)
    # overlapping windows that never reach the plateau: the product of both ramps
    assert sdpg_beta(30, 60, 1.0, 40, 40) == pytest.approx((30 / 40) * (30 / 40))


def test_sdpg_windows_are_the_papers_fractions_of_the_run():
    from rlsd_min.config import train_config
    from rlsd_min.methods import sdpg_windows

    assert sdpg_windows(train_config("cpu", method="sdpg", steps=400)) == (50, 350)  # the paper's run
    assert sdpg_windows(train_config("cpu", method="sdpg", steps=80)) == (10, 70)
    assert sdpg_windows(train_config("cpu", method="sdpg", steps=80, sdpg_warm_frac=0.5)) == (40, 70)
    assert sdpg_windows(train_config("ci", method="sdpg")) == (1, 4)       # 4 steps: still a warm-up from beta = 0
    assert sdpg_windows(train_config("ci", method="sdpg", sdpg_warm_frac=0.0)) == (0, 4)   # 0 = no window


def _fake_batch(N=8, T=5, V=7, G=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (N, T), generator=g)
    mask = torch.ones(N, T, dtype=torch.long)
    mask[1, 3:] = 0
    rollout = rlsd_min.sampling.Rollout(torch.ones(N, 2, dtype=torch.long), torch.ones(N, 2, dtype=torch.long),
                                        ids, mask, [""] * N, G)
    rewards = torch.tensor([1.0, 0, 0, 1, 0, 0, 0, 1])[:N]
    adv = rlsd_min.group_advantages(rewards, G)
    student = torch.randn(N, T, V, generator=g).requires_grad_()
    teacher = torch.randn(N, T, V, generator=g)
    logp = torch.log_softmax(student, -1).gather(-1, ids[..., None]).squeeze(-1)
    t_logp = torch.log_softmax(teacher, -1).gather(-1, ids[..., None]).squeeze(-1)
    batch = StepBatch(rollout, rewards, adv, logp.detach(), None, t_logp, teacher)
    return student, logp, batch


def test_sdpg_gate_zeroes_the_distillation_term_on_non_positive_advantages():
    cfg = train_config("ci", method="sdpg", kl_coef=0.0, sdpg_schedule=False, distill_coef=1.0)
    student, logp, batch = _fake_batch()
    # only the distillation term: zero advantages for the outcome part
    batch.advantages = torch.tensor([1.0, -1.0, -1.0, 1.0, 0.0, 0.0, 0.0, 0.0])
    loss, metrics = METHODS["sdpg"].loss_of_logits(logp, student, batch, cfg, step=0)
    loss.backward()
    grad = student.grad.abs().sum((1, 2))
    # rows 4-7 have A = 0: no outcome gradient, and gated out of the distillation: no gradient at all
    assert (grad[4:] == 0).all()
    # rows 1-2 (A < 0) get exactly the outcome-term gradient, nothing from the distillation term
    outcome_only = torch.autograd.grad(rlsd_min.objective.aggregate(
        -batch.advantages[:, None] * torch.log_softmax(student, -1).gather(-1, batch.rollout.completion_ids[..., None])[..., 0],
        batch.rollout.completion_mask, cfg.loss_agg, 4), student)[0]
    torch.testing.assert_close(student.grad[1:3], outcome_only[1:3])
    assert not torch.allclose(student.grad[[0, 3]], outcome_only[[0, 3]])
    assert metrics["gate_frac"] == pytest.approx(0.25)
    # compare with an explicit computation of the gated term
    student2 = student.detach().clone().requires_grad_()
    d = rlsd_min.full_reverse_kl(student2, batch.teacher_logits)
    gate = (batch.advantages > 0).float()[:, None]
    expected = rlsd_min.objective.aggregate(d * gate, batch.rollout.completion_mask, cfg.loss_agg, 4)
    _, m2 = template_loss(logp.detach(), batch, cfg, distill=d, gate=gate[:, 0], beta=1.0)
    assert m2["distill_loss"] == pytest.approx(expected.item())  # the gated term, as it enters the loss
    assert loss.item() == pytest.approx(
        expected.item() + rlsd_min.objective.aggregate(
            -batch.advantages[:, None] * logp.detach(), batch.rollout.completion_mask, cfg.loss_agg, 4).item(),
        rel=1e-5)


# --- teacher ------------------------------------------------------------------------------

def test_teacher_with_the_student_prompt_gives_exactly_the_student_logprobs(base):
    model, tok = base
    prompts = ["123+045=", "7+8=", "999+001="]                        # different lengths: padding matters
    torch.manual_seed(0)
    rollout = sample_group(model, tok, prompts, 3, 40)
    student, _ = token_logprobs(model, rollout)
    teacher = teacher_logprobs(model, tok, prompts, rollout)
    mask = rollout.completion_mask.bool()
    assert torch.equal(teacher[mask], student.detach()[mask])
    assert not teacher.requires_grad


def test_teacher_is_aligned_with_a_separate_forward_pass(base):
    """Column t of the teacher's log-probs scores completion token t under the teacher prompt."""
    model, tok = base
    problems = [Problem("add", 123, 45, 3), Problem("add", 999, 999, 3)]
    torch.manual_seed(1)
    rollout = sample_group(model, tok, [p.prompt for p in problems], 2, 40)
    t_prompts = [teacher_prompt(p.prompt, p.context("answer")) for p in problems]
    got = teacher_logprobs(model, tok, t_prompts, rollout)
    for row in range(4):
        n = int(rollout.completion_mask[row].sum())
        ids = tok(t_prompts[row // 2]).input_ids + rollout.completion_ids[row, :n].tolist()
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0].double()
        P = len(ids) - n
        ref = torch.log_softmax(logits[P - 1:-1], -1).gather(-1, torch.tensor(ids[P:])[:, None])[:, 0]
        torch.testing.assert_close(got[row, :n].double(), ref, rtol=1e-4, atol=1e-4)


def test_teacher_modes(base):
    model, _ = base
    policy = copy.deepcopy(model)
    live, frozen = Teacher(policy, "live"), Teacher(policy, "frozen")
    synced, ema = Teacher(policy, "synced", sync_every=2), Teacher(policy, "ema", ema_rate=0.5)
    w0 = next(policy.parameters()).detach().clone()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(1.0)
    for t in (live, frozen, synced, ema):
        t.update(policy, steps_done=1)
    first = lambda t: next(t.model.parameters())
    assert live.model is policy
    assert torch.equal(first(frozen), w0)
    assert torch.equal(first(synced), w0)                              # not yet: 1 % 2 != 0
    torch.testing.assert_close(first(ema), w0 + 0.5)
    synced.update(policy, steps_done=2)
    assert torch.equal(first(synced), w0 + 1.0)
    with pytest.raises(ValueError, match="'warm'"):
        Teacher(policy, "warm")


# --- every method end to end ------------------------------------------------------------------

@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_trains_on_the_ci_profile_and_changes_the_parameters(method, tmp_path, base):
    cfg = train_config("ci", method=method, steps=2, eval_every=2, checkpoint_every=2)
    history = rlsd_min.train(cfg, tmp_path / method, progress=False)
    trained, _ = load(tmp_path / method / "checkpoint")
    start = dict(base[0].named_parameters())
    changed = sum(not torch.equal(p, start[n]) for n, p in trained.named_parameters())
    assert changed > 0
    assert len(history) == 3 and "eval_acc" in history[-1]
    expected = {"opsd": {"teacher_kl", "distill_loss"}, "grpo_opsd": {"teacher_kl", "distill_loss", "beta"},
                "rlsd": {"lam", "w_clip_frac", "teacher_kl"}, "sdpg": {"gate_frac", "beta", "kl_ref"},
                "grpo": {"clip_frac", "frac_zero_std"}}[method]
    assert expected <= set(history[-1])


@pytest.mark.parametrize("overrides, message", [
    (dict(method="nope"), "'nope'"),
    (dict(method="opsd", divergence="sideways"), "'sideways'"),
    (dict(method="rlsd", rlsd_eps_w=1.0), "rlsd_eps_w"),
    (dict(method="rlsd", rlsd_lam=-0.1), "-0.1"),
    (dict(method="grpo", teacher_mode="frozen"), "'grpo' does not use teacher_mode"),
    (dict(method="rlsd", distill_coef=0.5), "'rlsd' does not use distill_coef"),
    (dict(method="grpo_opsd", divergence="sampled"), "cannot use divergence='sampled'"),
    (dict(method="opsd", distill_coef=float("nan")), "distill_coef must be a finite number, got nan"),
    (dict(method="sdpg", kl_coef=float("inf")), "kl_coef must be a finite number, got inf"),
    (dict(method="grpo", steps=2.5), "steps must be of type int, got 2.5"),
    (dict(method="grpo", task="split", distill_floor=True), "distill_floor=True needs"),
    (dict(method="rlsd", teacher_mode="warm"), "'warm'"),
    (dict(method="sdpg", divergence="sampled"), "cannot use divergence='sampled'"),
    (dict(method="sdpg", sdpg_warm_frac=-0.1), "sdpg_warm_frac must be in \\[0, 1\\], got -0.1"),
    (dict(method="sdpg", sdpg_decay_frac=1.5), "sdpg_decay_frac must be in \\[0, 1\\], got 1.5"),
    (dict(method="rlsd", privileged_template="{prompt} only"), "{context}"),
])
def test_bad_method_settings_fail_before_training(overrides, message):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        train_config("ci", **overrides)


def test_score_completions_is_teacher_logprobs_on_given_ids(base):
    """teacher_logprobs = encode the prompts, then score_completions: the same numbers from ids."""
    from rlsd_min.sampling import encode_prompts
    from rlsd_min.teacher import score_completions

    model, tok = base
    prompts = ["168|123+045=", "15|7+8="]
    torch.manual_seed(2)
    rollout = sample_group(model, tok, ["123+045=", "7+8="], 2, 40)
    ids, mask = encode_prompts(tok, prompts, "cpu")
    got_logp, got_logits = score_completions(model, ids, mask, rollout, return_logits=True)
    assert torch.equal(got_logp, teacher_logprobs(model, tok, prompts, rollout))
    assert got_logits.shape == (*rollout.completion_ids.shape, len(tok))
    with pytest.raises(ValueError, match="teacher prompts x group size"):
        score_completions(model, ids[:1], mask[:1], rollout)


def test_score_rollout_is_collect_after_the_sampling(base, splits):
    """collect = sample_group, then score_rollout: the same batch from the same completions."""
    from rlsd_min.step import collect, make_teacher, score_rollout

    model, tok = base
    cfg = rlsd_min.train_config("ci", method="sdpg")
    problems = splits["train"][:2]
    teacher = make_teacher(model, cfg)
    torch.manual_seed(3)
    batch = collect(model, tok, problems, cfg, ref_model=model, teacher=teacher)
    again = score_rollout(model, tok, problems, batch.rollout, cfg, ref_model=model, teacher=teacher)
    for name in ("rewards", "advantages", "ref_logp", "teacher_logp", "teacher_logits"):
        assert torch.equal(getattr(again, name), getattr(batch, name)), name
