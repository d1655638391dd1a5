"""Methods as small choices inside one loss template (one page per method in docs/: grpo.md,
opsd.md, grpo_opsd.md, rlsd.md, sdpg.md; the template itself is rlsd_min.objective.template_loss):

    L = - agg[ surrogate(Ahat) ]  +  beta(k) * agg[ m_i * D_t ]  +  alpha * agg[ K_t ]

    method     Ahat_t                          D_t (full vocab)       m_i          beta(k)     teacher
    grpo       A_i                             -                      -            -           -
    opsd       - (no reward)                   reverse/forward/JSD    1            distill_coef frozen
               or the surrogate of sg[log q - log p] ('sampled': OPSD Eq. 9's estimator)
    grpo_opsd  A_i                             reverse/forward/JSD    1            distill_coef frozen
    rlsd       A_i ((1-lam) + lam clip(w_t))   -                      -            -           synced
    sdpg       A_i (REINFORCE)                 KL(p || sg q)          1[A_i > 0]   sdpg_beta   live

alpha * K_t (reference KL, rlsd_min.reference_kl) is available to every method via
kl_coef; SDPG uses it by default. Every method gets the same `StepBatch` and returns
(loss, metrics). Their records (what each needs from the teacher, its defaults, the rules
that resolve and check its settings) are `rlsd_min.registry.METHODS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from .objective import clipped_surrogate, template_loss
from .reverse_kl import divergence, sampled_token_advantage
from .sampling import masked_mean

if TYPE_CHECKING:
    from .step import StepBatch


# --- the equations ---------------------------------------------------------------------

def rlsd_advantages(advantages: torch.Tensor, teacher_logp: torch.Tensor, student_logp: torch.Tensor,
                    lam: float, eps_w: float) -> torch.Tensor:
    """RLSD token advantages (Yang et al. 2026, arXiv 2604.03128; docs/rlsd.md):

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
    """SDPG's distillation weight (Liu et al. 2026, arXiv 2606.04036, Sec. 3; docs/sdpg.md):

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
    so a run of any length keeps the paper's shape (50 and 350 of 400 steps). A window of a
    non-zero fraction lasts at least one step, so a very short run still starts at beta = 0."""
    def window(frac: float) -> int:
        return max(1, round(frac * cfg.steps)) if frac > 0 else 0
    return window(cfg.sdpg_warm_frac), window(cfg.sdpg_decay_frac)


def _divergence(logits: torch.Tensor, batch: StepBatch, cfg) -> torch.Tensor:
    return divergence(cfg.divergence, logits, batch.teacher_logits, cfg.jsd_beta,
                      cfg.entry_clip or None, cfg.token_clip or None)


# --- the methods ------------------------------------------------------------------------

def grpo(logp, logits, batch: StepBatch, cfg, step: int):
    """GRPO (Shao et al. 2024): every token of completion i gets the group advantage A_i."""
    ahat = batch.advantages[:, None].expand_as(logp)                                # (N, T)
    return template_loss(logp, batch, cfg, ahat=ahat)


def opsd(logp, logits, batch: StepBatch, cfg, step: int):
    """OPSD (Zhao et al. 2026, arXiv 2601.18734): minimise distill_coef * D(q_t, p_t) on the
    student's own rollouts, no reward. divergence='sampled' takes as D_t the clipped
    surrogate of OPSD Eq. 9's estimator sg[log q - log p] used as a token advantage (its
    value at ratio 1 is the sampled estimate of KL(p || q); its expected gradient is the
    full reverse KL's, SDPG Prop. 3.1)."""
    if cfg.divergence == "sampled":
        delta = sampled_token_advantage(logp, batch.teacher_logp)     # (N, T) sg[log q - log p], p current
        distill = clipped_surrogate(logp, batch.old_logp, delta, cfg.eps_low, cfg.eps_high)[0]  # (N, T)
    else:
        distill = _divergence(logits, batch, cfg)                                      # (N, T)
    return template_loss(logp, batch, cfg, distill=distill, beta=cfg.distill_coef)


def grpo_opsd(logp, logits, batch: StepBatch, cfg, step: int):
    """GRPO + beta * OPSD divergence on all tokens (the additive baseline of RLSD's table)."""
    ahat = batch.advantages[:, None].expand_as(logp)                                # (N, T)
    return template_loss(logp, batch, cfg, ahat=ahat, distill=_divergence(logits, batch, cfg),
                         beta=cfg.distill_coef)


def rlsd(logp, logits, batch: StepBatch, cfg, step: int):
    """RLSD: the verifier's A_i sets the direction, the teacher's Delta_t the per-token magnitude."""
    lam = rlsd_lambda(step, cfg.rlsd_lam, cfg.rlsd_lam_steps)
    ahat = rlsd_advantages(batch.advantages, batch.teacher_logp, logp, lam, cfg.rlsd_eps_w)  # Delta of the current p
    loss, metrics = template_loss(logp, batch, cfg, ahat=ahat)
    w = rlsd_weights(batch.advantages, batch.teacher_logp, logp)                    # (N, T)
    outside = ((w < 1 - cfg.rlsd_eps_w) | (w > 1 + cfg.rlsd_eps_w)).to(logp.dtype)  # (N, T)
    signed = batch.rollout.completion_mask * (batch.advantages != 0)[:, None]     # (N, T) tokens with A_i != 0
    metrics.update(lam=lam, w_clip_frac=masked_mean(outside, signed).item())      # (w = 1 where A_i = 0)
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
