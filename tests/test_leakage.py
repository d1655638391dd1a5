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


# --- the reverse-KL floor ------------------------------------------------------------

from rlsd_min.leakage import (reference_floor, reverse_kl_floor, scratchpad_answer,  # noqa: E402
                              token_kinds, leakage_probes)


def test_reverse_floor_hand_cases():
    logq = torch.log_softmax(torch.randn(5, 7), -1)
    assert reverse_kl_floor(logq[None].expand(3, 5, 7), torch.full((3,), 1 / 3)).abs().max() < 1e-6
    # two teachers, each sure of its own token (mass 1-e) with e/(V-1) elsewhere
    V, e = 4, 1e-3
    q = torch.full((2, V), e / (V - 1))
    q[0, 0] = q[1, 1] = 1 - e
    floor = reverse_kl_floor(q.log(), torch.tensor([0.5, 0.5])).item()
    g = (0.5 * q.log().sum(0)).exp()                                  # geometric mean, unnormalised
    assert floor == pytest.approx(-math.log(g.sum().item()), rel=1e-6)
    assert floor > math.log(2)  # larger than the forward floor H(w) here: near-one-hot teachers disagree


def test_reverse_floor_is_the_minimum_over_students_float64():
    g = torch.Generator().manual_seed(1)
    R, T, V = 4, 3, 6
    logq = torch.log_softmax(torch.randn(R, T, V, generator=g, dtype=torch.float64) * 2, -1)
    w = torch.softmax(torch.randn(R, generator=g, dtype=torch.float64), 0)
    floor = reverse_kl_floor(logq, w)

    def objective(logp):                                               # E_r KL(p || q_r), (T,)
        p = logp.exp()
        return sum(w[r] * (p * (logp - logq[r])).sum(-1) for r in range(R))

    best = torch.log_softmax((w[:, None, None] * logq).sum(0), -1)   # the normalised geometric mean
    torch.testing.assert_close(objective(best), floor, rtol=1e-9, atol=1e-12)
    for _ in range(20):                                                # every other student is worse
        other = torch.log_softmax(torch.randn(T, V, generator=g, dtype=torch.float64), -1)
        assert (objective(other) >= floor - 1e-12).all()


def test_reference_floor_enumerates_the_references(tiny_model, tokenizer):
    from rlsd_min.leakage import FLOORS
    from rlsd_min.sampling import sample_group
    from rlsd_min.tasks import SplitProblem
    from rlsd_min.teacher import teacher_logprobs, teacher_prompt

    model = tiny_model()
    problems = [SplitProblem(123, 3, 7), SplitProblem(58, 3, 2)]
    rollout = sample_group(model, tokenizer, [p.prompt for p in problems], 3, 6)
    for kind in ("forward", "reverse"):
        floor = reference_floor(model, tokenizer, problems, rollout, kind)             # (N, T)
        logq = torch.stack([teacher_logprobs(model, tokenizer, [teacher_prompt(p.prompt, p.answer_for(d))
                                                               for p in problems], rollout, return_logits=True)[1]
                            for d in range(10)])                                        # (10, N, T, V)
        torch.testing.assert_close(floor, FLOORS[kind](logq, torch.full((10,), 0.1)))
        assert floor.shape == rollout.completion_ids.shape and (floor >= -1e-6).all()
    with pytest.raises(ValueError, match="'jsd'"):
        reference_floor(model, tokenizer, problems, rollout, "jsd")


# --- probes --------------------------------------------------------------------------

def test_scratchpad_answer_reads_the_models_own_steps():
    assert scratchpad_answer("3+5+0=08 2+4+0=06 1+0+0=01\n168") == 168
    assert scratchpad_answer("3+5+0=08 2+4+0=06 1+0+0=11\n168") == 1168     # disagrees with its answer
    assert scratchpad_answer("5-7-0=18 4-2-1=01\n18") == 18
    assert scratchpad_answer("3*7+0=21 2*7+2=16\n161") == 161
    assert scratchpad_answer("168") is None and scratchpad_answer("3+5+0=0x\n8") is None


def test_token_kinds():
    tokens = list("3+5+0=08 2+4+0=16\n168") + ["<eos>"]
    kinds = token_kinds(tokens, split=False)
    assert "".join(k[0] for k in kinds) == "sfsfcfcsfsfsfcfcsfaaaf"
    assert token_kinds(list("7+116") + ["<eos>"], split=True) == ["choice", "format"] + ["answer"] * 3 + ["format"]


def test_probes_on_both_tasks(base, splits):
    from rlsd_min import model as model_io
    from rlsd_min.tasks import TASKS
    from rlsd_min.tasks import load_splits, problems_of

    model, tok = base
    out = leakage_probes(model, tok, splits["train"][:16], splits["validation"][:16])
    assert {"acc_train", "acc_heldout", "gap", "disagree_train", "disagree_heldout", "logratio_answer"} <= set(out)
    assert out["gap"] == pytest.approx(out["acc_train"] - out["acc_heldout"])
    data, ckpt = TASKS["split"].data_dir, TASKS["split"].base_checkpoint
    model, tok = model_io.load(str(ckpt))
    ds = load_splits(str(data))
    out = leakage_probes(model, tok, problems_of(ds["train"])[:32], problems_of(ds["validation"])[:32])
    assert {"ref_match_train", "ref_match_heldout", "logratio_choice"} <= set(out)
    assert all(0 <= out[k] <= 1 for k in ("acc_train", "ref_match_train", "ref_match_heldout"))
    assert out["logratio_choice"] < 0  # the teacher, shown one reference, prefers its digit over the student's pick


def test_a_fraction_with_nothing_to_count_is_left_out(tokenizer, splits):
    """An untrained model parses no answer and scratchpad: disagree_* has no denominator, so it is
    absent (not 0), while the accuracies are there."""
    from rlsd_min import model as model_io
    from rlsd_min.config import ModelConfig

    model = model_io.build_model(ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2),
                                 tokenizer, seed=0)
    out = leakage_probes(model, tokenizer, splits["train"][:8], splits["validation"][:8])
    assert out["acc_train"] == 0 and out["acc_heldout"] == 0
    assert "disagree_train" not in out and "disagree_heldout" not in out
