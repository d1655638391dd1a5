"""rlsd_min.lab.stats against cases with a known answer: closed forms, tables, hand computations."""

import math

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


def test_identical_samples_give_an_interval_around_zero_and_inconclusive():
    c = stats.compare(A, list(A))
    assert c.diff == 0 and c.ci_low < 0 < c.ci_high and c.ci_low == pytest.approx(-c.ci_high, abs=0.005)
    assert c.p == pytest.approx(1.0) and c.p_improve == 0.5
    assert c.verdict == "inconclusive"


def test_a_large_shift_is_detected_in_the_right_direction_and_the_other_way_is_contradicted():
    better = [x + 0.1 for x in A]
    up = stats.compare(better, A)
    assert up.verdict == "reproduced" and up.ci_low > 0 and up.p < 1e-4 and up.p_improve == 1.0
    assert stats.compare(A, better).verdict == "contradicted"
    assert stats.compare(A, better, lower=True).verdict == "reproduced"            # fewer steps, say
    assert stats.compare(better, A, lower=True).verdict == "contradicted"


def test_a_shift_within_the_noise_is_inconclusive():
    noisy = [0.70, 0.90, 0.75, 0.88, 0.80]
    assert stats.compare([x + 0.01 for x in noisy], noisy).verdict == "inconclusive"


def test_holm_matches_a_hand_computation():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone 0.04 -> 0.06
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.2]) == [0.2] and stats.holm([0.6, 0.7]) == [1.0, 1.0]


def test_judge_corrects_for_the_number_of_claims():
    a = [x + 0.03 for x in A]                                                       # p = 0.017 alone
    alone = stats.compare(a, A)
    family = stats.judge([stats.compare(a, A)] + [stats.compare(A, list(A)) for _ in range(9)])
    assert alone.verdict == "reproduced" and family[0].verdict == "inconclusive"
    assert family[0].p_holm == pytest.approx(10 * alone.p)
    assert family[0].mde == pytest.approx(stats.mde(alone.sd_a, alone.sd_b, 5, 5, alpha=0.005))


def test_the_bootstrap_alone_is_too_narrow_for_five_seeds_and_the_test_guards_the_verdict():
    c = stats.compare([x + 0.02 for x in A], A)
    assert c.ci_low > 0 and c.p > 0.05 and c.verdict == "inconclusive"


def test_probability_of_improvement_counts_ties_half():
    assert stats.prob_improvement([1, 2, 3], [2, 2]) == pytest.approx(0.5)
    assert stats.prob_improvement([3, 4], [1, 2]) == 1.0


def test_auc_is_the_mean_of_the_curve_over_training():
    assert stats.auc([0, 10, 20], [0.0, 1.0, 1.0]) == pytest.approx(0.75)
    assert stats.auc([0, 100], [0.4, 0.4]) == pytest.approx(0.4)


@pytest.mark.parametrize("call, needle", [
    (lambda: stats.auc([0], [0.5]), "at least 2 points"),
    (lambda: stats.auc([0, 10, 10], [0.1, 0.2, 0.3]), "increasing steps"),
    (lambda: stats.compare([0.5], [0.4, 0.6]), "at least 2 values"),
    (lambda: stats.compare([0.5, float("nan")], [0.4, 0.6]), "non-finite"),
    (lambda: stats.t_ppf(1.0, 3), "quantile level"),
    (lambda: stats.t_cdf(1.0, 0), "degrees of freedom"),
    (lambda: stats.betainc(1, 1, 1.5), "0 <= x <= 1"),
    (lambda: stats.mde(1, 1, 1, 5), "at least 2 seeds"),
])
def test_bad_input_is_refused_by_name(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()
