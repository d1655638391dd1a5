"""Solution of notebook 05: exercise 5 (the mutual-information floor)."""

import torch


def my_mutual_information_floor(log_q: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    q = log_q.exp()                                        # (R, V) the teacher under each reference
    qbar = (w[:, None] * q).sum(0)                         # (V,) the best a student without r can do
    kl = (q * (log_q - qbar.log())).sum(-1)                # (R,) KL(q_r || qbar); q = 0 adds 0
    return (w * kl).sum()
