"""The student's forward does less work without changing the loss, in float64 (rlsd_min.step.method_loss):

    skipping        rows with A_i = 0 skipped where the method's record allows it
                    (METHODS[m].skips_zero_rows) against every row scored
    shared prefix   each group's prompt run once, its KV cache shared by the G rows
                    (sampling.completion_hidden), against one pass over [prompt | completion] per row
    chunked         the log-probs from the hidden states a few rows at a time, the backward
                    recomputing each chunk (sampling.chunked_logprobs), against the whole logits

For every method and aggregation: the loss, every logged part and every parameter's gradient
agree to 1e-10 relative. A batch whose groups all have zero spread runs no student forward.
"""

import copy
import dataclasses

import pytest
import torch

from rlsd_min import sampling
from rlsd_min import step as step_mod
from rlsd_min.advantages import group_advantages
from rlsd_min.batch import StepBatch
from rlsd_min.config import train_config
from rlsd_min.methods import METHODS
from rlsd_min.objective import AGGREGATIONS, masked_mean
from rlsd_min.sampling import encode_prompts, sample_group
from rlsd_min.teacher import privileged_prompts

G = 4
REWARDS = [1, 0, 0, 1, 1, 1, 1, 1, 0, 1, 1, 0]       # groups: mixed, all equal (A = 0), mixed


def _rms_norm_in_its_dtype(self, hidden):
    """LlamaRMSNorm without its cast to float32, so a float64 model is float64 throughout."""
    variance = hidden.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden * torch.rsqrt(variance + self.variance_epsilon))


@pytest.fixture(scope="module")
def setup(tokenizer, splits):
    """A float64 tiny Llama (its RMSNorm in float64 too: transformers computes it in float32,
    which would bound the comparison at float32 rounding) and a rollout of 3 prompts x 4
    completions sampled from it."""
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from rlsd_min import model as model_io
    from rlsd_min.config import ModelConfig

    patch = pytest.MonkeyPatch()
    patch.setattr(LlamaRMSNorm, "forward", _rms_norm_in_its_dtype)

    model = model_io.build_model(ModelConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2),
                                 tokenizer, seed=3).double()
    problems = splits["train"][:3]
    torch.manual_seed(0)
    with torch.no_grad():
        rollout = sample_group(model, tokenizer, [p.prompt for p in problems], G, 12)
    yield model, problems, rollout
    patch.undo()


def _batch(model, tokenizer, problems, rollout, cfg, rewards=REWARDS):
    rewards = torch.tensor(rewards, dtype=torch.float64)
    batch = StepBatch(rollout, rewards, group_advantages(rewards, G, cfg.adv_scale, cfg.adv_eps))
    if cfg.needs_reference():
        batch.ref_logp = sampling.rollout_logprobs(model, rollout).detach() - 0.01                # (N, T)
    if METHODS[cfg.method].teacher is not None:
        ids, mask = encode_prompts(tokenizer, privileged_prompts(problems, cfg.teacher_context,
                                                                 cfg.privileged_template), "cpu")
        batch.teacher_logp, batch.teacher_logits, batch.teacher_rows = step_mod.teacher_scores(
            model, ids, mask, rollout, batch.advantages, cfg)
    return batch


def _loss_and_grads(model, batch, cfg):
    model.zero_grad(set_to_none=True)
    batch = dataclasses.replace(batch, old_logp=None, metrics={})
    loss, metrics = step_mod.method_loss(model, batch, cfg, step=3)
    if loss.requires_grad:
        loss.backward()
    grads = {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in model.named_parameters()}
    return loss.detach(), metrics, grads


def _assert_same(a, b):
    (la, ma, ga), (lb, mb, gb) = a, b
    assert torch.allclose(la, lb, rtol=1e-10, atol=1e-14), (la, lb)
    assert ma.keys() == mb.keys()
    for k in ma:
        assert ma[k] == pytest.approx(mb[k], rel=1e-10, abs=1e-14), k
    for n in ga:
        assert torch.allclose(ga[n], gb[n], rtol=1e-10, atol=1e-14), (n, (ga[n] - gb[n]).abs().max().item())


def _unshared_hidden(body, prompt_ids, prompt_mask, completion_ids, completion_mask, groups=None):
    """One forward over [prompt | completion] per row: no prompt shared."""
    B, P = prompt_ids.shape
    N = completion_ids.shape[0]
    groups = torch.arange(B).repeat_interleave(N // B) if groups is None else groups
    ids = torch.cat([prompt_ids[groups], completion_ids], 1)                            # (N, P+T)
    attn = torch.cat([prompt_mask[groups], completion_mask], 1)
    hidden = body(input_ids=ids, attention_mask=attn, position_ids=(attn.cumsum(1) - 1).clamp(min=0)).last_hidden_state
    return hidden[:, P - 1:-1]                                                          # (N, T, H)


CASES = [(m, agg, kl) for m in METHODS for agg in AGGREGATIONS for kl in (0.0, 0.05)]


@pytest.mark.parametrize("method, agg, kl", CASES)
def test_skipping_sharing_and_chunking_leave_the_loss_and_gradient_exact(setup, tokenizer, monkeypatch, method, agg, kl):
    model, problems, rollout = setup
    cfg = train_config("ci", method=method, loss_agg=agg, kl_coef=kl, group_size=G, max_new_tokens=12)
    batch = _batch(model, tokenizer, problems, rollout, cfg)
    fast = _loss_and_grads(model, batch, cfg)
    with monkeypatch.context() as mp:                      # every row through the student
        mp.setitem(METHODS, method, dataclasses.replace(METHODS[method], skips_zero_rows=lambda c: False))
        _assert_same(fast, _loss_and_grads(model, batch, cfg))
    with monkeypatch.context() as mp:                      # no prompt shared
        mp.setattr(step_mod, "completion_hidden", _unshared_hidden)
        _assert_same(fast, _loss_and_grads(model, batch, cfg))
    with monkeypatch.context() as mp:                      # one row per chunk (each recomputed in the backward)
        mp.setattr(sampling, "LOGITS_CHUNK_BYTES", 1)
        _assert_same(fast, _loss_and_grads(model, batch, cfg))
    assert (batch.teacher_rows is not None) == (method in ("rlsd", "sdpg"))    # the gated teachers' rows
    if batch.teacher_logits is not None and batch.teacher_rows is not None:   # the scored rows' logits alone
        assert batch.teacher_logits.shape[0] == int(batch.teacher_rows.sum()) < batch.rollout.completion_ids.shape[0]
        every_row = batch.teacher_logits_of()                                  # (N, T, V), zeros elsewhere
        assert torch.equal(every_row[batch.teacher_rows], batch.teacher_logits)
        assert not every_row[~batch.teacher_rows].any()
        _assert_same(fast, _loss_and_grads(model, dataclasses.replace(batch, teacher_logits=every_row), cfg))


def test_which_methods_skip_zero_advantage_rows():
    skip = {m: METHODS[m].skips_zero_rows(train_config("ci", method=m)) for m in METHODS}
    assert skip == {"grpo": True, "opsd": False, "grpo_opsd": False, "rlsd": True, "sdpg": False}   # sdpg: kl_coef 0.01
    assert METHODS["sdpg"].skips_zero_rows(train_config("ci", method="sdpg", kl_coef=0.0))
    assert not METHODS["sdpg"].skips_zero_rows(train_config("ci", method="sdpg", kl_coef=0.0, sdpg_gate=False))
    assert not METHODS["grpo"].skips_zero_rows(train_config("ci", method="grpo", kl_coef=0.1))


def test_a_batch_without_reward_spread_runs_no_student_forward(setup, tokenizer, monkeypatch):
    model, problems, rollout = setup
    model = copy.deepcopy(model)                                                  # trained below
    cfg = train_config("ci", method="grpo", group_size=G, max_new_tokens=12)
    batch = _batch(model, tokenizer, problems, rollout, cfg, rewards=[1] * 4 + [0] * 4 + [1] * 4)
    calls = []
    monkeypatch.setattr(step_mod, "completion_hidden", lambda *a, **k: calls.append(1) or sampling.completion_hidden(*a, **k))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)     # as the loop's
    before = [p.detach().clone() for p in model.parameters()]
    row = step_mod.update(model, opt, batch, cfg, step=0)
    assert calls == [] and row["loss"] == 0.0 and row["grad_norm"] == 0.0
    assert all(s["step"] == 1 for s in opt.state.values()) and len(opt.state) == len(before)   # the step counts
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))  # a first Adam step on 0 moves nothing
    batch = _batch(model, tokenizer, problems, rollout, cfg)                      # two groups with spread
    step_mod.update(model, torch.optim.AdamW(model.parameters(), lr=1e-3), batch, cfg, step=0)
    assert calls == [1]


def test_the_entropy_metric_is_the_samplers_over_every_token(setup, tokenizer):
    model, problems, rollout = setup
    cfg = train_config("ci", method="grpo", group_size=G, max_new_tokens=12)
    batch = _batch(model, tokenizer, problems, rollout, cfg)
    with torch.no_grad():
        logits = sampling.token_logprobs(model, rollout)[1]                                  # (N, T, V)
    whole = masked_mean(sampling.entropy(logits), rollout.completion_mask).item()
    _, metrics = step_mod.method_loss(model, dataclasses.replace(batch, metrics={}), cfg, step=0)
    assert metrics["entropy"] == pytest.approx(whole, rel=1e-5)   # all rows, skipped ones included (sampler: float32)
