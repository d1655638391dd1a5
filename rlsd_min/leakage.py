"""Information leakage of the privileged context (RLSD paper, Theorem 1 and Proposition 1).

Averaged over the references r the teacher could have been shown, the OPSD loss splits as

    E_r KL(q_t(.|r) || p_t)  =  KL(qbar_t || p_t)  +  I(Y_t ; R | X, Y_<t),
    qbar_t = E_r q_t(.|r).

The mutual-information term does not depend on the student at all: it is a floor the
OPSD loss cannot go below, and it is zero only when the teacher ignores which reference
it was shown. On a task with several valid answers it is strictly positive and can be
computed exactly by enumerating the references.
"""

from __future__ import annotations

import torch


def mutual_information_floor(teacher_logprobs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """I(Y_t; R | x, y_<t) = sum_r w_r KL(q(.|r) || sum_r' w_r' q(.|r')) per position (RLSD Thm. 1).

    teacher_logprobs: (R, ..., V) the teacher's next-token log-probs under each reference r;
    weights: (R,) the probabilities P(r | x, y_<t), non-negative and summing to 1.
    Returns (...), in nats; 0 when every reference gives the same teacher, H(weights) when
    the teachers have disjoint supports.
    """
    R = teacher_logprobs.shape[0]
    if weights.shape != (R,):
        raise ValueError(f"weights must have shape ({R},) to match {R} references, got {tuple(weights.shape)}")
    if (weights < 0).any() or abs(weights.sum().item() - 1) > 1e-5:
        raise ValueError(f"weights must be non-negative and sum to 1, got sum {weights.sum().item():.6g}")
    keep = weights > 0                                                            # a reference of weight 0 adds nothing
    teacher_logprobs, weights, R = teacher_logprobs[keep], weights[keep], int(keep.sum())
    log_q = torch.log_softmax(teacher_logprobs.double(), dim=-1)                 # (R, ..., V) renormalised
    w = weights.double().reshape((R,) + (1,) * (log_q.dim() - 1))                 # (R, 1, ..., 1)
    log_qbar = torch.logsumexp(log_q + torch.log(w), dim=0)                       # (..., V) log sum_r w_r q_r
    q = log_q.exp()
    kl_r = torch.where(q > 0, q * (log_q - log_qbar), 0.0).sum(-1)                # (R, ...)
    return (w[..., 0] * kl_r).sum(0).to(teacher_logprobs.dtype)                   # (...)
