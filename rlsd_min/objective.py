"""The one loss template every method instantiates (the README; one page per method in docs/):

    L = - agg_t [ min(rho_t * Ahat_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * Ahat_t) ]
        + beta  * agg_t [ m_i * D_t ]       (distillation term, if any)
        + alpha * agg_t [ K_t ]             (reference-policy KL, if any)

A method is a choice of the token advantage Ahat, the divergence D, the gate m, and
the weights beta and alpha (rlsd_min.methods); this file knows none of them. It holds
the template (`template_loss`) and its two pieces: the token aggregation and the
clipped surrogate.
"""

from __future__ import annotations

import torch

from .batch import StepBatch
from .reference_kl import kl_penalty
from .reverse_kl import sampled_token_advantage

AGGREGATIONS = ("token-mean", "seq-mean", "group-token-mean")


def aggregate(x: torch.Tensor, mask: torch.Tensor, mode: str, group_size: int) -> torch.Tensor:
    """Reduce per-token values (N, T) to a scalar (`loss_agg`; docs/grpo.md, "Implementation details").

    token-mean        sum over all completion tokens / their number (DAPO, TRL default)
    seq-mean          mean over each sequence's tokens, then over sequences (original GRPO)
    group-token-mean  per group: sum / tokens of the group (SDPG's 1/sum|y_i|), then mean
                      over groups
    Masked-out tokens (after eos) never count; a gate is applied to x, not to the mask,
    so gated tokens still count in the denominator.
    """
    x = torch.where(mask.bool(), x, 0.0)     # (N, T); where, not x * mask: inf * 0 would be nan
    mask = mask.to(x.dtype)                                                  # (N, T)
    if mode == "token-mean":
        return x.sum() / mask.sum().clamp(min=1)
    if mode == "seq-mean":
        return (x.sum(1) / mask.sum(1).clamp(min=1)).mean()
    if mode == "group-token-mean":
        per_group = x.sum(1).view(-1, group_size).sum(1)                     # (B,)
        tokens = mask.sum(1).view(-1, group_size).sum(1).clamp(min=1)       # (B,)
        return (per_group / tokens).mean()
    raise ValueError(f"unknown loss aggregation {mode!r}; choose from {AGGREGATIONS}")


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
                      eps_low: float, eps_high: float, dual_clip: float | None = None):
    """Per-token PPO clipped surrogate loss (Schulman et al. 2017, Eq. 7), negated.

    logp (N, T) carries the gradient, old_logp (N, T) is the sampling policy's, adv is
    (N, T) or (N, 1). dual_clip = C bounds the loss at C * |A| for negative advantages
    (Ye et al. 2020; RLSD's and SDPG's released code). Returns (loss (N, T), clipped
    (N, T) bool: where the clip removed the gradient).
    """
    ratio = torch.exp(logp - old_logp.detach())                              # (N, T) rho_t
    unclipped = ratio * adv                                                  # (N, T)
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv            # (N, T)
    objective = torch.minimum(unclipped, clipped)                            # (N, T)
    was_clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    if dual_clip is not None:
        bounded = (adv < 0) & (objective < dual_clip * adv)                  # (N, T)
        objective = torch.where(bounded, dual_clip * adv, objective)
        was_clipped = was_clipped | bounded
    return -objective, was_clipped


def template_loss(logp: torch.Tensor, batch: StepBatch, cfg, ahat: torch.Tensor | None = None,
                  distill: torch.Tensor | None = None, gate: torch.Tensor | None = None,
                  beta: float = 0.0, outcome: str = "ppo") -> tuple[torch.Tensor, dict]:
    """- agg[surrogate(Ahat)] + beta * agg[m * D] + alpha * agg[K], and the metrics of each part.

    ahat (N, T) token advantages or None (no policy-gradient term); outcome 'ppo' is the
    clipped surrogate, 'reinforce' is -sg[Ahat] log pi (SDPG's L_out). distill (N, T) a
    divergence D_t with gradient; gate (N,) m_i multiplies D (gated tokens still count
    in the denominator, as in SDPG). alpha = cfg.kl_coef, applied when the batch holds
    reference log-probs.

    The metrics are the terms as they enter the loss, so that
    loss = loss_pg + beta * distill_loss + kl_coef * kl_ref (a missing term counts 0).
    """
    mask, G = batch.rollout.completion_mask, batch.rollout.group_size                # (N, T)
    agg = lambda x: aggregate(x, mask, cfg.loss_agg, G)
    loss, metrics = logp.new_zeros(()), {}
    if ahat is not None:
        if outcome == "reinforce":
            pg, clipped = -ahat.detach() * logp, torch.zeros_like(mask, dtype=torch.bool)   # (N, T)
        else:
            pg, clipped = clipped_surrogate(logp, batch.old_logp, ahat, cfg.eps_low, cfg.eps_high,
                                            cfg.dual_clip or None)                 # (N, T)
        pg_term = agg(pg)
        loss = loss + pg_term
        metrics.update(loss_pg=pg_term.item(), clip_frac=agg(clipped.to(logp.dtype)).item())
    if distill is not None:
        gated = distill if gate is None else distill * gate[:, None]               # (N, T)
        d = agg(gated)
        loss = loss + beta * d
        metrics.update(distill_loss=d.item(), beta=beta)
        if gate is not None:
            metrics["gate_frac"] = gate.to(logp.dtype).mean().item()
    if batch.ref_logp is not None:
        kl = agg(kl_penalty(logp, batch.ref_logp, cfg.kl_estimator))
        loss = loss + cfg.kl_coef * kl
        metrics["kl_ref"] = kl.item()
    if batch.teacher_logp is not None:  # the same sampled-token estimate for every teacher method
        delta = sampled_token_advantage(batch.old_logp, batch.teacher_logp)        # (N, T) log q - log p
        scored = mask if batch.teacher_rows is None else mask * batch.teacher_rows[:, None]   # (N, T)
        # KL(p || q) on the sampled tokens of the rows the teacher scored (minus RLSD's mean Delta)
        metrics["teacher_kl"] = aggregate(-delta, scored, cfg.loss_agg, G).item()
    return loss, metrics


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of x over positions where mask is 1."""
    return (x * mask).sum() / mask.sum().clamp(min=1)
