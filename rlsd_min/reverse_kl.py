"""Divergences between the student p_t and the privileged teacher q_t on sampled prefixes.

At each completion position t the student's next-token distribution is
p_t = pi_theta(. | x, y_<t) and the teacher's is q_t = pi_theta(. | c, x, y_<t). The
teacher is always detached (sg[.]): gradients reach the student only.

    full_reverse_kl   KL(p_t || sg q_t) = sum_a p_t(a) (log p_t(a) - log q_t(a))     (SDPG, OPSD)
    sampled_token_advantage   sg[log q_t(y_t) - log p_t(y_t)]    (OPSD Eq. 9, TRL SDPO default)
    forward_kl        KL(sg q_t || p_t), optional per-entry clip min(l_{t,a}, tau)   (OPSD v3)
    jsd               generalised JSD_beta with M = beta q + (1 - beta) p             (OPSD v1, beta 0.5)

The sampled-token estimator is the cheap one: its expected gradient equals the
full-vocabulary gradient (SDPG Prop. 3.1; tests/test_reverse_kl.py checks it by Monte
Carlo). The full-vocabulary forms are computed in chunks of positions, so the same code
serves a 150k-token vocabulary without materialising several (N, T, V) temporaries.
Half-precision logits (float16, bfloat16) are upcast to float32 for the softmax;
float32 and float64 logits keep their dtype, and so does the result.
"""

from __future__ import annotations

import math

import torch

FULL_VOCAB_DIVERGENCES = ("reverse", "forward", "jsd")
CHUNK = 1024
"""positions per chunk in the full-vocabulary divergences"""


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """Half precision (float16, bfloat16) to float32; float32 and float64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _chunked(fn, student_logits: torch.Tensor, teacher_logits: torch.Tensor, chunk: int) -> torch.Tensor:
    """Apply fn to matching chunks of flattened positions: (..., V), (..., V) -> (...).

    Each chunk is upcast to float32 when it is half precision (`_upcast`), never downcast:
    float64 in gives float64 out.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape")
    lead, V = student_logits.shape[:-1], student_logits.shape[-1]
    s = student_logits.reshape(-1, V)                                         # (M, V), M = N * T
    t = teacher_logits.detach().reshape(-1, V)                                # (M, V)
    out = [fn(_upcast(s[i:i + chunk]), _upcast(t[i:i + chunk])) for i in range(0, s.shape[0], chunk)]  # (m,) each
    return torch.cat(out).reshape(lead)                                       # (N, T)


def _clip_token(d: torch.Tensor, token_clip: float | None) -> torch.Tensor:
    """Per-token clip min(D_t, token_clip) (SDPG's released code clamps at 20)."""
    return d if token_clip is None else torch.clamp(d, max=token_clip)


def full_reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                    token_clip: float | None = None, chunk: int = CHUNK) -> torch.Tensor:
    """KL(p_t || sg q_t) per position over the full vocabulary (SDPG Eq. for L_OPD).

    (N, T, V), (N, T, V) -> (N, T). The gradient flows to the student logits only.
    """
    def kl(s, t):                                                             # (m, V) each
        log_p, log_q = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
        return (log_p.exp() * (log_p - log_q)).sum(-1)                        # (m,)
    return _clip_token(_chunked(kl, student_logits, teacher_logits, chunk), token_clip)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, entry_clip: float | None = None,
               token_clip: float | None = None, chunk: int = CHUNK) -> torch.Tensor:
    """KL(sg q_t || p_t) per position (OPSD); entry_clip = tau clips each summand at tau (OPSD v3).

    (N, T, V), (N, T, V) -> (N, T).
    """
    def kl(s, t):                                                             # (m, V) each
        log_p, log_q = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
        entries = log_q.exp() * (log_q - log_p)                               # (m, V) l_{t,a}
        if entry_clip is not None:
            entries = torch.clamp(entries, max=entry_clip)
        return entries.sum(-1)                                                # (m,)
    return _clip_token(_chunked(kl, student_logits, teacher_logits, chunk), token_clip)


def jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float = 0.5,
        token_clip: float | None = None, chunk: int = CHUNK) -> torch.Tensor:
    """Generalised Jensen-Shannon divergence (Agarwal et al. 2024, GKD; OPSD v1 uses beta 0.5).

    JSD_beta = beta KL(q || M) + (1 - beta) KL(p || M), M = beta q + (1 - beta) p.
    (N, T, V), (N, T, V) -> (N, T); beta in (0, 1).
    """
    if not 0 < beta < 1:
        raise ValueError(f"jsd beta must be in (0, 1), got {beta}")

    def div(s, t):                                                            # (m, V) each
        log_p, log_q = torch.log_softmax(s, -1), torch.log_softmax(t, -1)
        # log M = logsumexp(log q + log beta, log p + log(1 - beta)); the logs as Python floats,
        # so a float64 chunk is not mixed with a float32 log(beta)
        log_m = torch.logsumexp(torch.stack([log_q + math.log(beta), log_p + math.log(1 - beta)]), 0)  # (m, V)
        kl_q = (log_q.exp() * (log_q - log_m)).sum(-1)
        kl_p = (log_p.exp() * (log_p - log_m)).sum(-1)
        return beta * kl_q + (1 - beta) * kl_p                                # (m,)
    return _clip_token(_chunked(div, student_logits, teacher_logits, chunk), token_clip)


def sampled_token_advantage(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Delta_t = sg[log q_t(y_t) - log p_t(y_t)] on the sampled tokens (OPSD Eq. 9; RLSD's Delta).

    Used as a per-token advantage in the policy-gradient surrogate, its expected
    gradient is -grad KL(p_t || q_t) (SDPG Prop. 3.1). (N, T), (N, T) -> (N, T), detached.
    """
    return (teacher_logp - student_logp).detach()


def divergence(name: str, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               jsd_beta: float = 0.5, entry_clip: float | None = None,
               token_clip: float | None = None) -> torch.Tensor:
    """Dispatch by name to a full-vocabulary divergence D_t: (N, T, V) x 2 -> (N, T)."""
    if name == "reverse":
        return full_reverse_kl(student_logits, teacher_logits, token_clip)
    if name == "forward":
        return forward_kl(student_logits, teacher_logits, entry_clip, token_clip)
    if name == "jsd":
        return jsd(student_logits, teacher_logits, jsd_beta, token_clip)
    raise ValueError(f"unknown full-vocabulary divergence {name!r}; choose from {FULL_VOCAB_DIVERGENCES}")
