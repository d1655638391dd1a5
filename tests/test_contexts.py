"""The teacher's contexts beyond the problem's own reference (rlsd_min.teacher.CONTEXT_KINDS):

    sibling          a success of the row's own group other than the row (SDPO's rule);
                     a row without one has no teacher term, and teacher_frac counts the others
    other_answer,    another problem's worked example, by a seeded derangement of the split:
    other_solution   no question is shown its own
"""

from __future__ import annotations

import random

import pytest
import torch

import rlsd_min
from rlsd_min import model as model_io
from rlsd_min.batch import Rollout
from rlsd_min.sampling import encode_completions, encode_prompts, sample_group, token_logprobs
from rlsd_min.step import make_teacher, method_loss, score_rollout
from rlsd_min.tasks import TASKS
from rlsd_min.teacher import (CONTEXT_KINDS, OTHER_KINDS, derangement, longest_privileged_prompt, other_problems,
                              privileged_prompts, sibling_completions, teacher_logprobs, teacher_prompt)

BASE_CHECKPOINT = TASKS["arith"].base_checkpoint


# --- sibling: which completion ---------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_the_sibling_is_the_first_other_success_of_the_same_group(seed):
    rng = random.Random(seed)
    G, B = rng.choice([2, 3, 4, 8]), 40
    rewards = [float(rng.random() < 0.4) for _ in range(B * G)]
    texts = [f"row{i}" for i in range(B * G)]
    siblings = sibling_completions(texts, rewards, G)
    assert siblings == sibling_completions(texts, rewards, G)          # a function of the rollout alone
    for i, s in enumerate(siblings):
        group = range(i - i % G, i - i % G + G)
        successes = [j for j in group if j != i and rewards[j] == 1.0]
        if s is None:
            assert successes == []                                     # none only when no other success
        else:
            j = int(s[3:])
            assert j != i and j in group and rewards[j] == 1.0 and j == successes[0]
    assert any(s is None for s in siblings) and any(s is not None for s in siblings)


def test_a_lone_success_has_no_sibling_and_is_every_other_rows_sibling():
    texts = ["a", "b", "c", "d", "e", "f", "g", "h"]
    siblings = sibling_completions(texts, [0, 1, 0, 0, 1, 0, 1, 0], 4)
    assert siblings == ["b", None, "b", "b", "g", "e", "e", "e"]   # e sees g; f, g, h see e
    assert sibling_completions(texts, [0.0] * 8, 4) == [None] * 8
    with pytest.raises(ValueError, match="groups of 3"):
        sibling_completions(texts, [0.0] * 8, 3)


def test_sibling_prompts_are_one_per_row_after_its_groups_question(splits):
    problems = splits["train"][:2]
    siblings = [None, "x1", "x2", None]                                   # G = 2
    prompts = privileged_prompts(problems, "sibling", siblings=siblings)
    assert prompts == [None, teacher_prompt(problems[0].prompt, "x1"), teacher_prompt(problems[1].prompt, "x2"), None]
    with pytest.raises(ValueError, match="one sibling completion"):
        privileged_prompts(problems, "sibling")


# --- other: whose example --------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 3, 7, 100])
def test_a_derangement_moves_everything_and_is_fixed_by_its_seed(n):
    perm = derangement(n, seed=5)
    assert sorted(perm) == list(range(n)) and all(p != i for i, p in enumerate(perm))
    assert perm == derangement(n, seed=5)
    with pytest.raises(ValueError, match="at least 2 elements, got 1"):
        derangement(1, seed=0)


def test_no_question_is_shown_its_own_example_and_the_seed_fixes_which(splits):
    pool = splits["train"]
    others = other_problems(pool, seed=0)
    assert set(others) == {p.prompt for p in pool}
    assert all(q.prompt != x for x, q in others.items())                              # never its own
    assert sorted(q.prompt for q in others.values()) == sorted(others)                # a permutation
    assert other_problems(pool, seed=0) == others
    assert other_problems(pool, seed=1) != others
    twice = other_problems(pool[:3] + pool[:3], seed=0)                               # the same questions again
    assert len(twice) == 3 and all(q.prompt != x for x, q in twice.items())


@pytest.mark.parametrize("kind", sorted(OTHER_KINDS))
def test_the_other_prompt_is_a_worked_example_of_another_problem(kind, splits):
    pool = splits["train"][:50]
    others = other_problems(pool, seed=3)
    prompts = privileged_prompts(pool, kind, others=others)
    shown = OTHER_KINDS[kind]
    for p, prompt in zip(pool, prompts):
        q = others[p.prompt]
        assert prompt == teacher_prompt(p.prompt, q.prompt + q.context(shown))
        assert prompt.endswith("|" + p.prompt) and q.prompt != p.prompt
    with pytest.raises(ValueError, match="needs the other problems"):
        privileged_prompts(pool, kind)
    with pytest.raises(ValueError, match="another split"):
        privileged_prompts(splits["test"][:1], kind, others=others)


# --- the config and the length check ---------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (dict(method="rlsd", teacher_context="nearby"), "cannot use teacher_context='nearby'"),
    (dict(method="grpo", teacher_context="sibling"), "'grpo' does not use teacher_context"),
    (dict(method="opsd", task="split", distill_floor=True, teacher_context="sibling"), "own reference"),
])
def test_bad_contexts_are_refused_by_name(overrides, message):
    with pytest.raises(ValueError, match=message):
        rlsd_min.train_config("ci", **overrides)


@pytest.mark.parametrize("method", ["rlsd", "grpo_opsd", "opsd", "sdpg"])
@pytest.mark.parametrize("kind", CONTEXT_KINDS)
def test_every_method_with_a_teacher_takes_every_context(method, kind):
    assert rlsd_min.train_config("ci", method=method, teacher_context=kind).teacher_context == kind


def test_the_length_bound_holds_every_prompt_a_context_can_build(splits, tokenizer):
    pool, new = splits["train"], 40
    others = other_problems(pool, seed=0)
    for kind in OTHER_KINDS:
        bound = longest_privileged_prompt(tokenizer, pool, kind, "{context}|{prompt}", new)
        lengths = [len(tokenizer(t).input_ids) for t in privileged_prompts(pool, kind, others=others)]
        assert max(lengths) <= bound
    bound = longest_privileged_prompt(tokenizer, pool, "sibling", "{context}|{prompt}", new)
    longest = max(pool, key=lambda p: len(p.prompt))
    longest_sibling = privileged_prompts([longest], "sibling", siblings=["0" * new])[0]   # new characters = new tokens
    assert len(tokenizer(longest_sibling).input_ids) == bound


# --- scoring one prompt per row --------------------------------------------------------------

def test_per_row_prompts_score_as_separate_forwards_and_shared_ones_as_the_group_path(base):
    model, tok = base
    torch.manual_seed(1)
    rollout = sample_group(model, tok, ["123+045=", "7+8="], 2, 40)                   # N = 4
    per_group = ["168|123+045=", "15|7+8="]
    same = teacher_logprobs(model, tok, [per_group[i // 2] for i in range(4)], rollout)
    assert torch.equal(same, teacher_logprobs(model, tok, per_group, rollout))
    per_row = ["168|123+045=", "1|123+045=", "15|7+8=", "99 9|7+8="]
    got = teacher_logprobs(model, tok, per_row, rollout)                                # (4, T)
    for i, prompt in enumerate(per_row):
        one = Rollout(*(x[i:i + 1] for x in (rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                                               rollout.completion_mask)), rollout.texts[i:i + 1], 1)
        alone = teacher_logprobs(model, tok, [prompt], one)
        torch.testing.assert_close(got[i:i + 1] * one.completion_mask, alone * one.completion_mask,
                                   atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cannot be scored"):
        teacher_logprobs(model, tok, [None, *per_row[1:]], rollout)


# --- a row without a teacher ------------------------------------------------------------------

def _chosen_batch(splits, tok, model, cfg):
    """score_rollout on chosen completions: groups with one success, two, and none."""
    problems = splits["train"][:3]
    wrong = "1+1+0=02\n2"
    texts = [problems[0].solution, wrong, wrong, wrong,
             problems[1].solution, problems[1].solution, wrong, wrong,
             wrong, wrong, wrong, wrong]
    ids, mask = encode_prompts(tok, [p.prompt for p in problems], "cpu")
    cids, cmask = encode_completions(tok, texts, "cpu")
    rollout = Rollout(ids.repeat_interleave(4, 0), mask.repeat_interleave(4, 0), cids, cmask, texts, 4)
    return score_rollout(model, tok, problems, rollout, cfg, teacher=make_teacher(model, cfg))


HAS_SIBLING = torch.tensor([0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0], dtype=torch.bool)
"""the rows of `_chosen_batch` with another success in their group"""


@pytest.mark.parametrize("method", ["rlsd", "grpo_opsd"])
def test_rows_without_a_sibling_are_not_scored_and_counted(method, splits):
    model, tok = model_io.load(str(BASE_CHECKPOINT))
    cfg = rlsd_min.train_config("ci", method=method, teacher_context="sibling", group_size=4)
    batch = _chosen_batch(splits, tok, model, cfg)
    assert batch.rewards.tolist() == [1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0]
    assert batch.metrics["teacher_frac"] == pytest.approx(7 / 12)
    expected = HAS_SIBLING & (batch.advantages != 0) if method == "rlsd" else HAS_SIBLING
    assert torch.equal(batch.teacher_rows, expected)
    assert (batch.teacher_logp[~expected] == 0).all() and (batch.teacher_logp[expected] != 0).any()


def test_an_rlsd_row_without_a_sibling_gets_grpos_token_advantage(splits):
    """RLSD's w_t is 1 on a row without a teacher: with the advantage of every other row set to
    0, RLSD's loss and gradient are GRPO's (they would not be if its teacher log-probs, 0 there,
    entered w_t)."""
    model, tok = model_io.load(str(BASE_CHECKPOINT))
    cfg = rlsd_min.train_config("ci", method="rlsd", teacher_context="sibling", group_size=4, rlsd_lam=1.0)
    batch = _chosen_batch(splits, tok, model, cfg)
    alone = ~HAS_SIBLING & (batch.advantages != 0)
    assert alone.tolist() == [True] + [False] * 11                                 # the lone success
    batch.advantages = batch.advantages * alone
    out = {}
    for method in ("rlsd", "grpo"):
        model.zero_grad()
        loss, _ = method_loss(model, batch, rlsd_min.train_config("ci", method=method, group_size=4), step=0)
        loss.backward()
        out[method] = (loss.item(), [p.grad.clone() for p in model.parameters()])
    assert out["rlsd"][0] == out["grpo"][0] != 0
    for a, b in zip(out["rlsd"][1], out["grpo"][1]):
        assert torch.equal(a, b)


def test_grpo_opsd_distills_only_the_rows_with_a_sibling(splits):
    """distill_loss = agg[1(row has a teacher) * KL(p || q)], against a float64 reverse KL."""
    model, tok = model_io.load(str(BASE_CHECKPOINT))
    cfg = rlsd_min.train_config("ci", method="grpo_opsd", teacher_context="sibling", group_size=4)
    batch = _chosen_batch(splits, tok, model, cfg)
    _, metrics = method_loss(model, batch, cfg, step=0)
    with torch.no_grad():
        logits = token_logprobs(model, batch.rollout)[1]                             # (N, T, V) the student's
    log_p = torch.log_softmax(logits.double(), -1)                                   # (N, T, V)
    log_q = torch.log_softmax(batch.teacher_logits_of().double(), -1)
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)                                     # (N, T)
    mask = batch.rollout.completion_mask.double()                                    # (N, T)
    expected = (kl * mask * HAS_SIBLING[:, None]).sum() / mask.sum()                 # token-mean
    assert metrics["distill_loss"] == pytest.approx(expected.item(), rel=1e-5)
    assert metrics["distill_loss"] < (kl * mask).sum().item() / mask.sum().item()    # the others would add


# --- training with each new context ---------------------------------------------------------

@pytest.mark.parametrize("method", ["rlsd", "grpo_opsd"])
@pytest.mark.parametrize("kind", ["sibling", "other_answer", "other_solution"])
def test_a_ci_run_trains_with_each_new_context(method, kind, tmp_path):
    cfg = rlsd_min.train_config("ci", method=method, teacher_context=kind, steps=2, eval_every=2,
                                checkpoint_every=2, probe_problems=4)
    history = rlsd_min.train(cfg, tmp_path / "run", progress=False)
    assert [row["step"] for row in history] == [0, 1, 2]
    fracs = [row["teacher_frac"] for row in history[1:]]
    if kind == "sibling":
        assert all(0 <= f <= 1 for f in fracs)
        assert not any(k.startswith("probe_logratio") for k in history[-1])       # one sample: no sibling
    else:
        assert fracs == [1.0, 1.0]
        assert "probe_logratio_answer" in history[-1]
    assert "probe_acc_train" in history[-1]


# --- through the TRL trainers -----------------------------------------------------------------

@pytest.mark.parametrize("kind", sorted(OTHER_KINDS))
def test_an_other_context_trains_a_trl_trainer_on_a_chat_dataset(kind, tmp_path):
    """The other_* contexts are data: arith_rows puts another problem's worked example in each
    row's privileged_context, and GRPO+OPSD's TRL trainer puts it in the user turn before the
    question."""
    pytest.importorskip("trl")
    from datasets import Dataset

    from rlsd_min.integrations import trl as rt
    from rlsd_min.integrations.tiny import arith_reward, arith_rows, build_tiny_chat_model

    rows = arith_rows(n=8, conversational=True, context=kind, seed=0)
    problems = rlsd_min.tasks.problems_of(rlsd_min.tasks.load_splits(str(TASKS["arith"].data_dir))["train"])[:8]
    others = other_problems(problems, seed=0)
    for row, p in zip(rows, problems):
        assert row["privileged_context"] == others[p.prompt].prompt + others[p.prompt].context(OTHER_KINDS[kind])
    args = rt.OPSDConfig(output_dir=str(tmp_path / "out"), with_reward=True, per_device_train_batch_size=8,
                         num_generations=4, max_completion_length=24, max_steps=2, learning_rate=1e-3,
                         report_to="none", use_cpu=True, bf16=False, logging_steps=1, save_strategy="no",
                         disable_tqdm=True, shuffle_dataset=False, seed=0)
    trainer = rt.OPSDTrainer(model=build_tiny_chat_model(str(tmp_path / "model")), reward_funcs=arith_reward,
                             args=args, train_dataset=Dataset.from_list(rows))
    trainer.train()
    assert trainer.state.global_step == 2
    trainer.model.eval()
    batch = trainer._generate_and_score_completions([rows[0]] * 4)
    teacher = trainer.processing_class.decode(batch["teacher_prompt_ids"][0], skip_special_tokens=True)
    assert rows[0]["privileged_context"] in teacher and problems[0].prompt in teacher
    assert teacher.index(rows[0]["privileged_context"]) < teacher.rindex(problems[0].prompt)
