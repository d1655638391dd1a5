"""Solution of notebook 06: exercise 6 (RLSD's token advantages)."""

import torch


def my_rlsd_advantages(A: torch.Tensor, teacher_logp: torch.Tensor, student_logp: torch.Tensor,
                       lam: float, eps_w: float) -> torch.Tensor:
    delta = (teacher_logp - student_logp).detach()                 # (N, T) log q - log p
    w = torch.exp(torch.sign(A)[:, None] * delta)                  # (q/p)^sign(A)
    return A[:, None] * ((1 - lam) + lam * w.clamp(1 - eps_w, 1 + eps_w))
