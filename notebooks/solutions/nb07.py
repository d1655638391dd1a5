"""Solutions of notebook 07: exercise 7 (beta(k)), exercise 8 (the gated group-token-mean)."""

import torch


def my_sdpg_beta(k: int, T: int, beta_base: float, t_warm: int, t_decay: int) -> float:
    warm = 1.0 if t_warm <= 0 else min(1.0, k / t_warm)                  # a window of length 0: no window
    decay = 1.0 if t_decay <= 0 else min(1.0, max(0.0, (T - k) / t_decay))   # never below 0 past T
    return beta_base * warm * decay


def my_gated_distill(D: torch.Tensor, mask: torch.Tensor, A: torch.Tensor, G: int) -> torch.Tensor:
    gate = (A > 0).to(D.dtype)                                     # (N,) m_i
    gated = torch.where(mask.bool(), D * gate[:, None], 0.0)       # (N, T) gated-out rows add 0 ...
    per_group = gated.sum(1).view(-1, G).sum(1)                    # (B,)
    tokens = mask.to(D.dtype).sum(1).view(-1, G).sum(1)            # (B,) ... but count here
    return (per_group / tokens).mean()
