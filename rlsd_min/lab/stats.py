"""Statistics for a claim "method A beats method B" over seeds: yes, no, or not enough.

Given the per-seed values a_1..a_n of A and b_1..b_m of B (final accuracy, say), one claim
gets the mean difference d = mean(a) - mean(b) and

    a 95 % bootstrap confidence interval of d   resample the seeds of each method with
                                                replacement, `n_boot` times, from a seeded
                                                generator; percentiles 2.5 and 97.5 of d*
    Welch's t-test of d = 0                     t = d / se,  se^2 = s_a^2/n + s_b^2/m,
                                                nu = se^4 / ((s_a^2/n)^2/(n-1) + (s_b^2/m)^2/(m-1))
    Holm's correction over the k claims         the i-th smallest p-value times (k - i + 1),
                                                made monotone (family-wise error <= alpha)
    the probability of improvement              P(A > B) = mean over pairs (i, j) of
                                                1[a_i > b_j] + 1/2 1[a_i = b_j]
    a verdict                                   reproduced: the interval lies on the claimed
                                                side of 0 AND the corrected p < alpha;
                                                contradicted: both, on the other side;
                                                inconclusive: anything else
    the minimum detectable effect (MDE)         MDE = (t_{1-alpha'/2, nu} + t_{power, nu}) * se
                                                with alpha' = alpha / k (Holm's first, strictest
                                                threshold), power 0.8: the true difference
                                                that this experiment would declare with
                                                probability 0.8 (normal-shift approximation)

Why both an interval and a test: with 3-10 seeds the percentile bootstrap is too narrow (it
treats the seeds as the whole population; its spread is the plug-in std sqrt((n-1)/n) s, and
it has no t-quantile), so it describes the effect; the Welch test, which accounts for the few
seeds, and Holm's correction, which accounts for the number of claims, guard the verdict.

Sample efficiency: `auc` is the area under the held-out accuracy curve divided by its length
in steps (the mean accuracy over training; trapezoids between evaluations), and
`steps_to_threshold` lives in rlsd_min.lab.stability.

Simplifications, stated: seeds of two methods are treated as independent (they share the
prompt order, but the runs part after the first update); the t distribution is computed here
(scipy is not a dependency) from the regularised incomplete beta function; the MDE uses the
observed standard deviations as if they were the true ones.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

ALPHA = 0.05
"""family-wise error rate of the verdicts, and 1 - the interval's level"""
POWER = 0.8
"""the power at which the minimum detectable effect is stated"""
N_BOOT = 10_000
"""bootstrap resamples"""
VERDICTS = ("reproduced", "contradicted", "inconclusive")


# --- the t distribution ---------------------------------------------------------------

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz; Numerical Recipes 6.4)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b), 0 <= x <= 1."""
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"betainc needs 0 <= x <= 1, got {x}")
    if x in (0.0, 1.0):
        return x
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here; else use the symmetry
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with df > 0 degrees of freedom: 1 - I_{df/(df+t^2)}(df/2, 1/2) / 2 for t > 0."""
    if not df > 0:
        raise ValueError(f"degrees of freedom must be > 0, got {df}")
    if math.isinf(t):
        return 1.0 if t > 0 else 0.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))                        # P(T > |t|)
    return 1.0 - tail if t > 0 else tail


def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t (bisection on t_cdf, to 1e-10)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {q}")
    if q < 0.5:
        return -t_ppf(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        lo, hi = hi, hi * 2.0
    while hi - lo > 1e-10 * max(1.0, hi):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if t_cdf(mid, df) < q else (lo, mid)
    return 0.5 * (lo + hi)


# --- the statistics of one comparison --------------------------------------------------

def _values(x, name: str) -> np.ndarray:
    x = np.asarray([v for v in x if v is not None], dtype=float)
    if x.size < 2:
        raise ValueError(f"{name} needs at least 2 values (seeds) for a comparison, got {x.size}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} holds a non-finite value: {x.tolist()}")
    return x


def welch(a, b) -> tuple[float, float, float]:
    """Welch's t statistic, its degrees of freedom, and the two-sided p-value for mean(a) = mean(b).

    With no spread in either sample (se = 0) the difference is exact: t = +-inf, p = 0, or
    t = 0, p = 1 when the means agree; df is then n + m - 2.
    """
    a, b = _values(a, "a"), _values(b, "b")
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size                      # s^2 / n per sample
    diff, se2 = a.mean() - b.mean(), va + vb
    if se2 == 0.0:
        return (0.0, float(a.size + b.size - 2), 1.0) if diff == 0 else \
               (math.copysign(math.inf, diff), float(a.size + b.size - 2), 0.0)
    t = diff / math.sqrt(se2)
    df = se2 ** 2 / (va ** 2 / (a.size - 1) + vb ** 2 / (b.size - 1))
    return float(t), float(df), 2.0 * (1.0 - t_cdf(abs(t), df))


def bootstrap_ci(a, b, level: float = 1 - ALPHA, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(a) - mean(b), each sample resampled on its own.

    Reproducible: the same inputs and seed give the same interval (numpy's PCG64).
    """
    a, b = _values(a, "a"), _values(b, "b")
    rng = np.random.default_rng(seed)
    ma = a[rng.integers(0, a.size, (n_boot, a.size))].mean(1)                      # (n_boot,)
    mb = b[rng.integers(0, b.size, (n_boot, b.size))].mean(1)                      # (n_boot,)
    lo, hi = np.quantile(ma - mb, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def prob_improvement(a, b) -> float:
    """P(A > B): the chance that a random seed of A beats a random seed of B (ties count half)."""
    a, b = _values(a, "a"), _values(b, "b")
    wins = (a[:, None] > b[None, :]).mean() + 0.5 * (a[:, None] == b[None, :]).mean()
    return float(wins)


def mde(sd_a: float, sd_b: float, n_a: int, n_b: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect of a two-sided Welch test at level alpha with the given power:

        MDE = (t_{1 - alpha/2, nu} + t_{power, nu}) * sqrt(sd_a^2/n_a + sd_b^2/n_b)

    nu is Welch's degrees of freedom for these sds (n_a + n_b - 2 when both are 0).
    With sd = 1, n = 5 per method, alpha 0.05: (2.306 + 0.889) * sqrt(2/5) = 2.021.
    """
    if n_a < 2 or n_b < 2:
        raise ValueError(f"the MDE needs at least 2 seeds per method, got {n_a} and {n_b}")
    va, vb = sd_a ** 2 / n_a, sd_b ** 2 / n_b
    df = (va + vb) ** 2 / (va ** 2 / (n_a - 1) + vb ** 2 / (n_b - 1)) if va + vb > 0 else n_a + n_b - 2
    return (t_ppf(1 - alpha / 2, df) + t_ppf(power, df)) * math.sqrt(va + vb)


def seeds_needed(diff: float, sd_a: float, sd_b: float, alpha: float = ALPHA, power: float = POWER,
                 most: int = 1000) -> int | None:
    """The fewest seeds per method whose MDE is at most |diff| (the sds held as observed), or
    None if even `most` do not suffice (a difference of 0 can never be detected)."""
    if diff == 0 or (sd_a == 0 and sd_b == 0):
        return None if diff == 0 else 2
    for n in range(2, most + 1):
        if mde(sd_a, sd_b, n, n, alpha, power) <= abs(diff):
            return n
    return None


def holm(p_values: list[float]) -> list[float]:
    """Holm-adjusted p-values, in the input order: the i-th smallest (i = 1..k) is
    max over j <= i of min(1, (k - j + 1) p_(j))."""
    k = len(p_values)
    order = sorted(range(k), key=lambda i: p_values[i])
    adjusted, running = [0.0] * k, 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


@dataclass
class Comparison:
    """One claim's statistics: A against B, higher is the claimed direction unless `lower`."""
    diff: float
    """mean(a) - mean(b)"""
    ci_low: float
    ci_high: float
    """the bootstrap interval of diff"""
    t: float
    df: float
    p: float
    """Welch's statistic, degrees of freedom, two-sided p-value"""
    p_holm: float
    """p after Holm's correction over the claims it was compared with (p itself when alone)"""
    p_improve: float
    """P(A > B), or P(A < B) for a claim that A is lower"""
    mde: float
    """the smallest |diff| detected with probability POWER at `level`"""
    level: float
    """the two-sided test level of `mde`: ALPHA / k in a family of k claims (Holm's strictest)"""
    n_a: int
    n_b: int
    sd_a: float
    sd_b: float
    """seeds and std over seeds of each method"""
    lower: bool = False
    """the claim is that A is *lower* than B (fewer steps to a threshold, say)"""
    verdict: str = "inconclusive"

    def to_dict(self) -> dict:
        return asdict(self)


def compare(a, b, lower: bool = False, seed: int = 0, alpha: float = ALPHA, n_boot: int = N_BOOT) -> Comparison:
    """The statistics of the claim 'A is higher (or `lower`) than B'; the verdict assumes this
    is the only claim until `judge` corrects a family of them."""
    a, b = _values(a, "a"), _values(b, "b")
    t, df, p = welch(a, b)
    lo, hi = bootstrap_ci(a, b, 1 - alpha, n_boot, seed)
    pi = prob_improvement(b, a) if lower else prob_improvement(a, b)
    sd_a, sd_b = float(a.std(ddof=1)), float(b.std(ddof=1))
    c = Comparison(diff=float(a.mean() - b.mean()), ci_low=lo, ci_high=hi, t=t, df=df, p=p, p_holm=p,
                   p_improve=pi, mde=mde(sd_a, sd_b, a.size, b.size, alpha), level=alpha, n_a=int(a.size), n_b=int(b.size),
                   sd_a=sd_a, sd_b=sd_b, lower=lower)
    c.verdict = verdict(c, alpha)
    return c


def verdict(c: Comparison, alpha: float = ALPHA) -> str:
    """reproduced / contradicted / inconclusive (the module's rule) from the interval and p_holm."""
    if c.p_holm >= alpha:
        return "inconclusive"
    above, below = c.ci_low > 0, c.ci_high < 0
    claimed, opposite = (below, above) if c.lower else (above, below)
    return "reproduced" if claimed else "contradicted" if opposite else "inconclusive"


def judge(comparisons: list[Comparison], alpha: float = ALPHA) -> list[Comparison]:
    """Holm's correction over a family of claims: fills p_holm, the MDE at alpha / k and each
    verdict, in place; returns the list."""
    k = len(comparisons)
    for c, p_adj in zip(comparisons, holm([c.p for c in comparisons])):
        c.p_holm = p_adj
        c.level = alpha / k
        c.mde = mde(c.sd_a, c.sd_b, c.n_a, c.n_b, c.level)
        c.verdict = verdict(c, alpha)
    return comparisons


# --- sample efficiency -----------------------------------------------------------------

def auc(steps: list[int], values: list[float]) -> float:
    """Area under a curve sampled at `steps` (trapezoids), divided by its length in steps:
    the mean of the curve over training, in the units of `values` (1.0 = perfect throughout)."""
    if len(steps) != len(values) or len(steps) < 2:
        raise ValueError(f"auc needs at least 2 points with one value each, got {len(steps)} steps and {len(values)} values")
    if any(s1 <= s0 for s0, s1 in zip(steps, steps[1:])):
        raise ValueError(f"auc needs increasing steps, got {steps}")
    area = sum((s1 - s0) * (v0 + v1) / 2 for s0, s1, v0, v1 in zip(steps, steps[1:], values, values[1:]))
    return area / (steps[-1] - steps[0])

