"""The TRL trainers (rlsd_min.integrations.trl) on a tiny model with a real subword tokenizer.

- the configs' method fields are TrainConfig's: names, docs, defaults, resolution;
- bad input is refused before the first step;
- the teacher is aligned for plain and chat-template prompts (teacher prompt = student prompt
  gives exactly the student's log-probs; column t scores completion token t);
- equivalence: one update of each trainer gives rlsd_min's own loss and gradients (update on
  score_rollout's batch) on the same model, prompts and injected completions, in float64;
- logging under rlsd_min's names through TRL's `log`; the frozen teacher really is frozen;
- two processes under torchrun (gloo, CPU): identical weights on both ranks, metrics weighted
  across ranks, and the same weights as one process on the whole batch;
- the realistic matrix (tests/hf_fixtures.py: a Qwen2-shape model, a BPE tokenizer with ChatML,
  prompts and completions of varying length): at theta = theta_ref the ratio is 1 and kl_ref 0 in
  bf16 and fp32 with accumulation 4; the method metrics equal the tiny loop's for accumulation 1
  and 4; a chat dataset's teacher template; LoRA teachers (the base, or a second adapter);
- the example script runs two steps.

The tiny model: a byte-level BPE tokenizer trained here with a chat template, and a random
one-layer Llama, saved with save_pretrained (rlsd_min.integrations.tiny). Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys
import typing

import pytest
import torch

if not os.environ.get("CI"):  # CI installs the trl extra: there a missing trl fails, not skips
    pytest.importorskip("trl")

import trl  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback  # noqa: E402

import hf_fixtures as hf  # noqa: E402
from rlsd_min.config import TrainConfig, field_docs  # noqa: E402
from rlsd_min.integrations import trl as rt  # noqa: E402
from rlsd_min.integrations import trl_teacher  # noqa: E402
from rlsd_min.integrations.tiny import arith_reward, arith_rows, build_tiny_chat_model  # noqa: E402
from rlsd_min.methods import rlsd_lambda, sdpg_beta, sdpg_windows  # noqa: E402
from rlsd_min.methods import METHODS  # noqa: E402
from rlsd_min.sampling import Rollout, decode_completions, encode_prompts  # noqa: E402
from rlsd_min.step import make_teacher, score_rollout, update  # noqa: E402
from rlsd_min.tasks import TASKS, load_splits, problems_of  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
G, T = 4, 24
CONFIGS = {"rlsd": rt.RLSDConfig, "sdpg": rt.SDPGConfig, "opsd": rt.OPSDConfig, "grpo_opsd": rt.OPSDConfig}
TOL_FUSED = 1e-4
"""TRL's fused LM head (the one scoring path: the student's, the teacher's, pi_old's and pi_ref's
log-probs) computes log-probs in float32, so a float64 model's update agrees with rlsd_min's
float64 update to float32 rounding: every gradient entry within TOL_FUSED x the largest entry of
its parameter's gradient (measured: <= 3e-6, and 8e-5 for opsd 'sampled', whose token
advantage is a difference of two log-probs), the loss and the metrics to TOL_FUSED relative"""


@pytest.fixture(scope="session")
def tiny_path(tmp_path_factory):
    return build_tiny_chat_model(str(tmp_path_factory.mktemp("tiny") / "model"))


@pytest.fixture(scope="session")
def problems():
    return problems_of(load_splits(str(TASKS["arith"].data_dir))["train"])[:2]


def config(method, tmp_path, **overrides):
    kw = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=2 * G, num_generations=G,
              max_completion_length=T, max_steps=1, learning_rate=1e-3, lr_scheduler_type="constant",
              report_to="none", use_cpu=True,
              bf16=False, **rt.checkpointing(False), logging_steps=1, save_strategy="no",
              disable_tqdm=True, shuffle_dataset=False, seed=0)
    if method == "grpo_opsd":
        kw["with_reward"] = True
    return CONFIGS[method](**{**kw, **overrides})


def completions_of(problem, tokenizer) -> list[list[int]]:
    """G chosen completions of a problem, as token ids: right, wrong, answer only, cut off
    (rewards 1, 0, 1, 0, different lengths), each ending with <eos> but the last."""
    eos = tokenizer.eos_token_id
    ids = lambda text: tokenizer(text, add_special_tokens=False).input_ids
    wrong = problem.solution[:-1] + ("1" if problem.solution[-1] != "1" else "2")
    return [ids(problem.solution) + [eos], ids(wrong) + [eos], ids(str(problem.answer)) + [eos],
            ids(problem.solution)[:-2]]


def inject(trainer, table: dict) -> None:
    """Replace TRL's sampling by chosen completions: table[prompt ids] = the group's G completions."""
    def generate(prompt_ids, images, multimodal_fields, num_generations, **kwargs):
        return [table[tuple(ids)][i % num_generations] for i, ids in enumerate(prompt_ids)], None
    trainer._generate_single_turn = generate


class Grads(TrainerCallback):
    """The gradients (after clipping) just before TRL's optimiser step."""

    def __init__(self):
        self.grads, self.model = [], None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in self.model.named_parameters()})


def trl_side(method, path, problems, tmp_path, conversational=False, dtype=torch.float64, train=True, **overrides):
    """(trainer, its step-1 gradients, its logged rows) after one step on injected completions
    (train=False: the trainer as built, completions injected)."""
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    rows = [{"prompt": [{"role": "user", "content": p.prompt}] if conversational else p.prompt,
             "privileged_context": p.context("answer"), "answer": p.answer} for p in problems]
    grads = Grads()
    trainer = rt.TRAINERS[method](model=model, reward_funcs=arith_reward, args=config(method, tmp_path, **overrides),
                                  train_dataset=Dataset.from_list(rows), processing_class=tok, callbacks=[grads])
    grads.model = trainer.model
    table = {}
    for p, row in zip(problems, rows):
        table[tuple(trainer._tokenize_prompts([row["prompt"]])[0][0])] = completions_of(p, tok)
    inject(trainer, table)
    if train:
        trainer.train()
    return trainer, grads.grads, [h for h in trainer.state.log_history if "loss" in h]


def rlsd_min_side(method, path, problems, cfg: TrainConfig):
    """rlsd_min's own update on the same completions: score_rollout's StepBatch, then update."""
    tok = AutoTokenizer.from_pretrained(path)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64)
    ids, mask = encode_prompts(tok, [p.prompt for p in problems], "cpu")                  # (B, P)
    rows = [c for p in problems for c in completions_of(p, tok)]
    width = max(len(r) for r in rows)
    cids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])         # (N, T)
    cmask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])           # (N, T)
    rollout = Rollout(ids.repeat_interleave(G, 0), mask.repeat_interleave(G, 0), cids, cmask,
                      decode_completions(tok, cids, cmask), G)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64) if cfg.needs_reference() else None
    batch = score_rollout(policy, tok, problems, rollout, cfg, ref, make_teacher(policy, cfg))
    optimizer = torch.optim.AdamW(policy.parameters(), lr=cfg.lr, weight_decay=0.0)  # TRL's AdamW
    row = update(policy, optimizer, batch, cfg, step=0)
    return row, {n: p.grad for n, p in policy.named_parameters()}, batch


def rlsd_min_config(method, **fields) -> TrainConfig:
    """The same settings written in TrainConfig's names, independently of the integration."""
    return TrainConfig(method=method, group_size=G, prompts_per_step=2, max_new_tokens=T, lr=1e-3,
                       adv_eps=1e-4, steps=1, teacher_context="answer", **fields).validate()


# --- the configs ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [rt.RLSDConfig, rt.SDPGConfig, rt.OPSDConfig])
def test_config_fields_are_trainconfigs_method_fields_types_defaults_and_help(cls):
    """The dataclasses written out in trl_configs: their own fields are the union of their methods'
    fields (the records' `reads`), each with TrainConfig's type, default and docstring; besides
    them only with_reward and teacher_context (the TRL configs' own: TRL_CONTEXTS)."""
    types, theirs, docs = typing.get_type_hints(cls), typing.get_type_hints(TrainConfig), field_docs(TrainConfig)
    base = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    own = {f.name: f for f in dataclasses.fields(cls) if f.name not in base | {"with_reward", "teacher_context"}}
    assert {f.name: f.default for f in dataclasses.fields(cls)}["teacher_context"] == rt.TRL_CONTEXTS[0] is None
    assert set(own) == {n for m in cls.methods() for n in rt.method_fields(m)}
    for name, f in own.items():
        assert types[name] == theirs[name], name
        assert f.default == docs[name][0], name
        assert f.metadata["help"] == docs[name][1], name


@pytest.mark.parametrize("method", ["rlsd", "sdpg", "opsd", "grpo_opsd"])
def test_config_resolves_method_fields_as_trainconfig(method, tmp_path):
    args = config(method, tmp_path)
    resolved = TrainConfig(method=method).validate()                      # TrainConfig's resolution of the method
    for name in rt.method_fields(method):
        if name != "privileged_template":  # None until the trainer sees the dataset (text or chat)
            assert getattr(args, name) == getattr(resolved, name), name
    assert args.privileged_template is None and args.rlsd_config.privileged_template == resolved.privileged_template
    assert args.beta == resolved.kl_coef and args.rlsd_config.method == method


def test_trainer_and_config_names_come_from_the_method_records():
    from rlsd_min.lab.bench_trl import TRAINER_METHODS, trainer_name

    named = {n for n, m in METHODS.items() if m.trl_trainer}
    assert set(rt.TRAINERS) == set(rt.CONFIGS) == set(TRAINER_METHODS) == named == {"rlsd", "sdpg", "opsd", "grpo_opsd"}
    for n in named:
        m = METHODS[n]
        assert rt.TRAINERS[n].__name__ == m.trl_trainer and trainer_name(n).startswith(m.trl_trainer)
        args = rt.CONFIGS[n](output_dir="unused", use_cpu=True, report_to="none")
        assert type(args).__name__ == m.trl_config and args.method == n


@pytest.mark.parametrize("method, loss_type, loss_agg", [("sdpg", "dapo", "token-mean"), ("rlsd", "dapo", "token-mean"),
                                                       ("sdpg", "grpo", "seq-mean"), ("opsd", None, "token-mean"),
                                                       ("sdpg", None, "group-token-mean")])
def test_loss_type_is_read_as_the_same_loss_agg(method, loss_type, loss_agg, tmp_path):
    """dapo (the sum over the batch's tokens / their count) is token-mean, given or not equal to
    TRL's default; grpo is seq-mean; not given, the method's loss_agg."""
    args = config(method, tmp_path, loss_type=loss_type)
    assert args.loss_agg == args.rlsd_config.loss_agg == loss_agg


def test_config_fields_per_method():
    assert {"rlsd_lam", "rlsd_lam_steps", "rlsd_eps_w"} <= set(rt.method_fields("rlsd"))
    assert not {"divergence", "distill_coef"} & set(rt.method_fields("rlsd"))
    assert {"sdpg_gate", "sdpg_schedule", "sdpg_outcome", "divergence", "distill_coef"} <= set(rt.method_fields("sdpg"))
    assert "teacher_context" not in rt.method_fields("opsd")  # the dataset column brings the context


def test_config_translates_trl_names_to_trainconfig(tmp_path):
    args = config("sdpg", tmp_path, epsilon=0.1, epsilon_high=0.3, num_iterations=2, max_steps=7,
                  learning_rate=3e-4, temperature=0.9, scale_rewards="batch", kl_coef=0.5, sdpg_gate=False)
    cfg = args.rlsd_config
    assert (cfg.eps_low, cfg.eps_high, cfg.num_iterations, cfg.lr) == (0.1, 0.3, 2, 3e-4)
    assert cfg.steps == 3                                  # RL steps: 7 optimiser steps // 2 iterations
    assert (cfg.temperature, cfg.adv_scale, cfg.group_size, cfg.max_new_tokens) == (0.9, "batch", G, T)
    assert (cfg.kl_coef, args.beta, cfg.sdpg_gate, cfg.adv_eps) == (0.5, 0.5, False, rt.TRL_ADV_EPS)
    assert cfg.prompts_per_step == 2


# --- bad input: refused before the first step ------------------------------------------------

@pytest.mark.parametrize("method, overrides, message", [
    ("rlsd", dict(privileged_template="{prompt} only"), "lacks the {context} placeholder"),
    ("rlsd", dict(teacher_mode="copy"), "cannot use teacher_mode='copy'"),
    ("opsd", dict(divergence="hellinger"), "cannot use divergence='hellinger'"),
    ("grpo_opsd", dict(divergence="sampled"), "cannot use divergence='sampled'"),
    ("sdpg", dict(beta=0.04), "reference-KL weight is kl_coef"),
    ("rlsd", dict(loss_type="bnpo"), "set loss_agg"),
    ("sdpg", dict(loss_type="dr_grpo"), "set loss_agg"),
    ("rlsd", dict(loss_type="dapo", loss_agg="seq-mean"), "set one of them"),
    ("rlsd", dict(per_device_train_batch_size=2, gradient_accumulation_steps=2), "whole groups"),
    ("rlsd", dict(steps_per_generation=2), "one optimiser step per sampled batch"),
    ("rlsd", dict(rlsd_eps_w=1.5), "rlsd_eps_w must be in"),
])
def test_bad_settings_fail_when_the_config_is_made(method, overrides, message, tmp_path):
    with pytest.raises(ValueError, match=message.replace("{", r"\{").replace("}", r"\}")):
        config(method, tmp_path, **overrides)


def test_unknown_field_for_the_method_is_refused(tmp_path):
    with pytest.raises(TypeError, match="divergence"):
        config("rlsd", tmp_path, divergence="reverse")


def test_bad_dataset_or_args_fail_before_the_model_is_loaded(tmp_path):
    args = config("rlsd", tmp_path)
    no_column = Dataset.from_list([{"prompt": "1+2=", "answer": 3}])
    with pytest.raises(ValueError, match="no 'privileged_context' column"):
        rt.RLSDTrainer("no/such-model", arith_reward, args, no_column)
    not_text = Dataset.from_list([{"prompt": "1+2=", "privileged_context": 3, "answer": 3}])
    with pytest.raises(ValueError, match="must be a string"):
        rt.RLSDTrainer("no/such-model", arith_reward, args, not_text)
    with pytest.raises(TypeError, match="RLSDConfig"):
        rt.SDPGTrainer("no/such-model", arith_reward, args, Dataset.from_list(arith_rows(n=2)))


@pytest.mark.parametrize("mode, fsdp, stage, refused", [
    ("frozen", False, 3, True), ("synced", True, None, True), ("ema", False, 3, True),
    ("live", False, 3, False), ("live", True, None, False), ("synced", False, 2, False), ("frozen", False, None, False)])
def test_a_teacher_copy_is_refused_where_the_weights_are_sharded(mode, fsdp, stage, refused):
    if refused:
        with pytest.raises(ValueError, match="use teacher_mode='live'"):
            rt.check_teacher_sharding(mode, fsdp, stage)
    else:
        rt.check_teacher_sharding(mode, fsdp, stage)


def test_privileged_prompt_plain_and_chat():
    assert rt.privileged_prompt("1+2=", "3", "{context}|{prompt}") == "3|1+2="
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+2="}]
    assert rt.privileged_prompt(chat, "3", "Answer: {context}\n{prompt}") == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Answer: 3\n1+2="}]
    assert chat[-1]["content"] == "1+2="                                   # the row is not modified
    with pytest.raises(ValueError, match="must end with a user turn"):
        rt.privileged_prompt([{"role": "assistant", "content": "x"}], "3", "{context}{prompt}")


# --- the teacher's alignment ----------------------------------------------------------------

@pytest.mark.parametrize("conversational", [False, True])
def test_teacher_prompt_equal_to_the_student_prompt_gives_exactly_the_students_logprobs(
        conversational, tiny_path, problems, tmp_path):
    """Context '' and template '{context}{prompt}': the teacher's prompt is the student's, so its
    log-probs of the student's own completion ids must equal the student's, bit for bit."""
    trainer, _, _ = trl_side("opsd", tiny_path, problems, tmp_path, conversational, dtype=torch.float32,
                             train=False, privileged_template="{context}{prompt}", teacher_mode="live")
    rows = [{"prompt": [{"role": "user", "content": p.prompt}] if conversational else p.prompt,
             "privileged_context": "", "answer": p.answer} for p in problems for _ in range(G)]
    trainer.model.eval()
    batch_in = trainer._generate_and_score_completions(rows)
    assert torch.equal(batch_in["teacher_prompt_ids"], batch_in["prompt_ids"])
    cfg = trainer._rlsd_config()
    batch = trainer._step_batch(trainer.model, batch_in, cfg)
    with torch.no_grad():
        student = trainer.student_scores(trainer.model, batch, cfg)[0]
    mask = batch.rollout.completion_mask.bool()
    assert torch.equal(batch.teacher_logp[mask], student[mask])


@pytest.mark.parametrize("conversational", [False, True])
def test_teacher_column_t_scores_completion_token_t(conversational, tiny_path, problems, tmp_path):
    """With a real context: the teacher's log-prob in column t equals a separate unpadded forward
    over [teacher prompt ids | completion ids], the context inside the user turn for chat."""
    template = "The reference answer is {context}. {prompt}"
    trainer, _, _ = trl_side("rlsd", tiny_path, problems, tmp_path, conversational, dtype=torch.float32,
                             train=False, privileged_template=template)
    tok = trainer.processing_class
    rows = [{"prompt": [{"role": "user", "content": p.prompt}] if conversational else p.prompt,
             "privileged_context": p.context("answer"), "answer": p.answer} for p in problems for _ in range(G)]
    trainer.model.eval()
    batch_in = trainer._generate_and_score_completions(rows)
    batch = trainer._step_batch(trainer.model, batch_in, trainer._rlsd_config())
    model = trainer._teacher.teacher.model                                   # RLSD's synced copy
    for i in range(len(rows)):
        tp = batch_in["teacher_prompt_ids"][i][batch_in["teacher_prompt_mask"][i].bool()].tolist()
        text = tok.decode(tp)
        assert f"The reference answer is {problems[i // G].answer}. {problems[i // G].prompt}" in text
        if conversational:
            assert text.startswith("<|user|>\nThe reference answer is") and text.endswith("<|end|>\n<|assistant|>\n")
        n = int(batch_in["completion_mask"][i].sum())
        comp = batch_in["completion_ids"][i, :n].tolist()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([tp + comp])).logits[0].double()
        ref = torch.log_softmax(logits[len(tp) - 1:-1], -1).gather(-1, torch.tensor(comp)[:, None])[:, 0]
        torch.testing.assert_close(batch.teacher_logp[i, :n].double(), ref, rtol=1e-5, atol=1e-5)


# --- equivalence with rlsd_min's own update ---------------------------------------------------

EQUIVALENCE = [
    ("rlsd", {}, {}),
    ("sdpg", dict(sdpg_schedule=False), {}),                    # beta = distill_coef from step 0
    ("sdpg", {}, {}),                                           # the schedule: beta(0) = 0
    ("opsd", {}, {}),
    ("opsd", dict(divergence="sampled"), {}),
    ("grpo_opsd", dict(divergence="jsd"), {}),
    ("rlsd", dict(kl_coef=0.05, loss_agg="seq-mean"), {}),
    ("rlsd", {}, dict(per_device_train_batch_size=G, gradient_accumulation_steps=2)),   # token-mean over 2 micro-batches
    ("sdpg", dict(sdpg_schedule=False), dict(per_device_train_batch_size=G, gradient_accumulation_steps=2)),
    ("rlsd", {}, rt.checkpointing(True)),         # the one-pass student forward
    ("rlsd", dict(num_iterations=2), dict(max_steps=2)),        # 2 updates of one batch: the ratio and clip act
]


@pytest.mark.parametrize("method, fields, trl_only", EQUIVALENCE)
def test_one_update_equals_rlsd_mins_update_in_float64(method, fields, trl_only, tiny_path, problems, tmp_path):
    trainer, grads, logged = trl_side(method, tiny_path, problems, tmp_path, **fields, **trl_only)
    cfg = rlsd_min_config(method, **fields)
    iterations = cfg.num_iterations
    row, ours, batch = rlsd_min_side(method, tiny_path, problems, cfg)
    assert batch.advantages.abs().sum() > 0 and len(grads) == iterations
    last = logged[iterations - 1]                                   # the last iteration's, as update returns
    assert math.isclose(last["loss"], row["loss"], rel_tol=TOL_FUSED, abs_tol=1e-7), (last["loss"], row["loss"])
    assert any(g.abs().sum() > 0 for g in ours.values())
    worst = max(float((grads[-1][n] - g).abs().max() / g.abs().max().clamp(min=1e-30)) for n, g in ours.items())
    assert worst <= TOL_FUSED, worst
    for name in ("lam", "w_clip_frac", "distill_loss", "beta", "gate_frac", "teacher_kl", "kl_ref"):
        if name in row:  # the step's value, weighted over the micro-batches
            assert math.isclose(last[name], row[name], rel_tol=TOL_FUSED, abs_tol=1e-7), name   # a KL near 0 from float32 logits


# --- logging, schedules and the teacher's weights ---------------------------------------------

class Logs(TrainerCallback):
    def __init__(self):
        self.rows = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.rows.append(dict(logs))


@pytest.mark.parametrize("method", ["rlsd", "sdpg"])
def test_metrics_reach_trls_logging_under_rlsd_min_names_with_the_steps_schedule(method, tiny_path, tmp_path):
    steps, logs = 4, Logs()
    args = config(method, tmp_path, max_steps=steps, rlsd_lam_steps=3) if method == "rlsd" else config(
        method, tmp_path, max_steps=steps)
    trainer = rt.TRAINERS[method](model=tiny_path, reward_funcs=arith_reward, args=args,
                                  train_dataset=Dataset.from_list(arith_rows(n=16)), callbacks=[logs])
    trainer.train()
    rows = [r for r in logs.rows if "loss" in r]
    assert len(rows) == steps
    names = {"rlsd": {"lam", "w_clip_frac", "teacher_kl", "loss_pg", "clip_frac", "entropy"},
             "sdpg": {"beta", "distill_loss", "gate_frac", "kl_ref", "teacher_kl", "entropy"}}[method]
    assert all(names <= set(r) for r in rows), rows[0].keys()
    cfg = trainer._rlsd_config()
    assert cfg.steps == steps
    for k, r in enumerate(rows):
        if method == "rlsd":
            assert r["lam"] == pytest.approx(rlsd_lambda(k, cfg.rlsd_lam, 3))
        else:
            assert r["beta"] == pytest.approx(sdpg_beta(k, steps, cfg.distill_coef, *sdpg_windows(cfg)))


@pytest.mark.parametrize("cast_lm_head_to_fp32", [False, True])
def test_the_frozen_teacher_keeps_the_initial_weights_and_is_saved_with_checkpoints(
        cast_lm_head_to_fp32, tiny_path, problems, tmp_path):
    """TRL patches `forward` on the student's modules (closures over them): a copied teacher must
    not run the student's weights."""
    trainer, _, _ = trl_side("opsd", tiny_path, problems, tmp_path, dtype=torch.float32, max_steps=2,
                             learning_rate=0.05, save_strategy="steps", save_steps=2,
                             cast_lm_head_to_fp32=cast_lm_head_to_fp32)
    assert trainer._teacher.mode == "frozen"
    initial = AutoModelForCausalLM.from_pretrained(tiny_path)
    x = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        t, s, i = (m(input_ids=x).logits for m in (trainer._teacher.teacher.model, trainer.model, initial))
    assert torch.equal(t, i) and not torch.allclose(s, i)
    checkpoint = tmp_path / "out" / "checkpoint-2"
    saved = torch.load(checkpoint / rt._SelfDistillationTrainer.TEACHER_FILE, weights_only=True)
    assert all(torch.equal(saved[k], v) for k, v in initial.state_dict().items())
    # resumed from the checkpoint, the teacher is theta_0 again, not the checkpoint's student
    again, _, _ = trl_side("opsd", tiny_path, problems, tmp_path, dtype=torch.float32, train=False, max_steps=3,
                           learning_rate=0.05, cast_lm_head_to_fp32=cast_lm_head_to_fp32)
    again.train(resume_from_checkpoint=str(checkpoint))
    with torch.no_grad():
        assert torch.equal(again._teacher.teacher.model(input_ids=x).logits, i)


def test_shard_weight_makes_the_mean_over_shards_the_whole_batch_aggregate():
    from rlsd_min.objective import aggregate

    torch.manual_seed(0)
    x = torch.randn(8, 5, dtype=torch.float64)                                        # (N, T)
    mask = (torch.rand(8, 5) > 0.3).long()
    mask[:, 0] = 1
    for mode in ("token-mean", "seq-mean", "group-token-mean"):
        whole = aggregate(x, mask, mode, 2)
        shards = [(x[i:i + 4], mask[i:i + 4]) for i in (0, 4)]                       # 2 shards of 2 whole groups
        mean = sum(rt.shard_weight(mode, m.sum(), mask.sum(), 2) * aggregate(s, m, mode, 2)
                   for s, m in shards) / 2
        torch.testing.assert_close(mean, whole, rtol=1e-12, atol=1e-12)


# --- two processes under torchrun -------------------------------------------------------------

def _torchrun(n: int, path: str, out: pathlib.Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           str(REPO / "tests" / "trl_distributed.py"), path, str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(n)]


def test_two_processes_under_torchrun_agree_with_each_other_and_with_one_process(tiny_path, tmp_path):
    two = _torchrun(2, tiny_path, tmp_path / "two")
    (one,) = _torchrun(1, tiny_path, tmp_path / "one")
    for method in ("rlsd", "sdpg", "sibling"):   # sibling: GRPO+OPSD, each rank's siblings chosen from all ranks' rows
        r0, r1 = two[0][method], two[1][method]
        assert r0["weights"] == r1["weights"], "the ranks' weights differ"                 # identical, bit for bit
        assert r0["moved"] > 0
        # the same weights as one process on the whole batch (the same prompts and completions)
        torch.testing.assert_close(torch.tensor(r0["weights"]), torch.tensor(one[method]["weights"]),
                                   rtol=1e-5, atol=1e-6)
        assert r0["logged"] == r1["logged"]                                              # both ranks log the weighted mean
        for step, logged in enumerate(r0["logged"]):
            for name, value in logged.items():
                if name == "loss":  # the Trainer's own mean of the returned loss, checked against one process
                    continue
                local = [r["local"][step][name] for r in (r0, r1)]            # (value, weight) per rank
                mean = sum(v * w for v, w in local) / sum(w for _, w in local)   # weighted over the ranks
                assert value == pytest.approx(mean, rel=1e-6, abs=1e-9), (method, step, name)
            assert logged["loss"] == pytest.approx(one[method]["logged"][step]["loss"], rel=1e-4, abs=1e-7)
        assert len(r0["local"]) == 2 and r0["local"][0] != r1["local"][0]              # the ranks saw different rows


# --- the example ----------------------------------------------------------------------------

def test_example_script_runs_two_steps_on_the_tiny_model(tiny_path, tmp_path):
    out = tmp_path / "run"
    flags = dict(model=tiny_path, dataset="arith", max_steps="2", output_dir=str(out), bf16="false",
                 **{k: "false" for k in rt.checkpointing(False)}, per_device_train_batch_size="8", num_generations="4",
                 max_completion_length="16", train_rows="32")
    argv = [a for k, v in flags.items() for a in (f"--{k}", v)] + ["--use_cpu"]
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "trl_rlsd_gsm8k.py"), *argv],
                          capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == [1, 2] and all("lam" in r and "w_clip_frac" in r for r in logged)


# --- the step-time comparison with GRPOTrainer (rlsd_min.lab.bench_trl) ------------------------

def test_trainer_comparison_table_ratio_is_the_median_of_per_round_ratios():
    from rlsd_min.lab.bench_trl import TRAINER_METHODS, format_trainer_comparison, trainer_name

    row = lambda key, times, mem, pair=None: {key: dict(label=trainer_name(key) if key in TRAINER_METHODS else key,
                                                        times=times, peak_mem_mb=mem, pair=pair)}
    text = format_trainer_comparison({**row("grpo", [1.0, 2.0, 4.0], 10.0), **row("rlsd", [1.2, 2.0, 8.0], 15.0)})
    assert "| RLSDTrainer | 2.000 | 1.200-8.000 | 1.20 | 15.0 |" in text        # not 1.00, the ratio of the medians
    assert "rlsd / GRPOTrainer per round: 1.20 1.00 2.00" in text and "ours / TRL SDPOTrainer" not in text
    paired = format_trainer_comparison({**row("grpo", [1.0, 1.0, 1.0], 10.0), **row("S", [2.0, 4.0, 1.0], 40.0),
                                        **row("O", [1.0, 1.0, 1.0], 30.0, pair="S")})
    assert "| O / S | 0.50 | 0.75 |" in paired and "O / S per round: 0.50 0.25 1.00" in paired
    assert format_trainer_comparison({**row("grpo", [1.0], 1.0), **row("grpo_opsd", [2.0], 1.0)}).count(
        "OPSDTrainer(with_reward=True)") == 1


def test_checkpointing_switch_is_the_installed_transformers_name():
    names = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    (key, on), = rt.checkpointing(True).items()
    assert on is True and key in names and (key == "activation_checkpointing") == ("activation_checkpointing" in names)
    assert getattr(trl.GRPOConfig(output_dir="unused", use_cpu=True, **rt.checkpointing(False)), key) is False


def test_trl_comparison_puts_our_model_where_trls_trainer_runs(monkeypatch):
    import rlsd_min.lab.bench_trl as bench_trl

    seen = []

    def load(path, device="cpu"):            # stops the comparison at our model's loading
        seen.append(torch.device(device))
        raise RuntimeError("stop")

    monkeypatch.setattr(bench_trl, "pick_device", lambda device=None: torch.device("cuda"))
    monkeypatch.setattr(bench_trl, "load", load)
    with pytest.raises(RuntimeError, match="stop"):
        bench_trl.trl_comparison("ci", rounds=1)
    assert seen == [torch.device("cuda")]    # not the CPU while TRL's trainer takes the GPU


def test_trainer_comparison_interleaves_the_trainers_on_the_ci_profile():
    from rlsd_min.lab.bench_trl import trainer_comparison

    results = trainer_comparison("ci", rounds=1, warmup=1, methods=("rlsd",))
    assert set(results) == {"grpo", "rlsd"}
    assert all(len(r["times"]) == 1 and r["times"][0] > 0 and r["peak_mem_mb"] > 0 for r in results.values())
    with pytest.raises(ValueError, match="no TRL trainer for \\['grpo'\\]"):
        trainer_comparison("ci", rounds=1, methods=("grpo",))


# --- the realistic matrix: a Qwen2-shape model, a BPE tokenizer with ChatML (tests/hf_fixtures.py) --

@pytest.fixture(scope="session")
def qwen_path(tmp_path_factory):
    return hf.build_qwen2_chat_model(str(tmp_path_factory.mktemp("qwen2") / "model"))


def qwen_run(method, path, tmp_path, conversational=False, n=4, reward=hf.reward, callbacks=(), train=True,
             peft_config=None, **overrides):
    """A trainer on `n` prompts of varying length (4 per step), injected completions of varying length."""
    data = hf.rows(n, conversational)
    kw = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=G, num_generations=G,
              gradient_accumulation_steps=4, max_completion_length=12, max_steps=1, learning_rate=1e-12,
              report_to="none", use_cpu=True, bf16=True, logging_steps=1, save_strategy="no",
              disable_tqdm=True, shuffle_dataset=False, seed=0)
    kw.update(overrides)
    if method == "grpo_opsd":
        kw["with_reward"] = True
    trainer = rt.TRAINERS[method](model=path, reward_funcs=reward, args=CONFIGS[method](**kw),
                                  train_dataset=Dataset.from_list(data), callbacks=list(callbacks),
                                  peft_config=peft_config)
    hf.inject(trainer, data)
    if train:
        trainer.train()
    return trainer, [h for h in trainer.state.log_history if "loss" in h]


@pytest.mark.parametrize("bf16", [True, False])
@pytest.mark.parametrize("method", ["rlsd", "sdpg", "opsd", "grpo_opsd"])
def test_at_theta_ref_the_ratio_is_one_and_the_reference_kl_zero(method, bf16, qwen_path, tmp_path):
    """theta = theta_old = theta_ref (lr 1e-12 moves no weight): with accumulation 4, prompts of
    1-3 lead-ins and num_iterations 2 (TRL then scores pi_old itself), the student's log-probs
    are TRL's old and reference log-probs, bit for bit (on 5fe4387 bf16 gave kl_ref 2.9e-8)."""
    _, logs = qwen_run(method, qwen_path, tmp_path, conversational=method in ("sdpg", "opsd"), bf16=bf16,
                       kl_coef=0.01, num_iterations=2, max_steps=2)
    assert len(logs) == 2
    for row in logs:
        assert 0 <= row["kl_ref"] <= 1e-10, row["kl_ref"]
        assert row.get("clip_frac", 0.0) == 0.0


def _unanimous_reward(prompts, completions, answer, **kwargs):
    """hf.reward, but 0 for every completion of the prompts that start "Answer with": groups
    whose advantages are all 0, which neither RLSD's nor SDPG's teacher scores."""
    text = lambda p: p[-1]["content"] if isinstance(p, list) else p
    return [0.0 if "Answer with" in text(p) else r for p, r in zip(prompts, hf.reward(completions, answer))]


@pytest.mark.parametrize("method, fields", [("rlsd", dict(rlsd_eps_w=0.01)), ("sdpg", dict(sdpg_schedule=False))])
def test_method_metrics_equal_the_tiny_loops_on_the_batch_for_accumulation_1_and_4(method, fields, qwen_path,
                                                                                  tmp_path):
    """8 prompts: one step of 32 rows, 8 groups, 2 of them with equal rewards (no teacher rows).
    The logged teacher_kl, w_clip_frac, gate_frac, distill_loss ... are rlsd_min's loss metrics on
    the whole batch at once, for 1 and 4 accumulated micro-batches (on 5fe4387 a micro-batch with
    no scored rows counted 0.0 and the logged value was their plain mean)."""
    logged = {}
    for accumulation in (1, 4):
        captured = []
        trainer, logs = qwen_run(method, qwen_path, tmp_path / str(accumulation), n=8, reward=_unanimous_reward,
                                 bf16=False, per_device_train_batch_size=32 // accumulation,
                                 gradient_accumulation_steps=accumulation, train=False, **fields)
        generate = trainer._generate_and_score_completions
        trainer._generate_and_score_completions = lambda inputs: captured.append(generate(inputs)) or captured[-1]
        trainer.train()
        logged[accumulation] = [h for h in trainer.state.log_history if "loss" in h][0]
        whole, cfg = captured[0], trainer._rlsd_config()
        whole["num_items_in_batch"] = whole["completion_mask"].sum()
        batch = trainer._step_batch(trainer.model, whole, cfg)
        assert batch.teacher_rows is not None and not batch.teacher_rows.all()    # some rows unscored
        with torch.no_grad():
            logp, _, logits = trainer.student_scores(trainer.model, batch, cfg)
            batch.old_logp = logp
            _, tiny = METHODS[method].loss_of_logits(logp, logits, batch, cfg, 0)            # the tiny loop's metrics
        names = {"rlsd": ("teacher_kl", "w_clip_frac", "lam", "loss_pg"),
                 "sdpg": ("teacher_kl", "gate_frac", "distill_loss", "beta", "loss_pg")}[method]
        print(accumulation, {n: (logged[accumulation][n], tiny[n]) for n in names})
        for name in names:
            assert logged[accumulation][name] == pytest.approx(tiny[name], rel=1e-5, abs=1e-8), name
    assert logged[1]["teacher_kl"] > 0 and (method != "rlsd" or logged[1]["w_clip_frac"] > 0)


def test_a_chat_dataset_gets_the_plain_language_teacher_template(qwen_path, tmp_path):
    trainer, _ = qwen_run("rlsd", qwen_path, tmp_path, conversational=True, train=False)
    data = [r for r in hf.rows(1, conversational=True) for _ in range(G)]
    out = trainer._generate_and_score_completions(data)
    ids = out["teacher_prompt_ids"][0][out["teacher_prompt_mask"][0].bool()]
    text = trainer.processing_class.decode(ids)
    print(text)
    question = data[0]["prompt"][0]["content"]
    assert text == (f"<|im_start|>user\nThe reference answer is: {data[0]['answer']}\n\n{question}<|im_end|>\n"
                    f"<|im_start|>assistant\n")
    assert rt.CHAT_TEMPLATE == "The reference answer is: {context}\n\n{prompt}"
    plain, _ = qwen_run("rlsd", qwen_path, tmp_path / "text", train=False)   # text keeps the tiny task's
    assert plain.privileged_template("What is 1 + 2?") == "{context}|{prompt}"


peft = pytest.importorskip("peft") if not os.environ.get("CI") else __import__("peft")


@pytest.mark.parametrize("method, mode", [("opsd", "frozen"), ("rlsd", "synced"), ("rlsd", "ema")])
def test_a_lora_teacher_is_the_base_or_a_second_adapter_and_checkpoints_adapter_weights_only(
        method, mode, qwen_path, tmp_path):
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer, logs = qwen_run(method, qwen_path, tmp_path, peft_config=lora, teacher_mode=mode, bf16=False,
                             learning_rate=0.05, max_steps=2, save_strategy="steps", save_steps=2, sync_every=1)
    model = trainer.accelerator.unwrap_model(trainer.model)
    total = sum(p.numel() for p in model.parameters())
    adapter = sum(p.numel() for n, p in model.named_parameters() if ".default." in n)
    teacher = sum(p.numel() for n, p in model.named_parameters() if f".{trl_teacher.TEACHER_ADAPTER}." in n)
    base = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(qwen_path).parameters())
    print(mode, dict(base=base, adapter=adapter, teacher=teacher, total=total))
    assert total == base + adapter + teacher and teacher == (0 if mode == "frozen" else adapter)
    saved = tmp_path / "out" / "checkpoint-2" / rt._SelfDistillationTrainer.TEACHER_FILE
    if mode == "frozen":                         # the base model: nothing of its own to save
        assert not saved.exists()
        x = torch.tensor([[5, 6, 7, 8]])
        with torch.no_grad(), trainer._teacher.scoring(trainer.model) as m:
            t = m(input_ids=x).logits
        with torch.no_grad():
            s = trainer.model(input_ids=x).logits
        initial = AutoModelForCausalLM.from_pretrained(qwen_path)(input_ids=x).logits
        assert torch.allclose(t, initial, atol=1e-6) and not torch.allclose(s, initial, atol=1e-4)
    else:
        state = torch.load(saved, weights_only=True)
        assert state and all(f".{trl_teacher.TEACHER_ADAPTER}." in k for k in state)
        assert sum(v.numel() for v in state.values()) == adapter
        student = {k.replace(f".{trl_teacher.TEACHER_ADAPTER}.", ".default."): v for k, v in state.items()}
        params = dict(model.named_parameters())
        moved = [torch.equal(v, params[k]) for k, v in student.items()]
        assert all(moved) == (mode == "synced")  # synced (sync_every 1) is the student's; ema lags it
