"""rlsd_min.lab.stats against cases with a known answer: closed forms, tables, hand computations."""

import itertools
import math
import random

import numpy as np
import pytest

from rlsd_min.lab import stats

A = [0.80, 0.82, 0.79, 0.81, 0.83]


@pytest.mark.parametrize("t", [-30.0, -2.5, -0.3, 0.0, 0.7, 4.0])
def test_t_cdf_matches_the_closed_forms_of_one_and_two_degrees_of_freedom(t):
    assert stats.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, abs=1e-12)        # Cauchy
    assert stats.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)


@pytest.mark.parametrize("q, df, table", [(0.975, 8, 2.306), (0.8, 8, 0.889), (0.975, 4, 2.776),
                                          (0.975, 30, 2.042), (0.95, 10, 1.812), (0.975, 1, 12.706)])
def test_t_quantiles_match_the_printed_table(q, df, table):
    assert stats.t_ppf(q, df) == pytest.approx(table, abs=1e-3)
    assert stats.t_ppf(1 - q, df) == pytest.approx(-table, abs=1e-3)


def test_t_quantile_of_two_degrees_of_freedom_is_exact():
    for q in (0.6, 0.9, 0.975, 0.999):
        assert stats.t_ppf(q, 2) == pytest.approx((2 * q - 1) / math.sqrt(2 * q * (1 - q)), rel=1e-8)


def test_welch_statistic_and_degrees_of_freedom_match_a_hand_computation():
    a, b = [1, 2, 3, 4, 5], [2, 4, 6]                 # means 3, 4; variances 2.5, 4
    va, vb = 2.5 / 5, 4 / 3
    t, df, p = stats.welch(a, b)
    assert t == pytest.approx(-1 / math.sqrt(va + vb), rel=1e-12)                  # -0.7385
    assert df == pytest.approx((va + vb) ** 2 / (va ** 2 / 4 + vb ** 2 / 2), rel=1e-12)   # 3.533
    assert p == pytest.approx(2 * stats.t_cdf(t, df), rel=1e-12)
    assert 0.5 < p < 0.55                                                          # |t| = 0.74 on 3.5 df


def test_welch_without_spread_is_exact():
    assert stats.welch([1, 1], [1, 1]) == (0.0, 2.0, 1.0)
    t, df, p = stats.welch([2, 2], [1, 1, 1])
    assert t == math.inf and p == 0.0 and df == 3.0


def test_mde_matches_a_hand_computation():
    # sd 1, 5 seeds each: Welch's df = (0.4)^2 / (2 * 0.2^2 / 4) = 8; t_{0.975,8} = 2.306, t_{0.8,8} = 0.889
    assert stats.mde(1.0, 1.0, 5, 5) == pytest.approx((2.306 + 0.889) * math.sqrt(2 / 5), abs=2e-3)   # 2.021
    assert stats.mde(0.02, 0.02, 5, 5) == pytest.approx(0.02 * stats.mde(1.0, 1.0, 5, 5), rel=1e-9)
    assert stats.mde(1.0, 1.0, 10, 10) < stats.mde(1.0, 1.0, 5, 5)
    assert stats.mde(1.0, 1.0, 5, 5, alpha=0.05 / 10) > stats.mde(1.0, 1.0, 5, 5)   # a stricter level


def test_an_effect_of_one_mde_is_detected_about_80_percent_of_the_time():
    rng = np.random.default_rng(0)
    delta = stats.mde(1.0, 1.0, 5, 5)
    hits = [stats.welch(rng.normal(delta, 1, 5), rng.normal(0, 1, 5))[2] < 0.05 for _ in range(2000)]
    assert np.mean(hits) == pytest.approx(0.8, abs=0.04)


def test_the_bisected_seed_counts_equal_a_scan_of_every_count():
    rng = random.Random(5)
    for _ in range(40):
        diff, sd_a, sd_b, sd_d = (rng.uniform(0.001, 0.05) for _ in range(4))
        scan = next((n for n in range(2, 301) if stats.mde(sd_a, sd_b, n, n) <= diff), None)
        assert stats.seeds_needed(diff, sd_a, sd_b, most=300) == scan
        scan = next((n for n in range(2, 301) if stats.paired_mde(sd_d, n) <= diff), None)
        assert stats.paired_seeds_needed(diff, sd_d, most=300) == scan
    assert stats.fewest(lambda n: n >= 7, 10) == 7 and stats.fewest(lambda n: True, 10) == 2
    assert stats.fewest(lambda n: False, 10) is None


def test_seeds_needed_inverts_the_mde():
    assert stats.seeds_needed(stats.mde(1.0, 1.0, 5, 5) + 1e-9, 1.0, 1.0) == 5
    assert stats.seeds_needed(0.0, 1.0, 1.0) is None
    assert stats.seeds_needed(1e-6, 1.0, 1.0, most=50) is None


def test_bootstrap_is_reproducible_from_its_seed():
    b = [0.75, 0.78, 0.80, 0.74, 0.77]
    assert stats.bootstrap_ci(A, b, seed=3) == stats.bootstrap_ci(A, b, seed=3)
    assert stats.bootstrap_ci(A, b, seed=3) != stats.bootstrap_ci(A, b, seed=4)
    lo, hi = stats.bootstrap_ci(A, b, seed=3)
    assert lo < np.mean(A) - np.mean(b) < hi


NOISE = [0.012, -0.020, 0.005, 0.018, -0.011]
"""per-seed noise of a difference: mean 0.0008, sd 0.016"""


def test_identical_pairs_give_an_interval_exactly_at_zero_p_one_and_inconclusive():
    c = stats.compare(A, list(A))
    assert (c.diff, c.ci_low, c.ci_high) == (0.0, 0.0, 0.0)
    assert c.p == 1.0 and c.p_flip == 1.0 and c.p_improve == 0.5 and c.verdict == "inconclusive"
    assert c.seeds_needed is None                                          # a difference of 0 never settles
    assert c.u_ci_low < 0 < c.u_ci_high                                    # unpaired: the seeds' own spread


def test_strongly_correlated_pairs_give_a_narrower_interval_than_unpaired():
    rng = np.random.default_rng(1)
    seed_effect = rng.normal(0.7, 0.03, 10)                                 # shared by both labels of a seed
    a, b = seed_effect + 0.01 + rng.normal(0, 0.003, 10), seed_effect + rng.normal(0, 0.003, 10)
    assert np.corrcoef(a, b)[0, 1] > 0.9
    c = stats.compare(list(a), list(b))
    assert c.ci_high - c.ci_low < 0.5 * (c.u_ci_high - c.u_ci_low)
    assert c.mde < 0.5 * c.u_mde and c.p < c.u_p
    assert c.verdict == "reproduced" and c.u_p_holm > 0.05                   # pairing settles what Welch cannot


def test_the_pairs_are_the_seeds_both_sides_have():
    a = {0: 0.5, 1: 0.6, 2: 0.7, 7: 0.9}
    b = {1: 0.5, 2: 0.6, 7: 0.7, 9: 0.1}
    seeds, va, vb = stats.pairs(a, b)
    assert seeds == [1, 2, 7] and va.tolist() == [0.6, 0.7, 0.9] and vb.tolist() == [0.5, 0.6, 0.7]
    c = stats.compare(a, b)
    assert c.n == 3 and c.seeds == [1, 2, 7] and (c.n_a, c.n_b) == (4, 4)
    assert c.diff == pytest.approx((0.1 + 0.1 + 0.2) / 3, abs=1e-12)
    with pytest.raises(ValueError, match="at least 2 seeds both sides have"):
        stats.compare({0: 0.5, 1: 0.6}, {1: 0.5, 2: 0.6})


def test_the_paired_bootstrap_resamples_seeds_together():
    c = stats.compare([x + 0.03 for x in A], A)                             # every difference 0.03
    assert c.ci_low == pytest.approx(0.03, abs=1e-12) and c.ci_high == pytest.approx(0.03, abs=1e-12)
    assert c.p == 0.0 and c.t == math.inf and c.verdict == "reproduced"
    d = np.random.default_rng(0).normal(0.0, 0.02, 12).tolist()
    assert stats.paired_bootstrap_ci(d, seed=3) == stats.paired_bootstrap_ci(d, seed=3)
    assert stats.paired_bootstrap_ci(d, seed=3) != stats.paired_bootstrap_ci(d, seed=4)


def _t_sf_by_integration(t: float, df: int) -> float:
    """P(T > t) for t >= 0: 1/2 minus Simpson's rule on Student's density over [0, t], float64."""
    x = np.linspace(0.0, t, 200_001)
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    f = np.exp(log_c - (df + 1) / 2 * np.log1p(x * x / df))
    h = x[1] - x[0]
    return 0.5 - h / 3 * (f[0] + f[-1] + 4 * f[1:-1:2].sum() + 2 * f[2:-1:2].sum())


@pytest.mark.parametrize("seed", range(5))
def test_paired_t_matches_an_independent_float64_computation(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(3, 25))
    a = rng.normal(0.7, 0.02, n)
    b = a - rng.normal(0.005, 0.01, n)
    d = [float(x) - float(y) for x, y in zip(a, b)]
    mean = math.fsum(d) / n
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in d) / (n - 1))
    t_ref = mean / (sd / math.sqrt(n))
    t, df, p = stats.paired_t(d)
    assert t == pytest.approx(t_ref, rel=1e-12) and df == n - 1
    assert p == pytest.approx(2 * _t_sf_by_integration(abs(t_ref), n - 1), abs=1e-9)
    c = stats.compare(list(a), list(b))
    assert (c.t, c.p) == pytest.approx((t, p), rel=1e-9)


def test_sign_flip_of_five_positive_pairs_is_one_in_32_one_sided():
    d = [0.01, 0.02, 0.005, 0.03, 0.015]
    assert stats.sign_flip_p(d, "greater") == (1 / 32, 32)                  # only the observed signs reach it
    assert stats.sign_flip_p(d, "two-sided") == (2 / 32, 32)                # and its mirror image
    assert stats.sign_flip_p(d, "less") == (1.0, 32)
    assert stats.sign_flip_p([-x for x in d], "less") == (1 / 32, 32)


def test_sign_flip_enumerates_every_pattern_exactly():
    d = [0.3, -0.1, 0.25, 0.05, -0.2, 0.4]
    s = sum(d)
    sums = [sum(e * x for e, x in zip(signs, d)) for signs in itertools.product((1, -1), repeat=len(d))]
    assert stats.sign_flip_p(d, "greater")[0] == pytest.approx(sum(x >= s - 1e-12 for x in sums) / 64)
    assert stats.sign_flip_p(d, "two-sided")[0] == pytest.approx(sum(abs(x) >= abs(s) - 1e-12 for x in sums) / 64)
    assert stats.sign_flip_p([0.0] * 4) == (1.0, 16)


def test_sign_flip_beyond_twenty_pairs_is_a_seeded_monte_carlo_near_the_exact_value():
    d = np.random.default_rng(2).normal(0.004, 0.02, 22)
    exact = float(np.mean(np.abs(np.array(list(itertools.product((1.0, -1.0), repeat=11))) @ d[:11, None]
                                 + (np.array(list(itertools.product((1.0, -1.0), repeat=11))) @ d[11:, None]).T)
                          >= abs(d.sum()) - 1e-12))                            # all 2^22 patterns, in two halves
    p, flips = stats.sign_flip_p(d)
    assert flips == stats.N_FLIPS and p == stats.sign_flip_p(d)[0] and p != stats.sign_flip_p(d, seed=1)[0]
    assert p == pytest.approx(exact, abs=0.005)


def test_paired_mde_and_seeds_to_settle_match_a_hand_computation():
    # sd_d 1, 5 pairs: t_{0.975,4} = 2.776, t_{0.8,4} = 0.941 -> (2.776 + 0.941) / sqrt(5) = 1.662
    assert stats.paired_mde(1.0, 5) == pytest.approx((2.776 + 0.941) / math.sqrt(5), abs=1e-3)
    assert stats.paired_mde(0.011, 5) == pytest.approx(0.011 * stats.paired_mde(1.0, 5), rel=1e-9)
    # |d| = sd_d = 0.011: 9 pairs give (t_{0.975,8} + t_{0.8,8}) / 3 = (2.306 + 0.889) / 3 = 1.065 > 1,
    # 10 pairs (2.262 + 0.883) / sqrt(10) = 0.9945 <= 1: ten paired seeds settle it
    assert stats.paired_seeds_needed(0.011, 0.011) == 10
    assert stats.paired_mde(0.011, 10) <= 0.011 < stats.paired_mde(0.011, 9)
    assert stats.paired_seeds_needed(0.0, 0.011) is None and stats.paired_seeds_needed(0.01, 0.0) == 2
    assert stats.paired_seeds_needed(1e-6, 1.0, most=50) is None


def test_an_effect_of_one_paired_mde_is_detected_about_80_percent_of_the_time():
    rng = np.random.default_rng(0)
    delta = stats.paired_mde(1.0, 8)
    hits = [stats.paired_t(rng.normal(delta, 1, 8))[2] < 0.05 for _ in range(2000)]
    assert np.mean(hits) == pytest.approx(0.8, abs=0.04)


def test_a_large_shift_is_detected_in_the_right_direction_and_the_other_way_is_contradicted():
    better = [x + 0.1 + e for x, e in zip(A, NOISE)]
    up = stats.compare(better, A)
    assert up.verdict == "reproduced" and up.ci_low > 0 and up.p < 1e-3 and up.p_improve == 1.0
    assert stats.compare(A, better).verdict == "contradicted"
    assert stats.compare(A, better, lower=True).verdict == "reproduced"            # fewer steps, say
    assert stats.compare(better, A, lower=True).verdict == "contradicted"


def test_a_shift_within_the_noise_is_inconclusive():
    c = stats.compare([x + 0.002 + e for x, e in zip(A, NOISE)], A)
    assert c.ci_low < 0 < c.ci_high and c.verdict == "inconclusive" and c.p_improve == 0.6


def test_holm_matches_a_hand_computation():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.04 -> 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.2]) == [0.2] and stats.holm([0.6, 0.7]) == [1.0, 1.0]


def test_judge_corrects_every_test_for_the_number_of_claims():
    a = [x + 0.021 + e for x, e in zip(A, NOISE)]                                  # paired p = 0.038 alone
    alone = stats.compare(a, A)
    family = stats.judge([stats.compare(a, A)] + [stats.compare(A, list(A)) for _ in range(9)])
    assert alone.verdict == "reproduced" and family[0].verdict == "inconclusive"
    assert family[0].p_holm == pytest.approx(10 * alone.p) and family[0].u_p_holm == pytest.approx(min(1, 10 * alone.u_p))
    assert family[0].p_flip_holm == pytest.approx(min(1, 10 * alone.p_flip))
    assert family[0].mde == pytest.approx(stats.paired_mde(alone.sd_d, 5, alpha=0.005))
    assert family[0].u_mde == pytest.approx(stats.mde(alone.sd_a, alone.sd_b, 5, 5, alpha=0.005))
    assert family[0].seeds_needed == stats.paired_seeds_needed(alone.diff, alone.sd_d, alpha=0.005)


def test_the_bootstrap_alone_is_too_narrow_for_five_seeds_and_the_test_guards_the_verdict():
    c = stats.compare([x + 0.004 + e / 4 for x, e in zip(A, NOISE)], A)
    assert c.ci_low > 0 and c.p > 0.05 and c.verdict == "inconclusive"


def test_auc_is_the_mean_of_the_curve_over_training():
    assert stats.auc([0, 10, 20], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    assert stats.auc([0, 100], [0.4, 0.4]) == pytest.approx(0.4)


@pytest.mark.parametrize("call, needle", [
    (lambda: stats.auc([0], [0.5]), "at least 2 points"),
    (lambda: stats.auc([0, 10, 10], [0.1, 0.2, 0.3]), "increasing steps"),
    (lambda: stats.compare([0.5], [0.4, 0.6]), "at least 2 seeds both sides have"),
    (lambda: stats.compare([0.5, float("nan")], [0.4, 0.6]), "non-finite"),
    (lambda: stats.t_ppf(1.0, 3), "quantile level"),
    (lambda: stats.t_cdf(1.0, 0), "degrees of freedom"),
    (lambda: stats.betainc(1, 1, 1.5), "0 <= x <= 1"),
    (lambda: stats.mde(1, 1, 1, 5), "at least 2 seeds"),
    (lambda: stats.paired_mde(1, 1), "at least 2 pairs"),
    (lambda: stats.sign_flip_p([0.1, 0.2], "bigger"), "unknown alternative 'bigger'"),
    (lambda: stats.paired_t([0.1]), "at least 2 values"),
])
def test_bad_input_is_refused_by_name(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()
