"""Methods as small choices inside one loss template (METHODS.md, "Unified template"):

    L = - agg[ surrogate(Ahat) ]  +  beta(k) * agg[ m_i * D_t ]  +  alpha * agg[ K_t ]

    method     Ahat_t                          D_t (full vocab)       m_i          beta(k)     teacher
    grpo       A_i                             -                      -            -           -
    opsd       - (no reward)                   reverse/forward/JSD    1            distill_coef frozen
               or sg[log q - log p] ('sampled' divergence: the estimator as advantage)
    grpo_opsd  A_i                             reverse/forward/JSD    1            distill_coef frozen
    rlsd       A_i ((1-lam) + lam clip(w_t))   -                      -            -           synced
    sdpg       A_i (REINFORCE)                 KL(p || sg q)          1[A_i > 0]   sdpg_beta   live

alpha * K_t (reference KL, rlsd_min.reference_kl) is available to every method via
kl_coef; SDPG uses it by default. Every method gets the same `StepBatch` and returns
(loss, metrics); `METHODS` records what each needs and its default settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .objective import aggregate, clipped_surrogate
from .reference_kl import kl_penalty
from .reverse_kl import divergence, sampled_token_advantage
from .sampling import Rollout, masked_mean


@dataclass
class StepBatch:
    """Everything one RL step computes once and every update of that step reuses."""
    rollout: Rollout
    rewards: torch.Tensor                    # (N,) verifier rewards R_i
    advantages: torch.Tensor                 # (N,) group-relative A_i
    old_logp: torch.Tensor                   # (N, T) log-probs of the sampling policy (detached)
    ref_logp: torch.Tensor | None = None     # (N, T) log pi_ref, when kl_coef > 0
    teacher_logp: torch.Tensor | None = None     # (N, T) log q_t(y_t), detached
    teacher_logits: torch.Tensor | None = None   # (N, T, V), when the method needs the full vocabulary


# --- the equations ---------------------------------------------------------------------

def rlsd_advantages(advantages: torch.Tensor, teacher_logp: torch.Tensor, student_logp: torch.Tensor,
                    lam: float, eps_w: float) -> torch.Tensor:
    """RLSD token advantages (Yang et al. 2026, arXiv 2604.03128; METHODS.md "RLSD"):

        Delta_t = sg[log q_t(y_t) - log p_t(y_t)]
        w_t     = exp(sign(A_i) * Delta_t)            (= (q/p)^sign(A))
        Ahat_t  = A_i * ((1 - lam) + lam * clip(w_t, 1 - eps_w, 1 + eps_w))

    The verifier fixes the direction (sign of A_i, never flipped: the factor is > 0);
    the teacher only rescales each token's magnitude. advantages (N,), log-probs (N, T)
    -> (N, T).
    """
    if not 0 <= lam <= 1:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if not 0 < eps_w < 1:
        raise ValueError(f"eps_w must be in (0, 1), got {eps_w}")
    w = rlsd_weights(advantages, teacher_logp, student_logp)                     # (N, T)
    return advantages[:, None] * ((1 - lam) + lam * torch.clamp(w, 1 - eps_w, 1 + eps_w))  # (N, T)


def rlsd_weights(advantages: torch.Tensor, teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """RLSD's unclipped per-token weight w_t = exp(sign(A_i) * sg[log q_t(y_t) - log p_t(y_t)]): (N, T)."""
    delta = sampled_token_advantage(student_logp, teacher_logp)                   # (N, T)
    return torch.exp(torch.sign(advantages[:, None]) * delta)                    # (N, T)


def rlsd_lambda(step: int, lam0: float, decay_steps: int) -> float:
    """RLSD's mixing weight: lam0 decaying linearly to 0 over decay_steps (then RLSD is GRPO)."""
    if decay_steps <= 0:
        return 0.0
    return lam0 * max(0.0, 1.0 - step / decay_steps)


def sdpg_beta(step: int, total_steps: int, beta_base: float, t_warm: int, t_decay: int) -> float:
    """SDPG's distillation weight (Liu et al. 2026, arXiv 2606.04036; METHODS.md "SDPG"):

        beta(k) = beta_base * min(1, k / T_warm) * min(1, (T - k) / T_decay)

    Warm-up and decay windows may overlap (the paper's T=400, T_warm=50, T_decay=350 meet
    at k=50: a triangle with no plateau). A window of length 0 is no window; the value
    never goes below 0 past T.
    """
    warm = 1.0 if t_warm <= 0 else min(1.0, step / t_warm)
    decay = 1.0 if t_decay <= 0 else min(1.0, max(0.0, (total_steps - step) / t_decay))
    return beta_base * warm * decay


def sdpg_windows(cfg) -> tuple[int, int]:
    """(T_warm, T_decay) of a run: the fractions sdpg_warm_frac, sdpg_decay_frac of its steps,
    so a run of any length keeps the paper's shape (50 and 350 of 400 steps)."""
    return round(cfg.sdpg_warm_frac * cfg.steps), round(cfg.sdpg_decay_frac * cfg.steps)


# --- the template ------------------------------------------------------------------------

def template_loss(logp: torch.Tensor, batch: StepBatch, cfg, ahat: torch.Tensor | None = None,
                  distill: torch.Tensor | None = None, gate: torch.Tensor | None = None,
                  beta: float = 0.0, outcome: str = "ppo") -> tuple[torch.Tensor, dict]:
    """- agg[surrogate(Ahat)] + beta * agg[m * D] + alpha * agg[K], and the metrics of each part.

    ahat (N, T) token advantages or None (no policy-gradient term); outcome 'ppo' is the
    clipped surrogate, 'reinforce' is -sg[Ahat] log pi (SDPG's L_out). distill (N, T) a
    divergence D_t with gradient; gate (N,) m_i multiplies D (gated tokens still count
    in the denominator, as in SDPG).
    """
    mask, G = batch.rollout.completion_mask, batch.rollout.group_size                # (N, T)
    agg = lambda x: aggregate(x, mask, cfg.loss_agg, G)
    loss, metrics = logp.new_zeros(()), {}
    if ahat is not None:
        if outcome == "reinforce":
            pg, clipped = -ahat.detach() * logp, torch.zeros_like(mask, dtype=torch.bool)
        else:
            pg, clipped = clipped_surrogate(logp, batch.old_logp, ahat, cfg.eps_low, cfg.eps_high,
                                            cfg.dual_clip or None)                 # (N, T)
        pg_term = agg(pg)
        loss = loss + pg_term
        metrics.update(loss_pg=pg_term.item(), clip_frac=agg(clipped.float()).item())
    if distill is not None:
        gated = distill if gate is None else distill * gate[:, None]               # (N, T)
        d = agg(gated)
        loss = loss + beta * d
        metrics.update(distill_loss=agg(distill).item(), beta=beta)
        if gate is not None:
            metrics["gate_frac"] = gate.float().mean().item()
    if batch.ref_logp is not None:
        kl = agg(kl_penalty(logp, batch.ref_logp, cfg.kl_estimator))
        loss = loss + cfg.kl_coef * kl
        metrics["kl_ref"] = kl.item()
    if batch.teacher_logp is not None:  # the same sampled-token estimate for every teacher method
        delta = sampled_token_advantage(batch.old_logp, batch.teacher_logp)        # (N, T)
        metrics.update(delta_mean=agg(delta).item(), teacher_kl=agg(-delta).item())
    return loss, metrics


def _divergence(logits: torch.Tensor, batch: StepBatch, cfg) -> torch.Tensor:
    return divergence(cfg.divergence, logits, batch.teacher_logits, cfg.jsd_beta,
                      cfg.entry_clip or None, cfg.token_clip or None)


# --- the methods ------------------------------------------------------------------------

def grpo(logp, logits, batch: StepBatch, cfg, step: int):
    """GRPO (Shao et al. 2024): every token of completion i gets the group advantage A_i."""
    ahat = batch.advantages[:, None].expand_as(logp)                                # (N, T)
    return template_loss(logp, batch, cfg, ahat=ahat)


def opsd(logp, logits, batch: StepBatch, cfg, step: int):
    """OPSD (Zhao et al. 2026, arXiv 2601.18734): minimise D(q_t, p_t) on the student's own
    rollouts, no reward. divergence='sampled' uses OPSD Eq. 9's estimator as advantage."""
    if cfg.divergence == "sampled":
        ahat = sampled_token_advantage(batch.old_logp, batch.teacher_logp)            # (N, T)
        return template_loss(logp, batch, cfg, ahat=ahat)
    return template_loss(logp, batch, cfg, distill=_divergence(logits, batch, cfg), beta=cfg.distill_coef)


def grpo_opsd(logp, logits, batch: StepBatch, cfg, step: int):
    """GRPO + beta * OPSD divergence on all tokens (the additive baseline of RLSD's table)."""
    ahat = batch.advantages[:, None].expand_as(logp)                                # (N, T)
    return template_loss(logp, batch, cfg, ahat=ahat, distill=_divergence(logits, batch, cfg),
                         beta=cfg.distill_coef)


def rlsd(logp, logits, batch: StepBatch, cfg, step: int):
    """RLSD: the verifier's A_i sets the direction, the teacher's Delta_t the per-token magnitude."""
    lam = rlsd_lambda(step, cfg.rlsd_lam, cfg.rlsd_lam_steps)
    ahat = rlsd_advantages(batch.advantages, batch.teacher_logp, batch.old_logp, lam, cfg.rlsd_eps_w)
    loss, metrics = template_loss(logp, batch, cfg, ahat=ahat)
    w = rlsd_weights(batch.advantages, batch.teacher_logp, batch.old_logp)          # (N, T)
    outside = ((w < 1 - cfg.rlsd_eps_w) | (w > 1 + cfg.rlsd_eps_w)).float()
    metrics.update(lam=lam, w_clip_frac=masked_mean(outside, batch.rollout.completion_mask).item())
    return loss, metrics


def sdpg(logp, logits, batch: StepBatch, cfg, step: int):
    """SDPG: REINFORCE outcome term + beta(k) * gated full-vocabulary KL(p || sg q) + alpha * K."""
    ahat = batch.advantages[:, None].expand_as(logp)                                # (N, T)
    distill = _divergence(logits, batch, cfg)                                       # (N, T)
    gate = (batch.advantages > 0).to(logp.dtype) if cfg.sdpg_gate else None         # (N,)
    if cfg.sdpg_schedule:
        beta = sdpg_beta(step, cfg.steps, cfg.distill_coef, *sdpg_windows(cfg))
    else:
        beta = cfg.distill_coef
    return template_loss(logp, batch, cfg, ahat=ahat, distill=distill, gate=gate, beta=beta,
                         outcome=cfg.sdpg_outcome)


@dataclass(frozen=True)
class Method:
    loss: Callable
    teacher: str | None
    """None, 'logp' (sampled-token log-probs) or 'logits' (full vocabulary)"""
    defaults: dict = field(default_factory=dict)
    """TrainConfig values this method starts from (a user's explicit setting wins)"""


METHODS = {
    "grpo": Method(grpo, None),
    "opsd": Method(opsd, "logits", dict(teacher_mode="frozen", teacher_context="solution",
                                         divergence="reverse", distill_coef=1.0)),
    "grpo_opsd": Method(grpo_opsd, "logits", dict(teacher_mode="frozen", teacher_context="solution",
                                                   divergence="reverse", distill_coef=0.1)),
    "rlsd": Method(rlsd, "logp", dict(teacher_mode="synced", teacher_context="answer", sync_every=10)),
    "sdpg": Method(sdpg, "logits", dict(teacher_mode="live", teacher_context="solution", divergence="reverse",
                                         distill_coef=0.1, kl_coef=0.01, kl_estimator="ufkl",
                                         loss_agg="group-token-mean")),
}
