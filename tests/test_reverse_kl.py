"""Divergences on sampled prefixes (rlsd_min.reverse_kl) against independent float64 computations."""

import math

import pytest
import torch

from rlsd_min.reverse_kl import (divergence, forward_kl, full_reverse_kl, jsd, sampled_token_advantage)


def _probs(logits):
    return torch.softmax(logits.double(), -1)


def test_full_reverse_kl_equals_definition_in_float64():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(3, 5, 11, generator=g) * 2, torch.randn(3, 5, 11, generator=g) * 2
    p, q = _probs(s), _probs(t)
    expected = torch.zeros(3, 5, dtype=torch.float64)
    for i in range(3):
        for j in range(5):
            expected[i, j] = sum(p[i, j, a] * math.log(p[i, j, a] / q[i, j, a]) for a in range(11))
    got = full_reverse_kl(s, t)
    assert got.shape == (3, 5)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    assert (got >= -1e-6).all()
    assert full_reverse_kl(s, s).abs().max() < 1e-6


def test_chunking_does_not_change_the_result():
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(4, 7, 13, generator=g), torch.randn(4, 7, 13, generator=g)
    for fn in (full_reverse_kl, forward_kl, jsd):
        torch.testing.assert_close(fn(s, t, chunk=3), fn(s, t, chunk=10_000))


def test_gradient_flows_to_the_student_only():
    g = torch.Generator().manual_seed(3)
    s = torch.randn(2, 4, 9, generator=g).requires_grad_()
    t = torch.randn(2, 4, 9, generator=g).requires_grad_()
    full_reverse_kl(s, t).sum().backward()
    assert s.grad is not None and s.grad.abs().sum() > 0
    assert t.grad is None
    # and the gradient is the analytic one: d KL(p||q) / d s_a = p_a (log p_a/q_a - KL)
    p, q = _probs(s.detach()), _probs(t.detach())
    kl = (p * (p.log() - q.log())).sum(-1, keepdim=True)
    torch.testing.assert_close(s.grad.double(), p * (p.log() - q.log() - kl), rtol=1e-4, atol=1e-6)


def test_forward_kl_and_entry_clip():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(2, 3, 6, generator=g) * 3, torch.randn(2, 3, 6, generator=g) * 3
    p, q = _probs(s), _probs(t)
    entries = q * (q.log() - p.log())
    torch.testing.assert_close(forward_kl(s, t).double(), entries.sum(-1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(forward_kl(s, t, entry_clip=0.05).double(),
                               entries.clamp(max=0.05).sum(-1), rtol=1e-5, atol=1e-6)


def test_jsd_matches_definition_and_limits():
    g = torch.Generator().manual_seed(5)
    s, t = torch.randn(2, 3, 6, generator=g), torch.randn(2, 3, 6, generator=g)
    p, q = _probs(s), _probs(t)
    for beta in (0.1, 0.5, 0.9):
        m = beta * q + (1 - beta) * p
        expected = beta * (q * (q / m).log()).sum(-1) + (1 - beta) * (p * (p / m).log()).sum(-1)
        torch.testing.assert_close(jsd(s, t, beta).double(), expected, rtol=1e-5, atol=1e-6)
    # JSD_0.5 is bounded by log 2
    far = torch.tensor([[[20.0, -20.0]]])
    assert jsd(far, -far, 0.5).item() == pytest.approx(math.log(2), abs=1e-4)
    with pytest.raises(ValueError, match="1.5"):
        jsd(s, t, 1.5)


def test_token_clip_and_unknown_divergence():
    s, t = torch.tensor([[[30.0, 0.0]]]), torch.tensor([[[0.0, 30.0]]])
    assert full_reverse_kl(s, t).item() > 20
    assert full_reverse_kl(s, t, token_clip=20.0).item() == pytest.approx(20.0)
    with pytest.raises(ValueError, match="'sideways'"):
        divergence("sideways", s, t)
    with pytest.raises(ValueError, match="same shape"):
        full_reverse_kl(s, torch.zeros(1, 1, 3))


def test_sampled_token_estimator_expected_gradient_matches_full_gradient():
    """SDPG Prop. 3.1: -grad KL(p||q) = E_{a~p}[ sg(KL - log p(a)/q(a)) grad log p(a) ].

    Monte Carlo over a ~ p with the estimator's advantage sg[log q(a) - log p(a)] (the
    constant KL baseline does not change the expectation); compared to the exact
    gradient within 5 standard errors, on fresh random logits.
    """
    g = torch.Generator().manual_seed(6)
    V, n = 7, 200_000
    s = torch.randn(V, generator=g, dtype=torch.float64).requires_grad_()
    t = torch.randn(V, generator=g, dtype=torch.float64)
    exact = torch.autograd.grad(-full_reverse_kl(s[None, None], t[None, None]).sum(), s)[0]

    log_p = torch.log_softmax(s, -1)
    a = torch.multinomial(log_p.exp().detach(), n, replacement=True, generator=g)         # (n,)
    adv = sampled_token_advantage(log_p[a], torch.log_softmax(t, -1)[a])                 # (n,)
    # per-sample gradient of adv * log p(a) w.r.t. the logits: adv * (onehot(a) - p)
    per_sample = adv[:, None] * (torch.nn.functional.one_hot(a, V) - log_p.exp().detach())  # (n, V)
    mean, se = per_sample.mean(0), per_sample.std(0) / math.sqrt(n)
    assert ((mean - exact).abs() <= 5 * se + 1e-9).all(), (mean, exact, se)
    # and the estimator is not trivially zero: the gradient is informative
    assert exact.abs().max() > 10 * se.max()


# --- dtypes -------------------------------------------------------------------------------

def _reference_divergences(s, t, beta=0.5, entry_clip=None):
    """Float64 definitions written out: reverse KL, forward KL (entries clipped at entry_clip), JSD_beta."""
    p, q = _probs(s), _probs(t)
    entries = q * (q.log() - p.log())
    if entry_clip is not None:
        entries = entries.clamp(max=entry_clip)
    m = beta * q + (1 - beta) * p
    return {"reverse": (p * (p.log() - q.log())).sum(-1), "forward": entries.sum(-1),
            "jsd": beta * (q * (q / m).log()).sum(-1) + (1 - beta) * (p * (p / m).log()).sum(-1)}


def test_float64_in_gives_float64_out_matching_a_float64_reference():
    """float64 logits are not downcast to float32 (regression: _chunked used .float())."""
    g = torch.Generator().manual_seed(7)
    s = torch.randn(3, 5, 11, generator=g, dtype=torch.float64) * 3
    t = torch.randn(3, 5, 11, generator=g, dtype=torch.float64) * 3
    expected = _reference_divergences(s, t, beta=0.3)
    for name in ("reverse", "forward", "jsd"):
        got = divergence(name, s, t, jsd_beta=0.3)
        assert got.dtype == torch.float64, name
        # float32 rounding would leave errors around 1e-7; float64 agrees to ~1e-15
        torch.testing.assert_close(got, expected[name], rtol=1e-12, atol=1e-13, msg=name)
    torch.testing.assert_close(forward_kl(s, t, entry_clip=0.05),
                               _reference_divergences(s, t, entry_clip=0.05)["forward"], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_half_precision_is_upcast_to_float32_and_float32_stays(dtype):
    g = torch.Generator().manual_seed(8)
    s, t = torch.randn(2, 3, 9, generator=g).to(dtype), torch.randn(2, 3, 9, generator=g).to(dtype)
    expected = _reference_divergences(s, t)
    for name in ("reverse", "forward", "jsd"):
        got = divergence(name, s, t)
        assert got.dtype == torch.float32, (name, dtype)
        torch.testing.assert_close(got.double(), expected[name], rtol=1e-5, atol=1e-6, msg=name)


# --- gradcheck (float64, fresh random inputs) ------------------------------------------------

def _gradcheck_inputs(seed, shape=(2, 3, 5), scale=2.0):
    g = torch.Generator().manual_seed(seed)
    s = (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()
    t = torch.randn(*shape, generator=g, dtype=torch.float64) * scale
    return s, t


@pytest.mark.parametrize("seed", range(3))
def test_gradcheck_full_reverse_kl(seed):
    s, t = _gradcheck_inputs(seed)
    assert torch.autograd.gradcheck(lambda x: full_reverse_kl(x, t), (s,))


@pytest.mark.parametrize("seed", range(3))
def test_gradcheck_full_reverse_kl_with_token_clip(seed):
    """The clip sits halfway between two neighbouring token values, far from every kink;
    some tokens are clipped (zero gradient) and some are not."""
    s, t = _gradcheck_inputs(seed, shape=(3, 4, 5), scale=3.0)
    values = full_reverse_kl(s, t).detach().flatten().sort().values            # (12,)
    k = int(values.diff()[3:-3].argmax()) + 3                                   # a wide gap in the middle
    clip = float(values[k] + values[k + 1]) / 2
    assert (values - clip).abs().min() > 1e-3
    assert (values > clip).any() and (values < clip).any()
    assert torch.autograd.gradcheck(lambda x: full_reverse_kl(x, t, token_clip=clip), (s,))


@pytest.mark.parametrize("seed", range(3))
def test_gradcheck_forward_kl(seed):
    s, t = _gradcheck_inputs(seed)
    assert torch.autograd.gradcheck(lambda x: forward_kl(x, t), (s,))


@pytest.mark.parametrize("seed", range(3))
def test_gradcheck_forward_kl_with_entry_clip(seed):
    """tau away from every entry l_{t,a}; some entries clipped, some not."""
    s, t = _gradcheck_inputs(seed, scale=3.0)
    p, q = _probs(s.detach()), _probs(t)
    entries = (q * (q.log() - p.log())).flatten().sort().values
    k = int(entries.diff()[5:-5].argmax()) + 5
    tau = float(entries[k] + entries[k + 1]) / 2
    assert (entries - tau).abs().min() > 1e-4
    assert (entries > tau).any() and (entries < tau).any()
    assert torch.autograd.gradcheck(lambda x: forward_kl(x, t, entry_clip=tau), (s,))


@pytest.mark.parametrize("beta", [0.1, 0.5, 0.8])
def test_gradcheck_jsd(beta):
    s, t = _gradcheck_inputs(int(beta * 10))
    assert torch.autograd.gradcheck(lambda x: jsd(x, t, beta), (s,))


@pytest.mark.parametrize("name", ["reverse", "forward", "jsd"])
def test_gradcheck_divergence_dispatcher(name):
    s, t = _gradcheck_inputs(20 + len(name))
    assert torch.autograd.gradcheck(lambda x: divergence(name, x, t, jsd_beta=0.3), (s,))
    # and the dispatcher's value is the named function's
    direct = {"reverse": full_reverse_kl(s, t), "forward": forward_kl(s, t), "jsd": jsd(s, t, 0.3)}[name]
    torch.testing.assert_close(divergence(name, s, t, jsd_beta=0.3), direct, rtol=0, atol=0)


def test_gradcheck_chunked_path():
    """Chunk boundaries inside the batch: the gradient is still exact."""
    s, t = _gradcheck_inputs(30, shape=(3, 5, 4))
    for fn in (full_reverse_kl, forward_kl, jsd):
        assert torch.autograd.gradcheck(lambda x: fn(x, t, chunk=4), (s,))
