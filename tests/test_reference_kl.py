"""Schulman's k1/k2/k3 reference-KL estimators (docs/grpo.md, docs/sdpg.md)."""

import pytest
import torch

from rlsd_min import kl_penalty
from rlsd_min.reference_kl import ESTIMATORS, SDPG_NAMES


def _random_logps(n=(16, 12), seed=0):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(n, generator=g, dtype=torch.float64) * 6        # log-probs in (-6, 0]
    ref = -torch.rand(n, generator=g, dtype=torch.float64) * 6
    return logp, ref


def test_k1_k2_k3_match_their_formulas_float64():
    logp, ref = _random_logps()
    l = logp - ref
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), l, rtol=0, atol=1e-12)
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), l * l / 2, rtol=0, atol=1e-12)
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), torch.exp(-l) - 1 + l, rtol=1e-12, atol=1e-12)
    assert kl_penalty(logp, ref, "k1").dtype == torch.float64


def test_hand_values():
    # l = log 2: k1 = 0.693147, k2 = 0.240227, k3 = 1/2 - 1 + 0.693147 = 0.193147
    logp, ref = torch.tensor([0.0]), torch.tensor([-0.6931472])
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(0.6931472, abs=1e-6)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.2402265, abs=1e-6)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.1931472, abs=1e-6)
    assert kl_penalty(ref, ref, "k3").item() == 0.0


def test_default_estimator_is_k3():
    logp, ref = _random_logps(seed=3)
    assert torch.equal(kl_penalty(logp, ref), kl_penalty(logp, ref, "k3"))


def test_k3_is_nonnegative_float64():
    l = torch.linspace(-30, 30, 20001, dtype=torch.float64)
    assert (kl_penalty(l, torch.zeros_like(l), "k3") >= 0).all()
    logp, ref = _random_logps((200, 50), seed=1)
    assert (kl_penalty(logp, ref, "k3") >= 0).all()
    # k1 on the same inputs does go negative: the check above is not vacuous
    assert (kl_penalty(logp, ref, "k1") < 0).any()


def test_k3_is_nonnegative_float32_away_from_zero():
    logp, ref = _random_logps((200, 50), seed=1)
    logp, ref = logp.float(), ref.float()
    far = (logp - ref).abs() > 1e-2
    assert far.float().mean() > 0.9
    assert (kl_penalty(logp, ref, "k3")[far] >= 0).all()


def test_k3_is_nonnegative_in_float32_near_zero():
    """k3 stays >= 0 in float32 for tiny l (expm1(-l) + l; exp(-l) - 1 + l cancels; regression)."""
    l = torch.linspace(-1e-2, 1e-2, 20001)                       # float32
    k3 = kl_penalty(l, torch.zeros_like(l), "k3")
    assert (k3 >= 0).all(), f"min {k3.min().item():.3g} at l = {l[k3.argmin()].item():.3g}"
    exact = 0.5 * l.double() ** 2 - l.double() ** 3 / 6 + l.double() ** 4 / 24
    assert (k3.double() - exact).abs().max() < 1e-9


def test_k1_and_k3_unbiased_for_kl_by_monte_carlo():
    """Sample tokens y ~ p; mean of the estimator -> KL(p || q) within a few standard errors."""
    g = torch.Generator().manual_seed(0)
    K, n = 8, 400_000
    logp_all = torch.log_softmax(torch.randn(K, generator=g, dtype=torch.float64) * 1.5, 0)
    logq_all = torch.log_softmax(torch.randn(K, generator=g, dtype=torch.float64) * 1.5, 0)
    exact = (logp_all.exp() * (logp_all - logq_all)).sum().item()
    assert exact > 0.1  # a KL big enough that bias would show
    y = torch.multinomial(logp_all.exp(), n, replacement=True, generator=g)
    for est in ("k1", "k3"):
        vals = kl_penalty(logp_all[y], logq_all[y], est)
        se = vals.std().item() / n ** 0.5
        assert abs(vals.mean().item() - exact) < 4 * se, (est, vals.mean().item(), exact, se)
    # k2 is biased: its expectation is E_p[l^2]/2, not KL (and the test can tell them apart)
    l_all = logp_all - logq_all
    k2_expect = (logp_all.exp() * l_all**2 / 2).sum().item()
    vals = kl_penalty(logp_all[y], logq_all[y], "k2")
    se = vals.std().item() / n ** 0.5
    assert abs(vals.mean().item() - k2_expect) < 4 * se
    assert abs(k2_expect - exact) > 10 * se


def test_gradients_wrt_logp():
    logp, ref = _random_logps(seed=2)
    l = (logp - ref).detach()
    expected = {"k1": torch.ones_like(l), "k2": l, "k3": 1 - torch.exp(-l)}
    for est, grad in expected.items():
        x = logp.clone().requires_grad_(True)
        kl_penalty(x, ref, est).sum().backward()
        torch.testing.assert_close(x.grad, grad, rtol=1e-12, atol=1e-12, msg=est)


def test_no_gradient_into_ref_logp():
    logp, ref = _random_logps(seed=4)
    for est in ("k1", "k2", "k3", "urkl", "ufkl"):
        x = logp.clone().requires_grad_(True)
        r = ref.clone().requires_grad_(True)
        kl_penalty(x, r, est).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        assert r.grad is None or torch.count_nonzero(r.grad) == 0, est


def test_sdpg_aliases():
    logp, ref = _random_logps(seed=5)
    assert torch.equal(kl_penalty(logp, ref, "urkl"), kl_penalty(logp, ref, "k2"))
    assert torch.equal(kl_penalty(logp, ref, "ufkl"), kl_penalty(logp, ref, "k3"))
    # ufkl = exp(-l) + l differs from k3 only by the constant 1: same gradient
    assert not torch.equal(kl_penalty(logp, ref, "urkl"), kl_penalty(logp, ref, "ufkl"))


def test_unknown_estimator_names_the_bad_value():
    logp, ref = _random_logps(seed=6)
    with pytest.raises(ValueError, match="'k4'"):
        kl_penalty(logp, ref, "k4")


def test_sdpg_code_normalised_variants_match_their_formulas_and_gradients():
    """fkl = pi_ref/pi_theta = exp(-l), rkl = (l+1)^2/2 (SDPG's released code); their gradients
    differ from k3's / k2's by exactly -grad l / +grad l."""
    g = torch.Generator().manual_seed(11)
    logp = torch.randn(5, 7, generator=g, dtype=torch.float64).requires_grad_()
    ref = torch.randn(5, 7, generator=g, dtype=torch.float64)
    l = (logp - ref).detach()
    torch.testing.assert_close(kl_penalty(logp, ref, "fkl"), torch.exp(-l))
    torch.testing.assert_close(kl_penalty(logp, ref, "rkl"), 0.5 * (l + 1) ** 2)
    grads = {e: torch.autograd.grad(kl_penalty(logp, ref, e).sum(), logp)[0] for e in ("fkl", "rkl", "k2", "k3")}
    torch.testing.assert_close(grads["fkl"], grads["k3"] - 1.0)
    torch.testing.assert_close(grads["rkl"], grads["k2"] + 1.0)


@pytest.mark.parametrize("estimator", ESTIMATORS + tuple(SDPG_NAMES))
def test_gradcheck_wrt_logp(estimator):
    """torch.autograd.gradcheck in float64 on fresh random log-probs, for every estimator and
    SDPG name (none has a kink); ref_logp is a constant."""
    g = torch.Generator().manual_seed(100 + len(estimator) + sum(map(ord, estimator)))
    logp = (-torch.rand(3, 4, generator=g, dtype=torch.float64) * 4).requires_grad_()
    ref = -torch.rand(3, 4, generator=g, dtype=torch.float64) * 4
    assert torch.autograd.gradcheck(lambda x: kl_penalty(x, ref, estimator), (logp,))
