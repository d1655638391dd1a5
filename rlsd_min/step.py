"""One RL step in two named halves: `collect` the batch, then `update` the policy on it.

    collect   sample G completions per prompt from the current policy   (rlsd_min.sampling)
              reward them with the verifier, group-normalise            (rlsd_min.advantages)
              score them under the reference policy, if kl_coef > 0     (rlsd_min.reference_kl)
              score them under the privileged teacher, if the method has one  (rlsd_min.teacher)
              -> StepBatch: everything computed once per batch
              (all but the sampling is `score_rollout`, for completions given from elsewhere)
    update    `num_iterations` times: the student's forward, the method's loss
              (rlsd_min.methods), backward, gradient clipping, optimiser step

`rl_step` is their composition plus the teacher's refresh and the step's metrics. The
first update's own forward pass provides the old log-probs (the weights are still the
sampling policy's then), so nothing is computed twice. With num_iterations = 1 the PPO
ratio is exactly 1 and the clip never acts. Each part runs as a named phase
(rlsd_min.phases: its time, and bfloat16 autocast for the forwards when cfg.bf16_autocast).

Simplifications, as in nanochat's chat_rl: one optimiser step per iteration on the whole
batch (no minibatches), a constant learning rate, and no value function.
"""

from __future__ import annotations

import random
from typing import Callable

import torch

from .advantages import frac_zero_std, group_advantages
from .batch import Rollout, StepBatch
from .decoding import bf16_autocast, compiled_forward, split_head
from .methods import METHODS, distillation
from .objective import masked_mean
from .phases import Phases
from .sampling import (chunked_logprobs, completion_hidden, over_row_chunks, rollout_logprobs, sample_group,
                       token_scores)
from .teacher import (OTHER_KINDS, Teacher, encode_teacher_prompts, other_problems, privileged_prompts,
                      score_completions, sibling_completions)


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became inf/nan; training stopped before the bad update."""


def batch_problems(problems: list, step: int, cfg) -> list:
    """The prompts of one step: a pure function of (seed, step), so a resumed run sees the same."""
    return random.Random(cfg.seed * 1_000_003 + step).sample(problems, cfg.prompts_per_step)


def scorer(model, cfg):
    """`model` as the scoring forwards call it: through torch.compile with dynamic shapes when
    cfg.compile_scoring (the same module, the same weights), else as it is."""
    return compiled_forward(model, dynamic=True) if cfg.compile_scoring else model


def make_teacher(policy, cfg, pool: list | None = None) -> Teacher | None:
    """The teacher of cfg.method (None for a method without one). An other_* teacher_context
    needs `pool`, the training split, whose derangement (seeded by cfg.seed) picks the
    problem each question's teacher is shown (teacher.other_problems)."""
    if METHODS[cfg.method].teacher is None:
        return None
    others = None
    if cfg.teacher_context in OTHER_KINDS:
        if pool is None:
            raise ValueError(f"teacher_context={cfg.teacher_context!r} needs the training split: "
                             f"pass pool=<its problems> to make_teacher")
        others = other_problems(pool, cfg.seed)
    return Teacher(policy, cfg.teacher_mode, cfg.sync_every, cfg.ema_rate, others)


def collect(policy, tokenizer, problems: list, cfg, ref_model=None, teacher: Teacher | None = None,
            phases: Phases | None = None) -> StepBatch:
    """Sample, verify, group advantages, reference and teacher scores: the StepBatch of one step.

    ref_model is scored when given (the loop passes it when cfg.needs_reference()), the teacher
    when the method has one."""
    phases = phases or Phases(next(policy.parameters()).device, cfg.bf16_autocast)
    with phases("sample", autocast=True):
        rollout = sample_group(policy, tokenizer, [p.prompt for p in problems], cfg.group_size,
                               cfg.max_new_tokens, cfg.temperature, compile_decoding=cfg.compile_decoding)
    return score_rollout(policy, tokenizer, problems, rollout, cfg, ref_model, teacher, phases)


def score_rollout(policy, tokenizer, problems: list, rollout: Rollout, cfg, ref_model=None,
                  teacher: Teacher | None = None, phases: Phases | None = None) -> StepBatch:
    """`collect` after the sampling: the StepBatch of given completions (G per problem, group
    members adjacent, laid out as sample_group lays them out). collect calls it on the
    completions it sampled; a test can hand it completions it chose."""
    device = next(policy.parameters()).device
    phases = phases or Phases(device, cfg.bf16_autocast)
    with phases("sample"):                                # verify + advantages
        rows = [p for p in problems for _ in range(cfg.group_size)]
        rewards = torch.tensor([p.reward(t) for p, t in zip(rows, rollout.texts)],
                               device=rollout.completion_ids.device)                        # (N,)
        advantages = group_advantages(rewards, cfg.group_size, cfg.adv_scale, cfg.adv_eps)  # (N,)
        batch = StepBatch(rollout, rewards, advantages)
        ended = (rollout.completion_ids == tokenizer.eos_token_id).any(dim=1)                # (N,) stopped by <eos>
        batch.metrics.update(truncated_frac=1.0 - ended.float().mean().item(),   # cut by max_new_tokens
                             tokens=int(rollout.prompt_mask.sum() + rollout.completion_mask.sum()))
    if ref_model is not None:
        with phases("ref", autocast=True), torch.inference_mode():
            batch.ref_logp = rollout_logprobs(scorer(ref_model, cfg), rollout, cfg.temperature).clone()  # (N, T)
    if METHODS[cfg.method].teacher is not None:
        if teacher is None:
            raise ValueError(f"method {cfg.method!r} needs its teacher: pass teacher=make_teacher(policy, cfg)")
        with phases("teacher", autocast=True):
            siblings = (sibling_completions(rollout.texts, rewards.tolist(), cfg.group_size)
                        if cfg.teacher_context == "sibling" else None)
            prompts = privileged_prompts(problems, cfg.teacher_context, cfg.privileged_template,
                                         others=teacher.others, siblings=siblings)      # B, or N with None
            ids, mask, prompt_index, context_rows = encode_teacher_prompts(tokenizer, prompts, rollout, device)
            batch.teacher_logp, batch.teacher_logits, batch.teacher_rows = teacher_scores(
                scorer(teacher.model, cfg), ids, mask, rollout, advantages, cfg, prompt_index, context_rows)
            batch.metrics["teacher_frac"] = 1.0 if context_rows is None else context_rows.float().mean().item()
    return batch


def teacher_scores(teacher_model, prompt_ids, prompt_mask, rollout: Rollout, advantages, cfg,
                   prompt_index=None, context_rows=None):
    """(log q_t(y_t) (N, T), full-vocabulary logits (n, T, V) of the n scored rows or None, rows)
    of the teacher on the rollout, after its prompts (U, P'): one per group, or row n's is
    prompt_index[n] (teacher.encode_teacher_prompts). The rows scored are `scored_teacher_rows`';
    StepBatch.teacher_logits_of reads the logits by batch row."""
    full_vocab = METHODS[cfg.method].needs_logits(cfg)

    def score(rows):
        out = score_completions(teacher_model, prompt_ids, prompt_mask, rollout, full_vocab, cfg.temperature,
                                rows, prompt_index)                              # (n, T) [, (n, T, V)]
        return out if full_vocab else (out, None)

    return scored_teacher_rows(score, advantages, cfg, rollout.completion_ids.shape, teacher_model.config.vocab_size,
                               context_rows, compact=True)


def scored_teacher_rows(score, advantages, cfg, shape: tuple, vocab_size: int, context_rows=None,
                        compact: bool = False):
    """(log q_t(y_t) (N, T), logits (N, T, V) or (n, T, V) or None, rows) from score(rows) -> ((n, T),
    (n, T, V) or None), the teacher's forward over the rows asked for (None = all N): the tiny loop's
    (`teacher_scores`) and the TRL trainers'. compact=True returns the logits of the n scored
    rows alone, (n, T, V) (the tiny loop: StepBatch.teacher_logits_of reads them); the TRL
    trainers keep (N, T, V), since their micro-batches slice every tensor by batch row.

    Only the rows whose loss the teacher can change are scored: those that have a teacher
    (context_rows (N,) bool; None = all: a `sibling` row whose group has no other success has
    none) and that the method's term reaches (METHODS[cfg.method].teacher_rows: A_i > 0 under
    SDPG's gate, A_i != 0 for RLSD; None = all). The others get 0 log-probs and 0 logits (a
    uniform teacher) and no teacher term in the loss (rows, StepBatch.teacher_rows)."""
    full_vocab = METHODS[cfg.method].needs_logits(cfg)
    rows = METHODS[cfg.method].teacher_rows(advantages, cfg)                      # (N,) bool or None
    if context_rows is not None:
        rows = context_rows if rows is None else rows & context_rows              # (N,)
    if rows is None:
        return (*score(None), rows)
    N, T = shape
    if not rows.any():
        logits = torch.zeros(0 if compact else N, T, vocab_size, device=advantages.device) if full_vocab else None
        return torch.zeros(N, T, device=advantages.device), logits, rows
    scored, scored_logits = score(rows)                                          # (n, T), (n, T, V) or None
    logp = scored.new_zeros(N, T).index_put((rows,), scored)                     # (N, T)
    if full_vocab and not compact:
        scored_logits = scored_logits.new_zeros(N, T, scored_logits.shape[-1]).index_put((rows,), scored_logits)
    return logp, scored_logits, rows                                             # (N, T, V), (n, T, V) or None


def method_loss(policy, batch: StepBatch, cfg, step: int) -> tuple[torch.Tensor, dict]:
    """The student's forward and the loss of cfg.method on `batch` at RL step `step`:
    (loss, its metrics). Fills batch.old_logp on first use.

    Only the rows that can change the loss go through the student: where the method's record
    says a row with A_i = 0 adds nothing (METHODS[...].skips_zero_rows: GRPO and RLSD without
    the reference KL, SDPG's gated loss without it), those rows get log-probs 0 (and D_t 0)
    without a forward; their tokens still count in every normaliser, so the loss and its
    gradient are the whole batch's. The log-probs, and a full-vocabulary divergence D_t, come
    from the final hidden states a chunk of rows at a time (rlsd_min.sampling.over_row_chunks):
    the student's (N, T, V) logits are never held. The entropy metric is the sampler's
    (every completion token), or the scored rows' for completions given from elsewhere."""
    method, rollout = METHODS[cfg.method], batch.rollout
    N, T = rollout.completion_ids.shape
    G = rollout.group_size
    full = not method.skips_zero_rows(cfg)
    picked = torch.arange(N, device=rollout.completion_ids.device) if full else batch.advantages.nonzero().squeeze(1)
    logp = torch.zeros(N, T, device=rollout.completion_ids.device)                # (N, T)
    ent, distill = torch.zeros_like(logp), None                                   # (N, T), D_t when read
    if len(picked):
        body, head = split_head(scorer(policy, cfg))
        used, groups = torch.unique(picked // G, return_inverse=True)            # prompts needed; (n,) into them
        tokens = rollout.completion_ids[picked]                                  # (n, T)
        with bf16_autocast(logp.device, cfg.bf16_autocast):                     # the forward only
            hidden = completion_hidden(body, rollout.prompt_ids[::G][used], rollout.prompt_mask[::G][used],
                                       tokens, rollout.completion_mask[picked], groups)           # (n, T, H)
            if method.needs_logits(cfg):  # log-probs and the full-vocabulary D_t from each chunk's logits
                scored, scored_ent, scored_distill = over_row_chunks(
                    lambda lg, y, rows: (*token_scores(lg, y), distillation(cfg, lg, batch.teacher_logits_of(rows))),
                    hidden, head, cfg.temperature, tokens, picked)                          # (n, T) x 3
                distill = scored_distill if full else logp.to(scored.dtype).index_put((picked,), scored_distill)
            else:
                scored, scored_ent = chunked_logprobs(hidden, head, tokens, cfg.temperature)    # (n, T), (n, T)
        logp = scored if full else logp.to(scored.dtype).index_put((picked,), scored)          # (N, T)
        ent = scored_ent if full else ent.to(scored.dtype).index_put((picked,), scored_ent)
    elif method.needs_logits(cfg):
        distill = torch.zeros_like(logp)                                         # (N, T) no row to distil
    if batch.old_logp is None:  # the weights are still the sampling policy's
        batch.old_logp = logp.detach()
    loss, metrics = method.loss(logp, distill, batch, cfg, step)
    if rollout.entropy is not None:
        metrics["entropy"] = masked_mean(rollout.entropy, rollout.completion_mask).item()
    else:
        metrics["entropy"] = masked_mean(ent, rollout.completion_mask[picked] if full else
                                         rollout.completion_mask * (batch.advantages != 0)[:, None]).item()
    return loss, metrics


def update(policy, optimizer, batch: StepBatch, cfg, step: int, phases: Phases | None = None) -> dict:
    """`num_iterations` optimiser steps of cfg.method's loss on `batch`; the last iteration's
    metrics (loss, its parts, grad_norm, entropy). Refuses a non-finite loss or gradient
    before it reaches the weights."""
    phases = phases or Phases(next(policy.parameters()).device, cfg.bf16_autocast)
    for _ in range(cfg.num_iterations):
        with phases("update"):                            # student forward + backward
            loss, metrics = method_loss(policy, batch, cfg, step)
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"non-finite loss {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            if loss.requires_grad:
                loss.backward()
            else:  # no row can change the loss: its gradient is 0, and the optimiser steps on that
                for p in policy.parameters():
                    p.grad = torch.zeros_like(p)
            grad_norm = torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            if not torch.isfinite(grad_norm):
                raise NonFiniteLossError(f"non-finite gradient norm at step {step}")
        with phases("optim"):
            optimizer.step()
    return {"loss": loss.item(), **metrics, "grad_norm": grad_norm.item()}


def rl_step(policy, tokenizer, ref_model, optimizer, problems: list, cfg, step: int,
            teacher: Teacher | None = None, floor: Callable | None = None) -> dict:
    """One RL step on `problems` (collect, then update, then the teacher's refresh); returns
    the step's metrics, the time of each phase that ran included. floor(batch, problems), when
    given (the loop's, with cfg.distill_floor), is the leakage floor of the collected batch
    before the update (rlsd_min.leakage.distill_floor), logged as distill_floor."""
    phases = Phases(next(policy.parameters()).device, cfg.bf16_autocast)
    batch = collect(policy, tokenizer, problems, cfg, ref_model, teacher, phases)
    if floor is not None:
        with phases("floor"):
            batch.metrics["distill_floor"] = floor(batch, problems)
    row = update(policy, optimizer, batch, cfg, step, phases)
    if teacher is not None:
        with phases("update"):                            # a synced or ema teacher's refresh
            teacher.update(policy, step + 1)
    mask = batch.rollout.completion_mask
    return {"step": step + 1, **row, **batch.metrics,
            "reward_mean": batch.rewards.mean().item(),
            "reward_std": batch.rewards.std().item(),             # over the whole batch, as TRL's
            "frac_zero_std": frac_zero_std(batch.rewards, cfg.group_size),
            "completion_len": mask.sum(1).float().mean().item(),
            **phases.metrics()}
