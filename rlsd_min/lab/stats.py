"""Statistics for a claim "method A beats method B" over seeds: yes, no, or not enough.

The design is paired: for a seed index k every run label shares the warm start, the prompt
order, the first step's rollouts and the evaluation's random stream, so runs of one seed are
correlated across labels. The primary analysis therefore works on the per-seed differences
d_k = a_k - b_k over the seeds both labels have (n of them); the unpaired analysis of the two
samples (n_a and n_b seeds) is computed beside it, so a reader sees what pairing gains.

Paired (primary), d = mean(d_k), s_d = std(d_k, ddof 1):

    a 95 % bootstrap interval of d      resample the seed indices k with replacement `n_boot`
                                        times from a seeded generator (numpy PCG64); the
                                        2.5 and 97.5 percentiles of the resampled means
                                        (Efron & Tibshirani 1993, ch. 13, percentile interval)
    the paired t-test of d = 0          t = d / (s_d / sqrt(n)) on n - 1 df (Student 1908;
                                        any statistics text's one-sample t on the differences)
    the sign-flip permutation test      under d = 0 each d_k is as likely +|d_k| as -|d_k|:
                                        p = the fraction of the 2^n sign patterns whose sum
                                        is at least as extreme as the observed one (Fisher 1935,
                                        sec. 21; exact for n <= EXACT_FLIPS, else N_FLIPS seeded
                                        random patterns, p = (1 + hits) / (1 + N_FLIPS),
                                        Phipson & Smyth 2010)
    the MDE                             (t_{1-alpha'/2, n-1} + t_{power, n-1}) * s_d / sqrt(n)
    seeds to settle                     the least n with MDE(n) <= |d|, s_d held as observed

Unpaired (beside): Welch's t-test, t = (mean a - mean b) / se, se^2 = s_a^2/n_a + s_b^2/n_b,
nu = se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1)) (Welch 1947); a bootstrap interval
resampling each sample on its own; MDE (t_{1-alpha'/2, nu} + t_{power, nu}) * se.

Over a family of k claims: Holm's correction, the i-th smallest p-value times (k - i + 1),
made monotone (Holm 1979; family-wise error <= alpha), applied to each test's p-values; the
MDE and seeds to settle are stated at alpha' = alpha / k, Holm's first (strictest) threshold.

A verdict (`verdict`): reproduced when the paired interval lies on the claimed side of 0 AND
the paired t-test's Holm-corrected p < alpha; contradicted: both, on the other side;
inconclusive: anything else. The sign-flip p is shown beside as the distribution-free check
of the t-test (it needs no normality; with n = 5 its smallest two-sided value is 2/32, so it
can confirm nothing at 5 seeds and at 20 reaches 2^-19).

Why both an interval and a test: with 3-20 seeds the percentile bootstrap is too narrow (it
treats the seeds as the whole population; its spread is the plug-in std sqrt((n-1)/n) s, and
it has no t-quantile), so it describes the effect; the t-test, which accounts for the few
seeds, and Holm's correction, which accounts for the number of claims, guard the verdict.

Sample efficiency: `auc` is the area under the held-out accuracy curve divided by its length
in steps (the mean accuracy over training; trapezoids between evaluations), and
`steps_to_threshold` lives in rlsd_min.lab.stability.

Simplifications, stated: the t distribution is computed here (scipy is not a dependency) from
the regularised incomplete beta function; the MDE and seeds to settle use the observed standard
deviations as if they were the true ones (normal-shift approximation of the power).
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=4096)
def t_ppf(q: float, df: float) -> float:
    """The q-quantile of Student's t (bisection on t_cdf, to 1e-10; the last 4096 remembered: the
    seed counts below ask for the same quantiles at each seed count many times)."""
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
    return fewest(lambda n: mde(sd_a, sd_b, n, n, alpha, power) <= abs(diff), most)


def fewest(enough, most: int) -> int | None:
    """The least n in 2..most with enough(n), for an `enough` that stays true once true (an MDE
    falls as seeds are added), by bisection; None when enough(most) is false or most < 2."""
    if most < 2 or not enough(most):
        return None
    lo, hi = 2, most                                       # enough(hi); the answer is in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid + 1, hi)
    return lo


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


# --- paired statistics: the per-seed differences ---------------------------------------

def pairs(a, b) -> tuple[list, np.ndarray, np.ndarray]:
    """(seeds, a's values, b's values) over the seeds both have, in seed order. `a` and `b` are
    {seed: value} dicts, or lists whose position is the seed; None values count as missing."""
    a, b = (dict(enumerate(x)) if not isinstance(x, dict) else x for x in (a, b))
    seeds = sorted(s for s in set(a) & set(b) if a[s] is not None and b[s] is not None)
    if len(seeds) < 2:
        raise ValueError(f"a paired comparison needs at least 2 seeds both sides have, got {seeds} "
                         f"(seeds {sorted(a)} against {sorted(b)})")
    va, vb = _values([a[s] for s in seeds], "a"), _values([b[s] for s in seeds], "b")
    return seeds, va, vb


def paired_t(d) -> tuple[float, float, float]:
    """The paired t-test of mean(d) = 0 on the per-seed differences d (Student's one-sample t):
    t = mean(d) / (s_d / sqrt(n)), df = n - 1, and the two-sided p-value 2 P(T > |t|).

    With no spread (s_d = 0) the difference is exact: t = +-inf, p = 0, or t = 0, p = 1 when
    every difference is 0.
    """
    d = _values(d, "d")
    n, mean, sd = d.size, float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        return (0.0, float(n - 1), 1.0) if mean == 0 else (math.copysign(math.inf, mean), float(n - 1), 0.0)
    t = mean / (sd / math.sqrt(n))
    return t, float(n - 1), 2.0 * (1.0 - t_cdf(abs(t), n - 1))


def paired_bootstrap_ci(d, level: float = 1 - ALPHA, n_boot: int = N_BOOT, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(d): the seed indices resampled with replacement,
    so a seed's two runs always travel together (Efron & Tibshirani 1993, ch. 13). Every d = 0
    gives exactly [0, 0]; the same inputs and seed give the same interval (numpy's PCG64)."""
    d = _values(d, "d")
    rng = np.random.default_rng(seed)
    means = d[rng.integers(0, d.size, (n_boot, d.size))].mean(1)                   # (n_boot,)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


EXACT_FLIPS = 20
"""up to this many pairs the sign-flip test enumerates all 2^n sign patterns (2^20 = 1,048,576)"""
N_FLIPS = 200_000
"""random sign patterns of the sign-flip test beyond EXACT_FLIPS pairs"""
ALTERNATIVES = ("two-sided", "greater", "less")


def sign_flip_p(d, alternative: str = "two-sided", seed: int = 0) -> tuple[float, int]:
    """The sign-flip permutation test of mean(d) = 0 (Fisher 1935, sec. 21): under the null each
    difference is as likely +|d_k| as -|d_k|, so the observed sum S = sum_k d_k is compared with
    the sums over sign patterns e in {-1, +1}^n of sum_k e_k d_k:

        greater    p = #{e : S_e >= S} / 2^n       less  p = #{e : S_e <= S} / 2^n
        two-sided  p = #{e : |S_e| >= |S|} / 2^n

    enumerated exactly when n <= EXACT_FLIPS; else N_FLIPS patterns drawn from a generator
    seeded with `seed`, p = (1 + hits) / (1 + N_FLIPS) (Phipson & Smyth 2010: never 0).
    Sums equal up to float rounding (1e-12 relative) count as equal. Returns (p, patterns
    compared): 2^n when exact. Five positive differences out of five: p = 1/32 one-sided.
    """
    if alternative not in ALTERNATIVES:
        raise ValueError(f"unknown alternative {alternative!r}; choose from {ALTERNATIVES}")
    d = _values(d, "d")
    observed, tol = float(d.sum()), 1e-12 * max(1.0, float(np.abs(d).sum()))
    if d.size <= EXACT_FLIPS:
        sums = np.zeros(1)
        for x in d:                                                             # (2^k,) after k pairs
            sums = np.concatenate([sums + x, sums - x])
    else:
        signs = np.random.default_rng(seed).choice([-1.0, 1.0], size=(N_FLIPS, d.size))   # (N_FLIPS, n)
        sums = signs @ d                                                        # (N_FLIPS,)
    hits = {"greater": sums >= observed - tol, "less": sums <= observed + tol,
            "two-sided": np.abs(sums) >= abs(observed) - tol}[alternative]
    if d.size <= EXACT_FLIPS:
        return float(hits.mean()), int(sums.size)
    return float((1 + hits.sum()) / (1 + N_FLIPS)), N_FLIPS


def paired_mde(sd_d: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """Minimum detectable effect of the two-sided paired t-test at level alpha with the given power:

        MDE = (t_{1 - alpha/2, n-1} + t_{power, n-1}) * sd_d / sqrt(n)

    (the normal-shift approximation of the t-test's power, sd_d the std of the per-seed
    differences). With sd_d = 1, n = 5, alpha 0.05: (2.776 + 0.941) / sqrt(5) = 1.662.
    """
    if n < 2:
        raise ValueError(f"the paired MDE needs at least 2 pairs of seeds, got {n}")
    return (t_ppf(1 - alpha / 2, n - 1) + t_ppf(power, n - 1)) * sd_d / math.sqrt(n)


def paired_seeds_needed(diff: float, sd_d: float, alpha: float = ALPHA, power: float = POWER,
                        most: int = 1000) -> int | None:
    """The fewest paired seeds n with paired_mde(sd_d, n) <= |diff|, i.e. the least n such that

        (t_{1-alpha/2, n-1} + t_{power, n-1}) * sd_d / sqrt(n) <= |diff|

    (sd_d held as observed), or None if even `most` do not suffice (a difference of 0 never)."""
    if diff == 0:
        return None
    if sd_d == 0:
        return 2
    return fewest(lambda n: paired_mde(sd_d, n, alpha, power) <= abs(diff), most)


# --- one claim ---------------------------------------------------------------------------

@dataclass
class Comparison:
    """One claim's statistics: A against B, higher is the claimed direction unless `lower`.
    Paired fields first (the verdict's), the unpaired ones (prefix u_) beside them."""
    diff: float
    """mean of the per-seed differences a_k - b_k over the shared seeds"""
    ci_low: float
    ci_high: float
    """the paired bootstrap interval of diff"""
    t: float
    df: float
    p: float
    """the paired t statistic, its degrees of freedom (n - 1), two-sided p-value"""
    p_holm: float
    """p after Holm's correction over the claims it was compared with (p itself when alone)"""
    p_flip: float
    """the sign-flip test's two-sided p-value"""
    p_flip_holm: float
    flips: int
    """sign patterns the sign-flip test compared (2^n when exact)"""
    p_improve: float
    """the fraction of shared seeds on which A beats B (is lower, for a `lower` claim), ties half"""
    n: int
    """shared seeds (pairs)"""
    seeds: list
    sd_d: float
    """std of the per-seed differences"""
    mde: float
    """the smallest |diff| the paired test detects with probability POWER at `level`"""
    level: float
    """the two-sided test level of the MDEs: ALPHA / k in a family of k claims (Holm's strictest)"""
    seeds_needed: int | None
    """paired seeds whose MDE at `level` is at most |diff| (None: not within 1000)"""
    u_diff: float
    u_ci_low: float
    u_ci_high: float
    u_p: float
    u_p_holm: float
    u_mde: float
    u_seeds_needed: int | None
    """the unpaired analysis: difference of means over all seeds of each, its bootstrap interval,
    Welch's p, Holm-corrected p, MDE and seeds per label to settle"""
    n_a: int
    n_b: int
    sd_a: float
    sd_b: float
    """seeds and std over seeds of each label (unpaired)"""
    lower: bool = False
    """the claim is that A is *lower* than B (fewer steps to a threshold, say)"""
    verdict: str = "inconclusive"

    def to_dict(self) -> dict:
        return asdict(self)


def compare(a, b, lower: bool = False, seed: int = 0, alpha: float = ALPHA, n_boot: int = N_BOOT) -> Comparison:
    """The statistics of the claim 'A is higher (or `lower`) than B', paired over the seeds both
    have ({seed: value} dicts, or lists indexed by seed) and unpaired over all seeds of each; the
    verdict assumes this is the only claim until `judge` corrects a family of them."""
    seeds, pa, pb = pairs(a, b)
    ua = _values([v for v in (a.values() if isinstance(a, dict) else a) if v is not None], "a")
    ub = _values([v for v in (b.values() if isinstance(b, dict) else b) if v is not None], "b")
    d = pa - pb                                                                   # (n,)
    t, df, p = paired_t(d)
    lo, hi = paired_bootstrap_ci(d, 1 - alpha, n_boot, seed)
    p_flip, flips = sign_flip_p(d, "two-sided", seed)
    wins = (d < 0) if lower else (d > 0)
    sd_d, sd_a, sd_b = float(d.std(ddof=1)), float(ua.std(ddof=1)), float(ub.std(ddof=1))
    u_lo, u_hi = bootstrap_ci(ua, ub, 1 - alpha, n_boot, seed)
    c = Comparison(diff=float(d.mean()), ci_low=lo, ci_high=hi, t=t, df=df, p=p, p_holm=p, p_flip=p_flip,
                   p_flip_holm=p_flip, flips=flips, p_improve=float(wins.mean() + 0.5 * (d == 0).mean()),
                   n=int(d.size), seeds=list(seeds), sd_d=sd_d, mde=0.0, level=alpha, seeds_needed=None,
                   u_diff=float(ua.mean() - ub.mean()), u_ci_low=u_lo, u_ci_high=u_hi, u_p=float(welch(ua, ub)[2]),
                   u_p_holm=0.0, u_mde=0.0, u_seeds_needed=None, n_a=int(ua.size), n_b=int(ub.size),
                   sd_a=sd_a, sd_b=sd_b, lower=lower)
    return judge([c], alpha)[0]


def verdict(c: Comparison, alpha: float = ALPHA) -> str:
    """reproduced / contradicted / inconclusive (the module's rule) from the paired interval and
    the paired t-test's p_holm."""
    if c.p_holm >= alpha:
        return "inconclusive"
    above, below = c.ci_low > 0, c.ci_high < 0
    claimed, opposite = (below, above) if c.lower else (above, below)
    return "reproduced" if claimed else "contradicted" if opposite else "inconclusive"


def judge(comparisons: list[Comparison], alpha: float = ALPHA) -> list[Comparison]:
    """Holm's correction over one family of claims: fills p_holm, p_flip_holm and u_p_holm, the
    MDEs and seeds to settle at alpha / k, and each verdict, in place; returns the list."""
    k = len(comparisons)
    adjusted = [holm([getattr(c, key) for c in comparisons]) for key in ("p", "p_flip", "u_p")]
    for c, p_t, p_f, p_u in zip(comparisons, *adjusted):
        c.p_holm, c.p_flip_holm, c.u_p_holm, c.level = p_t, p_f, p_u, alpha / k
        c.mde = paired_mde(c.sd_d, c.n, c.level)
        c.seeds_needed = paired_seeds_needed(c.diff, c.sd_d, alpha=c.level)
        c.u_mde = mde(c.sd_a, c.sd_b, c.n_a, c.n_b, c.level)
        c.u_seeds_needed = seeds_needed(c.u_diff, c.sd_a, c.sd_b, alpha=c.level)
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

