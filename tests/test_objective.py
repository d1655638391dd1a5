"""The loss template's pieces: token aggregation and the PPO clipped surrogate."""

import pytest
import torch

from rlsd_min.objective import aggregate, clipped_surrogate

X = torch.tensor([[1.0, 2, 3, 4], [5, 6, 7, 8], [1, 1, 1, 1], [2, 2, 2, 2]])
MASK = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 1, 0]])
# masked sums per row: 3, 26, 1, 6; tokens per row: 2, 4, 1, 3


def test_token_mean_hand():
    assert aggregate(X, MASK, "token-mean", 2).item() == pytest.approx(36 / 10)


def test_seq_mean_hand():
    assert aggregate(X, MASK, "seq-mean", 2).item() == pytest.approx((3 / 2 + 26 / 4 + 1 / 1 + 6 / 3) / 4)


def test_group_token_mean_hand():
    # groups of 2 rows: (3 + 26) / (2 + 4) and (1 + 6) / (1 + 3), then the mean over groups
    assert aggregate(X, MASK, "group-token-mean", 2).item() == pytest.approx((29 / 6 + 7 / 4) / 2)
    # with one group of 4 it is the token mean
    assert aggregate(X, MASK, "group-token-mean", 4).item() == pytest.approx(36 / 10)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean", "group-token-mean"])
def test_masked_positions_never_count(mode):
    garbage = X.clone()
    garbage[MASK == 0] = 1e6
    assert aggregate(garbage, MASK, mode, 2).item() == pytest.approx(aggregate(X, MASK, mode, 2).item())
    x = X.clone().requires_grad_(True)
    aggregate(x, MASK, mode, 2).backward()
    assert (x.grad[MASK == 0] == 0).all() and (x.grad[MASK == 1] > 0).all()


def test_modes_differ_on_unequal_lengths():
    vals = {m: aggregate(X, MASK, m, 2).item() for m in ("token-mean", "seq-mean", "group-token-mean")}
    assert len({round(v, 6) for v in vals.values()}) == 3


def test_a_gate_on_x_keeps_gated_tokens_in_the_denominator():
    gate = torch.tensor([1.0, 0.0, 1.0, 0.0])[:, None]                     # rows 1 and 3 gated out
    assert aggregate(X * gate, MASK, "group-token-mean", 2).item() == pytest.approx((3 / 6 + 1 / 4) / 2)


def test_unknown_aggregation_names_the_bad_value():
    with pytest.raises(ValueError, match="'sum'"):
        aggregate(X, MASK, "sum", 2)


# --- clipped surrogate ----------------------------------------------------------------------

def _random_case(seed=0, n=(64, 20), adv_shape="token"):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(n, generator=g) * 4
    logp = old + (torch.rand(n, generator=g) - 0.5) * 1.2                 # ratios in about [0.55, 1.8]
    shape = n if adv_shape == "token" else (n[0], 1)
    adv = torch.randn(shape, generator=g)
    return logp, old, adv


def _reference(logp, old, adv, eps_low, eps_high, dual_clip=None):
    r = torch.exp(logp.double() - old.double())
    a = adv.double().expand_as(r)
    unclipped, clipped = r * a, r.clamp(1 - eps_low, 1 + eps_high) * a
    obj = torch.minimum(unclipped, clipped)
    if dual_clip is not None:
        obj = torch.where(a < 0, torch.maximum(obj, dual_clip * a), obj)
    return -obj


@pytest.mark.parametrize("adv_shape", ["token", "sequence"])
@pytest.mark.parametrize("eps_low, eps_high", [(0.2, 0.2), (0.2, 0.28), (0.1, 0.5)])
def test_clipped_surrogate_matches_float64_formula(adv_shape, eps_low, eps_high):
    logp, old, adv = _random_case(adv_shape=adv_shape)
    loss, clipped = clipped_surrogate(logp, old, adv, eps_low, eps_high)
    assert loss.shape == logp.shape and clipped.dtype == torch.bool
    torch.testing.assert_close(loss.double(), _reference(logp, old, adv, eps_low, eps_high), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dual_clip", [None, 3.0])
def test_clip_flags_exactly_where_the_gradient_is_removed(dual_clip):
    logp, old, adv = _random_case(seed=1, n=(200, 10))
    x = logp.clone().requires_grad_(True)
    loss, clipped = clipped_surrogate(x, old, adv, 0.2, 0.28, dual_clip)
    loss.sum().backward()
    r = torch.exp(logp.double() - old.double())
    a = adv.double()
    # independent definition: the clipped branch is strictly smaller than the unclipped one
    expected = r.clamp(0.8, 1.28) * a < r * a
    assert torch.equal(clipped, expected)
    assert 0.05 < clipped.float().mean() < 0.5                      # both cases occur
    assert (x.grad[clipped] == 0).all()
    free = ~clipped
    torch.testing.assert_close(x.grad[free].double(), (-r * a)[free], rtol=1e-5, atol=1e-6)
    # sign rule: clipped tokens are ratio < 1 - eps_low with A < 0, or ratio > 1 + eps_high with A > 0
    rule = ((r < 0.8) & (a < 0)) | ((r > 1.28) & (a > 0))
    assert torch.equal(clipped, rule)


def test_ratio_one_gives_minus_advantage_and_policy_gradient():
    g = torch.Generator().manual_seed(2)
    N, T, V = 6, 5, 7
    theta = torch.randn(N, T, V, generator=g, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, V, (N, T), generator=g)
    adv = torch.randn(N, 1, generator=g, dtype=torch.float64)
    logp = torch.log_softmax(theta, -1).gather(-1, tokens[..., None]).squeeze(-1)
    loss, clipped = clipped_surrogate(logp, logp.detach(), adv, 0.2, 0.2)
    assert not clipped.any()
    torch.testing.assert_close(loss, -adv.expand(N, T))
    (grad,) = torch.autograd.grad(loss.sum(), theta, retain_graph=True)
    (pg,) = torch.autograd.grad(-(adv * logp).sum(), theta)       # -A * grad log pi
    torch.testing.assert_close(grad, pg, rtol=1e-12, atol=1e-12)
    assert grad.abs().sum() > 0


def test_old_logp_gets_no_gradient():
    logp, old, adv = _random_case(seed=3)
    x, o = logp.clone().requires_grad_(True), old.clone().requires_grad_(True)
    clipped_surrogate(x, o, adv, 0.2, 0.2)[0].sum().backward()
    assert o.grad is None or torch.count_nonzero(o.grad) == 0


def test_dual_clip_bounds_the_loss_for_negative_advantages():
    C = 3.0
    ratios = torch.tensor([0.5, 1.0, 2.0, 2.9, 3.5, 10.0, 100.0])
    logp = torch.log(ratios)
    old = torch.zeros_like(logp)
    neg = -torch.full_like(logp, 2.0)                                   # A = -2, |A| = 2
    loss, clipped = clipped_surrogate(logp, old, neg, 0.2, 0.2, dual_clip=C)
    # hand values: max(r, clip(r)) * |A| capped at C * |A| = 6
    torch.testing.assert_close(loss, torch.tensor([1.6, 2.0, 4.0, 5.8, 6.0, 6.0, 6.0]))
    assert (loss <= C * 2.0 + 1e-6).all()
    assert clipped.tolist() == [True, False, False, False, True, True, True]
    # without the dual clip the loss grows with the ratio
    plain, _ = clipped_surrogate(logp, old, neg, 0.2, 0.2)
    assert plain[-1].item() == pytest.approx(200.0)
    # positive advantages are untouched by the dual clip
    pos = torch.full_like(logp, 2.0)
    a, _ = clipped_surrogate(logp, old, pos, 0.2, 0.2, dual_clip=C)
    b, _ = clipped_surrogate(logp, old, pos, 0.2, 0.2)
    assert torch.equal(a, b)


def test_dual_clip_random_inputs_against_reference():
    logp, old, adv = _random_case(seed=4, n=(100, 10))
    logp = old + (logp - old) * 3                                       # ratios up to ~ e^1.8
    loss, _ = clipped_surrogate(logp, old, adv, 0.2, 0.28, dual_clip=3.0)
    torch.testing.assert_close(loss.double(), _reference(logp, old, adv, 0.2, 0.28, 3.0), rtol=1e-5, atol=1e-6)
    assert (loss[adv < 0] <= 3.0 * adv.abs()[adv < 0] + 1e-6).all()


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
@pytest.mark.parametrize("mode", ["token-mean", "seq-mean", "group-token-mean"])
def test_a_non_finite_value_at_a_padded_position_does_not_leak(mode, bad):
    """aggregate masks with torch.where, not x * mask: inf * 0 would be nan (e.g. a log-prob of
    -inf, or a divergence of inf, on a pad token after eos). Value and gradient stay finite."""
    x = X.double().clone()
    x[MASK == 0] = bad
    x.requires_grad_(True)
    out = aggregate(x, MASK, mode, 2)
    assert torch.isfinite(out)
    assert out.item() == pytest.approx(aggregate(X.double(), MASK, mode, 2).item(), abs=1e-12)
    out.backward()
    assert torch.isfinite(x.grad).all() and (x.grad[MASK == 0] == 0).all()
    # the multiplication that where replaces would have given nan: the test is not vacuous
    assert torch.isnan((x.detach() * MASK).sum())
