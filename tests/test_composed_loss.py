"""Every method's whole loss, `METHODS[m].loss_of_logits(logp, logits, batch, cfg, step)`, against an
independent float64 computation written out below from the papers' equations (GRPO, Shao et
al. 2024; OPSD, arXiv 2601.18734; RLSD, arXiv 2604.03128; SDPG, arXiv 2606.04036; the PPO
clipped surrogate; Schulman's k1/k2/k3): the loss value, its parts (the metrics) and the
gradient with respect to the student logits.

The reference uses torch only for elementary operations (log_softmax, exp, clamp, boolean
masks); it calls nothing from rlsd_min. The batch is synthetic: random logits (N, T, V)
in float64, a completion mask with padding, groups of G = 4 with mixed rewards (advantages
of both signs, and one all-equal group with A_i = 0), a reference policy (kl_coef > 0, so
the reference KL is active) and a teacher (log-probs and logits) for every method.
"""

import math

import pytest
import torch

from rlsd_min.config import TrainConfig
from rlsd_min.methods import METHODS
from rlsd_min.sampling import Rollout
from rlsd_min.batch import StepBatch

G, B, T, V = 4, 3, 6, 7
N = G * B
LENGTHS = [6, 4, 5, 2, 6, 3, 1, 5, 6, 6, 2, 4]          # completion tokens per row (T = 6: padding)
REWARDS = [1, 0, 0, 1, 0, 1, 1, 1, 1, 1, 1, 1]          # groups: mixed, mixed, all equal (A = 0)
PAD = 0
STEPS = 40                                              # SDPG: T = 40, T_warm = 0.125 T, T_decay = 0.875 T
T_WARM, T_DECAY = 5, 35
KL_COEF = 0.05
OFF_POLICY_SCALE = 0.8                                  # std of log pi_old - log pi_theta when old != current
SEED = 2                                                # a batch where the dual clip (ratio > 3, A < 0) acts


def _advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: A_i = (R_i - mean_group R) / (std_group R + eps), unbiased std (written out)."""
    out = torch.zeros(N, dtype=torch.float64)
    for b in range(B):
        r = rewards[b * G:(b + 1) * G]
        mean = r.sum() / G
        std = math.sqrt(float(((r - mean) ** 2).sum()) / (G - 1))
        out[b * G:(b + 1) * G] = 0.0 if std == 0 else (r - mean) / (std + eps)
    return out


def make_batch(seed: int, off_policy: bool):
    """(student logits (N, T, V) requiring grad, logp (N, T) from them, StepBatch)."""
    g = torch.Generator().manual_seed(seed)
    f64 = dict(generator=g, dtype=torch.float64)
    logits = (torch.randn(N, T, V, **f64) * 1.5).requires_grad_()
    # teacher and reference near the student (as they are in training), so that RLSD's
    # weights fall both inside and outside the clip and the reference KL is moderate
    teacher_logits = logits.detach() + torch.randn(N, T, V, **f64) * 0.6
    ref_logits = logits.detach() + torch.randn(N, T, V, **f64) * 0.5
    mask = (torch.arange(T)[None] < torch.tensor(LENGTHS)[:, None]).long()             # (N, T)
    ids = torch.where(mask.bool(), torch.randint(0, V, (N, T), generator=g), PAD)       # (N, T)
    gather = lambda lg: torch.log_softmax(lg, -1).gather(-1, ids[..., None]).squeeze(-1)  # (N, T)
    logp = gather(logits)
    old = logp.detach()
    if off_policy:
        old = old + torch.randn(N, T, **f64) * OFF_POLICY_SCALE
    rollout = Rollout(prompt_ids=torch.ones(N, 2, dtype=torch.long), prompt_mask=torch.ones(N, 2, dtype=torch.long),
                      completion_ids=ids, completion_mask=mask, texts=[""] * N, group_size=G)
    rewards = torch.tensor(REWARDS, dtype=torch.float64)
    batch = StepBatch(rollout, rewards, _advantages(rewards), old_logp=old, ref_logp=gather(ref_logits),
                      teacher_logp=gather(teacher_logits), teacher_logits=teacher_logits)
    return logits, logp, batch


# --- the reference, written out from the equations -----------------------------------------

def _agg(x, mask, mode):
    """token-mean, seq-mean, group-token-mean over the real (mask 1) tokens, by boolean indexing."""
    m = mask.bool()
    if mode == "token-mean":
        return x[m].sum() / m.sum()
    if mode == "seq-mean":
        return torch.stack([x[i][m[i]].mean() for i in range(N)]).mean()
    if mode == "group-token-mean":
        rows = [slice(b * G, (b + 1) * G) for b in range(B)]
        return torch.stack([x[r][m[r]].sum() / m[r].sum() for r in rows]).mean()
    raise AssertionError(mode)


def reference(logits, batch, cfg, step):
    """(loss, {part: value}) of cfg.method, float64, from the paper equations."""
    ids, mask = batch.rollout.completion_ids, batch.rollout.completion_mask
    A, old = batch.advantages, batch.old_logp                                           # (N,), (N, T)
    log_p = torch.log_softmax(logits, -1)                                               # (N, T, V)
    log_q = torch.log_softmax(batch.teacher_logits, -1)                                 # (N, T, V)
    lp = log_p.gather(-1, ids[..., None]).squeeze(-1)                                   # (N, T) log pi_theta(y_t)
    lq = batch.teacher_logp                                                             # (N, T) log q_t(y_t)
    agg = lambda x: _agg(x, mask, cfg.loss_agg)
    ratio = torch.exp(lp - old)                                                         # (N, T) rho_t

    def ppo(adv):       # - min(rho A, clip(rho) A), with the dual clip max(., C A) for A < 0
        obj = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - cfg.eps_low, 1 + cfg.eps_high) * adv)
        if cfg.dual_clip:
            obj = torch.where(adv < 0, torch.maximum(obj, cfg.dual_clip * adv), obj)
        return -obj

    def clip_flags(adv):  # where the clip removed the gradient
        flags = ((ratio < 1 - cfg.eps_low) & (adv < 0)) | ((ratio > 1 + cfg.eps_high) & (adv > 0))
        if cfg.dual_clip:
            obj = torch.minimum(ratio * adv, torch.clamp(ratio, 1 - cfg.eps_low, 1 + cfg.eps_high) * adv)
            flags = flags | ((adv < 0) & (obj < cfg.dual_clip * adv))     # bounded at C |A|
        return flags.double()

    def full_vocab():     # D_t over the whole vocabulary, teacher constant
        p, q = log_p.exp(), log_q.exp()
        if cfg.divergence == "reverse":                                   # KL(p || q)
            d = (p * (log_p - log_q)).sum(-1)
        elif cfg.divergence == "forward":                                 # KL(q || p), entries min(l, tau)
            entries = q * (log_q - log_p)
            if cfg.entry_clip:
                entries = torch.clamp(entries, max=cfg.entry_clip)
            d = entries.sum(-1)
        else:                                                             # JSD_beta, M = b q + (1 - b) p
            b = cfg.jsd_beta
            log_m = torch.log(b * q + (1 - b) * p)
            d = b * (q * (log_q - log_m)).sum(-1) + (1 - b) * (p * (log_p - log_m)).sum(-1)
        return torch.clamp(d, max=cfg.token_clip) if cfg.token_clip else d

    parts, A_t = {}, A[:, None].expand(N, T)
    if cfg.method in ("grpo", "grpo_opsd"):
        parts["loss_pg"], parts["clip_frac"] = agg(ppo(A_t)), agg(clip_flags(A_t))
    if cfg.method == "rlsd":
        lam = cfg.rlsd_lam * max(0.0, 1 - step / cfg.rlsd_lam_steps)
        # Delta_t = sg[log q - log p] on the sampled token, p the current policy (RLSD's paper
        # and code; the same as the sampling policy's when num_iterations = 1)
        w = torch.exp(torch.sign(A_t) * (lq - lp.detach()))              # (N, T)
        ahat = A_t * ((1 - lam) + lam * torch.clamp(w, 1 - cfg.rlsd_eps_w, 1 + cfg.rlsd_eps_w))
        parts["loss_pg"], parts["clip_frac"], parts["lam"] = agg(ppo(ahat)), agg(clip_flags(ahat)), lam
        outside = (w < 1 - cfg.rlsd_eps_w) | (w > 1 + cfg.rlsd_eps_w)    # over real tokens of rows A_i != 0
        signed = mask.bool() & (A_t != 0)
        parts["w_clip_frac"] = (outside & signed).sum() / signed.sum()
    if cfg.method in ("opsd", "grpo_opsd"):
        if cfg.divergence == "sampled":                                   # OPSD Eq. 9 in the surrogate
            d = ppo(lq - lp.detach())
        else:
            d = full_vocab()
        parts["distill_loss"], parts["beta"] = agg(d), cfg.distill_coef
    if cfg.method == "sdpg":
        if cfg.sdpg_outcome == "reinforce":                               # - sg[A] log pi, no clip
            parts["loss_pg"], parts["clip_frac"] = agg(-A_t * lp), 0.0
        else:
            parts["loss_pg"], parts["clip_frac"] = agg(ppo(A_t)), agg(clip_flags(A_t))
        beta = cfg.distill_coef
        if cfg.sdpg_schedule:
            assert (cfg.steps, round(cfg.sdpg_warm_frac * cfg.steps), round(cfg.sdpg_decay_frac * cfg.steps)) == \
                (STEPS, T_WARM, T_DECAY)
            beta = cfg.distill_coef * min(1, step / T_WARM) * min(1, (cfg.steps - step) / T_DECAY)
        gate = (A > 0).double() if cfg.sdpg_gate else torch.ones(N, dtype=torch.float64)
        parts["distill_loss"], parts["beta"] = agg(gate[:, None] * full_vocab()), beta
        if cfg.sdpg_gate:
            parts["gate_frac"] = gate.mean()
    l = lp - batch.ref_logp                                               # (N, T)
    K = {"k1": l, "k2": l ** 2 / 2, "urkl": l ** 2 / 2,
         "k3": torch.exp(-l) - 1 + l, "ufkl": torch.exp(-l) - 1 + l,      # ufkl = exp(-l) + l, less its constant 1
         "fkl": torch.exp(-l), "rkl": (l + 1) ** 2 / 2}[cfg.kl_estimator]
    parts["kl_ref"] = agg(K)
    parts["teacher_kl"] = agg(old - lq)
    loss = (parts.get("loss_pg", 0.0) + parts.get("beta", 0.0) * parts.get("distill_loss", 0.0)
            + cfg.kl_coef * parts["kl_ref"])
    return loss, parts


# --- the cases --------------------------------------------------------------------------------

SDPG = dict(method="sdpg", steps=STEPS, distill_coef=0.7)
CASES = {  # id: (TrainConfig fields, step)
    "grpo": (dict(method="grpo"), 0),
    "grpo-seq-mean-k2": (dict(method="grpo", loss_agg="seq-mean", kl_estimator="k2"), 0),
    "grpo-group-token-mean-k1": (dict(method="grpo", loss_agg="group-token-mean", kl_estimator="k1"), 0),
    "grpo-dual-clip-fkl": (dict(method="grpo", eps_high=0.28, dual_clip=3.0, kl_estimator="fkl"), 0),
    "grpo-rkl": (dict(method="grpo", kl_estimator="rkl"), 0),
    "opsd-reverse": (dict(method="opsd", divergence="reverse", distill_coef=0.3), 0),
    "opsd-reverse-token-clip": (dict(method="opsd", divergence="reverse", distill_coef=0.3, token_clip=0.3), 0),
    "opsd-forward": (dict(method="opsd", divergence="forward", distill_coef=0.3), 0),
    "opsd-forward-entry-clip": (dict(method="opsd", divergence="forward", distill_coef=0.3, entry_clip=0.02), 0),
    "opsd-jsd": (dict(method="opsd", divergence="jsd", jsd_beta=0.3, distill_coef=0.3), 0),
    "opsd-sampled": (dict(method="opsd", divergence="sampled", distill_coef=0.3), 0),
    "grpo_opsd": (dict(method="grpo_opsd", distill_coef=0.25), 0),
    "grpo_opsd-jsd-seq-mean": (dict(method="grpo_opsd", divergence="jsd", distill_coef=0.25, loss_agg="seq-mean"), 0),
    "rlsd": (dict(method="rlsd"), 7),                                           # lam = 0.5 (1 - 7/50)
    "rlsd-eps-high-group-token-mean": (dict(method="rlsd", eps_high=0.28, rlsd_lam=0.8, rlsd_lam_steps=20,
                                            rlsd_eps_w=0.1, loss_agg="group-token-mean"), 15),
    "sdpg-reinforce-gate": (dict(SDPG, sdpg_outcome="reinforce", sdpg_gate=True), 3),      # warm-up: 0.6 beta_base
    "sdpg-reinforce-nogate": (dict(SDPG, sdpg_outcome="reinforce", sdpg_gate=False), 3),
    "sdpg-ppo-gate": (dict(SDPG, sdpg_outcome="ppo", sdpg_gate=True, eps_high=0.28), 3),
    "sdpg-ppo-nogate": (dict(SDPG, sdpg_outcome="ppo", sdpg_gate=False, eps_high=0.28), 3),
    "sdpg-decay-window": (dict(SDPG), 30),                                      # decay: 10/35 beta_base
    "sdpg-no-schedule-urkl-token-clip": (dict(SDPG, sdpg_schedule=False, kl_estimator="urkl", token_clip=0.3), 3),
    "sdpg-token-mean": (dict(SDPG, loss_agg="token-mean"), 3),
}


def _cfg(fields):
    return TrainConfig(profile="ci", kl_coef=KL_COEF, **fields).validate()


def _run(case, off_policy, seed=SEED):
    fields, step = CASES[case]
    cfg = _cfg(fields)
    logits, logp, batch = make_batch(seed, off_policy)
    loss, metrics = METHODS[cfg.method].loss_of_logits(logp, logits, batch, cfg, step)
    (grad,) = torch.autograd.grad(loss, logits)
    ref_loss, parts = reference(logits, batch, cfg, step)
    (ref_grad,) = torch.autograd.grad(ref_loss, logits)
    return cfg, batch, loss, metrics, grad, ref_loss, parts, ref_grad


def test_every_method_has_a_case():
    assert {f["method"] for f, _ in CASES.values()} == set(METHODS)
    assert {f.get("divergence") for f, _ in CASES.values() if f["method"] == "opsd"} == \
        {"reverse", "forward", "jsd", "sampled"}


@pytest.mark.parametrize("off_policy", [False, True], ids=["ratio-1", "ratio-off"])
@pytest.mark.parametrize("case", list(CASES))
def test_loss_and_gradient_match_the_float64_reference(case, off_policy):
    cfg, batch, loss, metrics, grad, ref_loss, parts, ref_grad = _run(case, off_policy)
    assert loss.dtype == torch.float64 and cfg.kl_coef == KL_COEF > 0
    torch.testing.assert_close(loss, ref_loss, rtol=1e-10, atol=1e-12)
    assert grad.abs().max() > 1e-3                                  # a gradient that can be wrong
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)
    pad = ~batch.rollout.completion_mask.bool()
    assert (grad[pad] == 0).all()                                   # no gradient from padded positions
    for name, value in parts.items():                               # every part, as a metric
        assert metrics[name] == pytest.approx(value.item() if torch.is_tensor(value) else value, rel=1e-10, abs=1e-12), name
    assert set(metrics) == set(parts), sorted(set(metrics) ^ set(parts))
    assert "delta_mean" not in metrics                  # it was -teacher_kl exactly: not logged twice


def test_the_cases_exercise_what_they_claim():
    """Not vacuous: advantages of both signs and zeros; off-policy ratios beyond every clip
    (the dual clip included); SDPG's beta strictly inside (0, beta_base) at both steps; RLSD's
    lam strictly inside (0, lam0) and its weights both inside and outside the clip; the clips
    of the divergences acting on some tokens."""
    logits, logp, batch = make_batch(SEED, off_policy=True)
    A, mask = batch.advantages, batch.rollout.completion_mask.bool()
    assert (A > 0).any() and (A < 0).any() and (A == 0).any()
    ratio = torch.exp(logp.detach() - batch.old_logp)                          # (N, T)
    assert (ratio[mask] < 0.8).any() and (ratio[mask] > 1.28).any()
    assert ((ratio > 3.0) & mask & (A[:, None] < 0)).any()                      # the dual clip bounds some
    assert 0 < _run("grpo-dual-clip-fkl", True)[3]["clip_frac"] < 1
    assert _run("grpo", False)[3]["clip_frac"] == 0                             # ratio 1: never clipped
    for case in ("sdpg-reinforce-gate", "sdpg-decay-window"):
        assert 0 < _run(case, False)[3]["beta"] < CASES[case][0]["distill_coef"]
    assert 0 < _run("rlsd", False)[3]["lam"] < 0.5
    assert 0 < _run("rlsd", False)[3]["w_clip_frac"] < 1
    for case in ("opsd-reverse-token-clip", "opsd-forward-entry-clip"):
        clipped = _run(case, False)[3]["distill_loss"]
        plain = _run(case.rsplit("-", 2)[0], False)[3]["distill_loss"]
        assert clipped < plain, case                                         # (entries may be < 0)


@pytest.mark.parametrize("off_policy", [False, True], ids=["ratio-1", "ratio-off"])
@pytest.mark.parametrize("case", list(CASES))
def test_loss_decomposes_into_its_metrics(case, off_policy):
    """loss = loss_pg + beta * distill_loss + kl_coef * kl_ref (a missing term counts 0), float64."""
    cfg, _, loss, metrics, *_ = _run(case, off_policy)
    total = (metrics.get("loss_pg", 0.0) + metrics.get("beta", 0.0) * metrics.get("distill_loss", 0.0)
             + cfg.kl_coef * metrics.get("kl_ref", 0.0))
    assert abs(loss.item() - total) <= 1e-10, (loss.item(), total)
    assert "kl_ref" in metrics                                      # the reference KL is active
    assert ("distill_loss" in metrics) == (cfg.method in ("opsd", "grpo_opsd", "sdpg"))
    assert ("loss_pg" in metrics) == (cfg.method != "opsd")


@pytest.mark.parametrize("off_policy", [False, True], ids=["ratio-1", "ratio-off"])
def test_rlsd_w_clip_frac_counts_only_tokens_of_rows_with_nonzero_advantage(off_policy):
    """w_clip_frac = #{t : mask, A_i != 0, w_t outside [1 - eps_w, 1 + eps_w]} / #{t : mask, A_i != 0}.

    Rows with A_i = 0 have w = exp(0) = 1, never clipped, and are left out of the denominator;
    padded positions never count, even with a teacher log-prob that would clip them."""
    cfg = _cfg(dict(method="rlsd"))
    logits, logp, batch = make_batch(3, off_policy)
    mask = batch.rollout.completion_mask.bool()
    batch.teacher_logp = torch.where(mask, batch.teacher_logp, 50.0)   # w = e^{+-50} on padding
    A = batch.advantages
    w = torch.exp(torch.sign(A)[:, None] * (batch.teacher_logp - logp.detach()))
    outside = (w < 1 - cfg.rlsd_eps_w) | (w > 1 + cfg.rlsd_eps_w)
    signed = mask & (A != 0)[:, None]
    expected = (outside & signed).sum().item() / signed.sum().item()
    _, metrics = METHODS["rlsd"].loss_of_logits(logp, logits, batch, cfg, 7)
    assert metrics["w_clip_frac"] == pytest.approx(expected, rel=1e-12)
    assert 0 < expected < 1
    # the two wrong denominators give other numbers: the test can tell them apart
    assert (A == 0).any()
    assert expected != pytest.approx((outside & mask).sum().item() / mask.sum().item())
    assert expected != pytest.approx((outside & (A != 0)[:, None]).sum().item() / ((A != 0).sum().item() * T))
