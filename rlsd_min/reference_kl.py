"""Reference-policy KL estimators on sampled tokens (Schulman, "Approximating KL Divergence", 2020).

With l = log pi_theta(y_t) - log pi_ref(y_t) on the token actually sampled from pi_theta:

    k1 = l                     unbiased for KL(pi_theta || pi_ref), can be negative
    k2 = l^2 / 2               biased, low variance; SDPG's 'urkl'
    k3 = exp(-l) - 1 + l       unbiased and always >= 0; GRPO/TRL; SDPG's 'ufkl' up to a constant

SDPG's released code also has two "normalised" variants (its config class defaults to 'fkl'):

    fkl = exp(-l)              (pi_ref / pi_theta; gradient k3's minus grad l)
    rkl = (l + 1)^2 / 2        (gradient k2's plus grad l)

They differ from k3 and k2 by a term whose gradient, grad log pi_theta(y_t), has expectation
zero on tokens sampled from pi_theta. pi_ref is the frozen initial policy (the warm start).
All give per-token values that the loss aggregates like any other token quantity.
"""

from __future__ import annotations

import torch

ESTIMATORS = ("k1", "k2", "k3", "fkl", "rkl")
SDPG_NAMES = {"urkl": "k2", "ufkl": "k3"}
"""SDPG's names for the same estimators (ufkl = exp(-l) + l = k3 + 1: the same gradient)."""


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k3") -> torch.Tensor:
    """Per-token KL(pi_theta || pi_ref) penalty, shape of `logp` (Schulman k1/k2/k3;
    DeepSeekMath Eq. 4 for k3; SDPG's released code for fkl/rkl; docs/grpo.md, docs/sdpg.md).

    logp carries the gradient; ref_logp is treated as a constant. Accepts SDPG's
    names 'urkl' (= k2) and 'ufkl' (= k3).
    """
    estimator = SDPG_NAMES.get(estimator, estimator)
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown KL estimator {estimator!r}; choose from {ESTIMATORS} or {tuple(SDPG_NAMES)}")
    log_ratio = logp - ref_logp.detach()                              # (N, T) l
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "fkl":
        return torch.exp(-log_ratio)
    if estimator == "rkl":
        return 0.5 * (log_ratio + 1) ** 2
    return torch.expm1(-log_ratio) + log_ratio  # expm1: stays >= 0 in float32 for tiny l
