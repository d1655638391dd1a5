"""Group-relative advantages (GRPO, DeepSeekMath; docs/grpo.md), checked against hand computations."""

import math

import pytest
import torch

from rlsd_min import frac_zero_std, group_advantages

# Two groups of G = 4: group 1 mixed, group 2 all correct (zero std).
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0])

# Worked out by hand:
#   group 1: mean 0.5, deviations +-0.5, unbiased var = 4 * 0.25 / 3 = 1/3, std = 0.5773503
#            A = +-0.5 / 0.5773503 = +-0.8660254 (= sqrt(3)/2)
#   group 2: mean 1, deviations 0 -> A = 0
#   whole batch: mean 0.75, unbiased var = (2 * 0.75^2 + 6 * 0.25^2) / 7 = 1.5 / 7,
#            std = 0.4629100; group-centred deviations +-0.5 -> A = +-1.0801234
GROUP_STD = math.sqrt(1 / 3)
BATCH_STD = math.sqrt(1.5 / 7)
SIGNS = [1, -1, -1, 1, 0, 0, 0, 0]


@pytest.mark.parametrize("eps", [1e-6, 1e-4, 0.1])
def test_scale_group_hand_computation(eps):
    adv = group_advantages(REWARDS, 4, "group", eps)
    expected = torch.tensor([s * 0.5 / (GROUP_STD + eps) for s in SIGNS])
    torch.testing.assert_close(adv, expected, rtol=1e-6, atol=1e-7)
    assert adv.shape == (8,)
    # the hand value sqrt(3)/2 = 0.8660254, shrunk by the eps in the denominator
    assert adv[0].item() == pytest.approx(0.8660254 * GROUP_STD / (GROUP_STD + eps), rel=1e-6)


def test_scale_batch_hand_computation():
    adv = group_advantages(REWARDS, 4, "batch", 1e-6)
    expected = torch.tensor([s * 0.5 / (BATCH_STD + 1e-6) for s in SIGNS])
    torch.testing.assert_close(adv, expected, rtol=1e-6, atol=1e-7)
    assert abs(adv[0].item() - 1.0801234) < 1e-5


def test_scale_none_only_centres():
    adv = group_advantages(REWARDS, 4, "none", 1e-6)
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0]))


def test_std_is_unbiased_not_population():
    # G = 2, rewards (1, 0): unbiased std = sqrt(0.5) -> A = 0.5 / 0.7071 = 0.7071;
    # the population std 0.5 would give exactly 1.
    adv = group_advantages(torch.tensor([1.0, 0.0]), 2, "group", 0.0)
    torch.testing.assert_close(adv, torch.tensor([1 / math.sqrt(2), -1 / math.sqrt(2)]))


def test_random_rewards_against_float64_reference():
    g = torch.Generator().manual_seed(0)
    r = torch.randint(0, 2, (48,), generator=g).float()
    G, eps = 6, 1e-4
    ref = r.double().view(-1, G)
    mean = ref.mean(1, keepdim=True)
    std = (((ref - mean) ** 2).sum(1, keepdim=True) / (G - 1)).sqrt()
    expected = ((ref - mean) / (std + eps)).view(-1)
    torch.testing.assert_close(group_advantages(r, G, "group", eps).double(), expected, rtol=1e-5, atol=1e-6)
    # advantages sum to zero within each group
    assert group_advantages(r, G, "group", eps).view(-1, G).sum(1).abs().max() < 1e-5


@pytest.mark.parametrize("scale", ["group", "batch", "none"])
def test_zero_std_group_gives_exactly_zero(scale):
    adv = group_advantages(REWARDS, 4, scale, 1e-6)
    assert torch.equal(adv[4:], torch.zeros(4))
    zeros = group_advantages(torch.zeros(8), 4, scale, 1e-6)
    assert torch.equal(zeros, torch.zeros(8))


@pytest.mark.parametrize("scale", ["group", "batch"])
def test_zero_std_group_with_eps_zero_gives_zero_not_nan(scale):
    """An all-equal group gives A = 0, not 0/0 = NaN, even with eps = 0 (docs/grpo.md; regression)."""
    adv = group_advantages(torch.tensor([1.0, 1.0, 1.0, 1.0]), 4, scale, 0.0)
    assert torch.equal(adv, torch.zeros(4)), adv


def test_rows_of_a_group_are_adjacent():
    # a reordering across groups changes which rows are compared
    r = torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert torch.equal(group_advantages(r, 2, "group"), torch.zeros(4))
    assert group_advantages(torch.tensor([1.0, 0.0, 1.0, 0.0]), 2, "group").abs().min() > 0.5


def test_group_size_below_two_is_an_error():
    with pytest.raises(ValueError, match=r"group_size.*got 1"):
        group_advantages(torch.ones(4), 1)
    with pytest.raises(ValueError, match=r"got 0"):
        group_advantages(torch.ones(4), 0)


def test_n_not_divisible_is_an_error():
    with pytest.raises(ValueError, match=r"\b7\b.*\b4\b"):
        group_advantages(torch.ones(7), 4)


def test_unknown_scale_names_the_bad_value():
    with pytest.raises(ValueError, match="'nope'"):
        group_advantages(REWARDS, 4, "nope")


def test_frac_zero_std():
    r = torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    assert frac_zero_std(r, 4) == pytest.approx(2 / 3)
    assert frac_zero_std(torch.tensor([1.0, 0, 0, 1]), 2) == 0.0
    assert frac_zero_std(torch.ones(6), 3) == 1.0
    with pytest.raises(ValueError):
        frac_zero_std(torch.ones(5), 2)
