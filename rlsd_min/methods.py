"""Methods as small choices inside one loss template (rlsd_min.objective).

Every method receives the same `StepBatch` (what was sampled and scored once per
step) and the student's log-probs with gradient, and returns (loss, metrics).

    method      Ahat_t                      distillation D, gate m, beta      ref KL
    grpo        A_i                         none                              optional
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .objective import aggregate, clipped_surrogate
from .reference_kl import kl_penalty
from .sampling import Rollout


@dataclass
class StepBatch:
    """Everything one RL step computes once and every update of that step reuses."""
    rollout: Rollout
    rewards: torch.Tensor            # (N,) verifier rewards R_i
    advantages: torch.Tensor         # (N,) group-relative A_i
    old_logp: torch.Tensor           # (N, T) log-probs of the sampling policy (detached)
    ref_logp: torch.Tensor | None    # (N, T) log pi_ref, when kl_coef > 0


def template_loss(logp: torch.Tensor, ahat: torch.Tensor, batch: StepBatch, cfg) -> tuple[torch.Tensor, dict]:
    """- agg[clipped surrogate(Ahat)] + alpha * agg[K]: the shared part of every method."""
    mask = batch.rollout.completion_mask                                     # (N, T)
    agg = lambda x: aggregate(x, mask, cfg.loss_agg, batch.rollout.group_size)
    pg, clipped = clipped_surrogate(logp, batch.old_logp, ahat, cfg.eps_low, cfg.eps_high)  # (N, T)
    loss = agg(pg)
    metrics = {"loss_pg": loss.item(), "clip_frac": agg(clipped.float()).item()}
    if batch.ref_logp is not None:
        kl = kl_penalty(logp, batch.ref_logp, cfg.kl_estimator)              # (N, T)
        kl_term = agg(kl)
        loss = loss + cfg.kl_coef * kl_term
        metrics["kl_ref"] = kl_term.item()
    return loss, metrics


def grpo(logp: torch.Tensor, batch: StepBatch, cfg, step: int) -> tuple[torch.Tensor, dict]:
    """GRPO (Shao et al. 2024): every token of completion i gets the group advantage A_i."""
    ahat = batch.advantages[:, None].expand_as(logp)                         # (N, T)
    return template_loss(logp, ahat, batch, cfg)


METHODS = {"grpo": grpo}
