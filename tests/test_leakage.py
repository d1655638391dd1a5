"""The mutual-information floor under the OPSD loss (rlsd_min.leakage)."""

import math

import pytest
import torch

from rlsd_min import mutual_information_floor


def test_identical_teachers_give_zero():
    logq = torch.log_softmax(torch.randn(5, 7), -1)
    same = logq[None].expand(4, 5, 7)
    assert mutual_information_floor(same, torch.tensor([0.1, 0.2, 0.3, 0.4])).abs().max() < 1e-6


def test_disjoint_one_hot_teachers_give_the_entropy_of_the_weights():
    w = torch.tensor([0.5, 0.25, 0.125, 0.125])
    logq = torch.full((4, 6), -1e9)
    for r in range(4):
        logq[r, r] = 0.0                                   # teacher r is sure of token r
    entropy = -(w * w.log()).sum().item()                  # 1.75 bits = 1.2130 nats
    assert mutual_information_floor(logq, w).item() == pytest.approx(entropy, abs=1e-6)
    assert entropy == pytest.approx(1.75 * math.log(2))


def test_random_inputs_against_a_float64_reference():
    g = torch.Generator().manual_seed(0)
    R, T, V = 3, 4, 9
    logq = torch.log_softmax(torch.randn(R, T, V, generator=g, dtype=torch.float64) * 2, -1)
    w = torch.softmax(torch.randn(R, generator=g, dtype=torch.float64), 0)
    q = logq.exp()
    qbar = sum(w[r] * q[r] for r in range(R))
    expected = sum(w[r] * (q[r] * (q[r] / qbar).log()).sum(-1) for r in range(R))
    torch.testing.assert_close(mutual_information_floor(logq, w), expected, rtol=1e-9, atol=1e-12)
    # the floor identity: E_r KL(q_r || p) = KL(qbar || p) + I, for any student p
    p = torch.softmax(torch.randn(T, V, generator=g, dtype=torch.float64), -1)
    lhs = sum(w[r] * (q[r] * (q[r] / p).log()).sum(-1) for r in range(R))
    rhs = (qbar * (qbar / p).log()).sum(-1) + mutual_information_floor(logq, w)
    torch.testing.assert_close(lhs, rhs)


def test_a_reference_of_weight_zero_adds_nothing():
    logq = torch.log_softmax(torch.randn(3, 2, 5), -1)
    logq[2] = torch.tensor([0.0, -1e9, -1e9, -1e9, -1e9])           # only reachable with weight 0
    w = torch.tensor([0.3, 0.7, 0.0])
    torch.testing.assert_close(mutual_information_floor(logq, w), mutual_information_floor(logq[:2], w[:2]))


def test_bad_weights():
    logq = torch.zeros(3, 5)
    with pytest.raises(ValueError, match="sum to 1"):
        mutual_information_floor(logq, torch.tensor([0.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        mutual_information_floor(logq, torch.tensor([0.5, 0.5]))
