"""The one loss template every method instantiates (METHODS.md, "Unified template"):

    L = - agg_t [ min(rho_t * Ahat_t, clip(rho_t, 1 - eps_low, 1 + eps_high) * Ahat_t) ]
        + beta  * agg_t [ m_i * D_t ]       (distillation term, if any)
        + alpha * agg_t [ K_t ]             (reference-policy KL, if any)

A method is a choice of the token advantage Ahat, the divergence D, the gate m, and
the weights beta and alpha (rlsd_min.methods); this file knows none of them.
"""

from __future__ import annotations

import torch

AGGREGATIONS = ("token-mean", "seq-mean", "group-token-mean")


def aggregate(x: torch.Tensor, mask: torch.Tensor, mode: str, group_size: int) -> torch.Tensor:
    """Reduce per-token values (N, T) to a scalar (METHODS.md, "loss_agg").

    token-mean        sum over all completion tokens / their number (DAPO, TRL default)
    seq-mean          mean over each sequence's tokens, then over sequences (original GRPO)
    group-token-mean  per group: sum / tokens of the group (SDPG's 1/sum|y_i|), then mean
                      over groups
    Masked-out tokens (after eos) never count; a gate is applied to x, not to the mask,
    so gated tokens still count in the denominator.
    """
    x, mask = x * mask, mask.to(x.dtype)                                     # (N, T)
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
