"""RLSD, SDPG and OPSD (GRPO+OPSD too) as TRL trainers: rlsd_min's losses on `trl.GRPOTrainer`.

    trainer        config        rlsd_min method
    RLSDTrainer    RLSDConfig    rlsd
    SDPGTrainer    SDPGConfig    sdpg
    OPSDTrainer    OPSDConfig    opsd; with_reward=True: grpo_opsd (GRPO + beta * OPSD)

What each side does in one step:

    TRL       sample (transformers' generate or vLLM), the reward functions, the group
              advantages A_i (rewards gathered over the processes), the reference model's
              log-probs (when kl_coef > 0), the optimiser, accelerate (DDP, DeepSpeed, FSDP),
              checkpoints and logging (`report_to`)
    rlsd_min  the teacher prompt (`privileged_prompt` -> rlsd_min.teacher.teacher_prompt) of each
              row's privileged_context, or with teacher_context='sibling' of a success of its
              group (rlsd_min.teacher.sibling_completions on TRL's gathered rewards), the
              teacher's weights (trl_teacher: a copy, or a second LoRA adapter), the method's loss
              (METHODS[method].loss: rlsd_advantages, the divergences, sdpg_beta, the gate,
              kl_penalty, aggregate) and its metrics, weighted over the step (trl_metrics)

Every log-prob the loss reads, the student's and the teacher's, is scored by TRL's own call,
the one that scores TRL's old and reference log-probs (trl_scoring.completion_scores): at
theta = theta_ref the ratio is 1 and the reference KL 0 to the last bit, in bf16 too.

The trainer turns TRL's batch into rlsd_min's `StepBatch` (`_step_batch`) and calls the loss
the tiny loop calls: no formula is written here. The configs are in trl_configs (TrainConfig's
method fields, names and defaults; TRL's names for the run settings; `loss_type` read as
`loss_agg` where the two agree).

Layout rlsd_min's functions rely on, kept here: rows of a group are adjacent and every
micro-batch holds whole groups (`per_device_train_batch_size` a multiple of `num_generations`),
in order (TRL's `_prepare_inputs` shuffles rows; `_prepare_inputs` below does not), and one
optimiser step per sampled batch (`steps_per_generation == gradient_accumulation_steps`, TRL's
default). Then the loss over P processes x K accumulated micro-batches is exactly rlsd_min's
loss over the whole batch (`shard_weight`).

Simplified: text prompts only (no images, tools or environments); TRL's vLLM importance-
sampling correction is not applied (set vllm_importance_sampling_correction=False with vLLM);
the full-vocabulary divergences (OPSD, GRPO+OPSD, SDPG) materialise the student's and the
teacher's logits (rows x T x V); the sampled-token methods (RLSD, OPSD 'sampled') do not.
"""

from __future__ import annotations

import dataclasses
import math
import os

import torch
import trl
from accelerate.utils import gather_object
from transformers import TrainerCallback
from trl.trainer.utils import pad, split_tensor_dict

from ..config import TrainConfig
from ..batch import Rollout, StepBatch
from ..methods import METHODS
from ..teacher import sibling_completions
from . import trl_configs
from .trl_configs import (LOSS_TYPES, TRL_ADV_EPS, TRL_CONTEXTS, TRL_NAMES, OPSDConfig, RLSDConfig,  # noqa: F401
                          SDPGConfig, checkpointing, method_fields)
from .trl_metrics import StepMeans, weights
from .trl_scoring import check_full_vocab_head, completion_scores
from .trl_teacher import (CHAT_TEMPLATE, CONTEXT_COLUMN, check_dataset, check_teacher_sharding,  # noqa: F401
                          make_teacher, privileged_prompt, sdpo_template, teacher_scores, template_for)


def shard_weight(loss_agg: str, tokens, total_tokens, shards: int) -> float:
    """The weight of one shard's loss that makes the mean over `shards` shards (DDP's mean over
    processes x the sum over accumulated micro-batches) equal rlsd_min.objective.aggregate over
    the whole batch.

    token-mean divides by the batch's token count, so a shard's token mean counts in proportion
    to its tokens: weight = tokens * shards / total_tokens. seq-mean and group-token-mean
    average over rows and groups, and every shard holds the same number of whole groups:
    weight 1.
    """
    if loss_agg == "token-mean":
        return float(tokens) * shards / max(float(total_tokens), 1.0)
    return 1.0


# --- the trainers ----------------------------------------------------------------------------

class _TeacherRefresh(TrainerCallback):
    """After each optimiser step: the synced or ema teacher's refresh."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        teacher, iterations = self.trainer._teacher, self.trainer.num_iterations
        if teacher is not None and state.global_step % iterations == 0:  # after the RL step's last iteration
            teacher.update(self.trainer.model, state.global_step // iterations)


class _SelfDistillationTrainer(trl.GRPOTrainer):
    """trl.GRPOTrainer whose loss is rlsd_min's METHODS[args.method].loss, with the privileged teacher."""
    config_class = trl_configs._MethodConfig
    TEACHER_FILE = "rlsd_teacher.pt"

    def __init__(self, model, reward_funcs, args=None, train_dataset=None, *pargs, **kwargs):
        if not isinstance(args, self.config_class):
            raise TypeError(f"{type(self).__name__} needs args={self.config_class.__name__}(...), got "
                            f"{type(args).__name__}")
        if METHODS[args.method].teacher is not None:
            column = args.teacher_context != "sibling"                  # sibling: the context is the group's
            check_dataset(train_dataset, context=column)
            if kwargs.get("eval_dataset") is not None:
                check_dataset(kwargs["eval_dataset"], "eval_dataset", context=column)
        super().__init__(model, reward_funcs, args, train_dataset, *pargs, **kwargs)
        if self.tools or self.environment_factories is not None:
            raise ValueError(f"{type(self).__name__} takes text prompts only: no tools or environments")
        stage = self.accelerator.state.deepspeed_plugin.zero_stage if self.is_deepspeed_enabled else None
        check_teacher_sharding(args.teacher_mode, self.is_fsdp_enabled, stage)
        if METHODS[args.method].needs_logits(args.rlsd_config):
            check_full_vocab_head(self.model)
        self._teacher = None  # made at the first update, from the weights then (theta_0)
        self._cfg = None
        self._rewards = None  # R (N_all,) of the batch being scored, every process's rows
        self._step_means = {"train": StepMeans(), "eval": StepMeans()}
        self.add_callback(_TeacherRefresh(self))

    def rl_step(self) -> int:
        """rlsd_min's step counter k (RLSD's lambda(k), SDPG's beta(k)): the sampled batches done.
        TRL's global_step counts optimiser steps, num_iterations of them per sampled batch."""
        return self.state.global_step // self.num_iterations

    def _rlsd_config(self) -> TrainConfig:
        """args.rlsd_config with the run's total RL steps (SDPG's beta(k) is laid out over them)."""
        steps = max(1, self.state.max_steps // self.num_iterations)
        if self._cfg is None or self._cfg.steps != steps:
            self._cfg = dataclasses.replace(self.args.rlsd_config, steps=steps)
        return self._cfg

    def _prepare_inputs(self, generation_batch):
        """TRL's buffering (sample once per `steps_per_generation * num_iterations` micro-batches),
        the sampled batch cut into contiguous micro-batches of whole groups, not shuffled."""
        if not self.model.training:
            return self._generate_and_score_completions(generation_batch)
        if self._step % (self.args.steps_per_generation * self.num_iterations) == 0 or self._buffered_inputs is None:
            batch = self._generate_and_score_completions(generation_batch)
            self._buffered_inputs = split_tensor_dict(batch, self.args.steps_per_generation)
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    def privileged_template(self, prompt) -> str:
        """The teacher's template for prompts like `prompt`: args.privileged_template, else
        CHAT_TEMPLATE for a conversation and rlsd_min.teacher.PRIVILEGED_TEMPLATE for text."""
        return template_for(prompt, self.args.privileged_template)

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        """TRL's rewards per function (N_all, F), which TRL gathers over the processes (accelerate's
        gather) for its group advantages; their weighted sum R (N_all,), TRL's, is kept for the
        `sibling` teacher, so that every process sees its rows' group mates."""
        per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)   # (N_all, F)
        self._rewards = (per_func * self.reward_weights.to(per_func.device).unsqueeze(0)).nansum(dim=1)
        return per_func

    def _siblings(self, completion_ids, G: int) -> list:
        """Each local row's `sibling` context (rlsd_min.teacher.sibling_completions, None where its
        group has no other success), chosen among every process's rows: the rewards TRL gathered,
        the completions decoded here (skip_special_tokens, as TRL's reward functions read them)
        and gathered (accelerate's gather_object); this process's rows are its slice, TRL's."""
        texts = self.processing_class.batch_decode(completion_ids, skip_special_tokens=True)     # N
        siblings = sibling_completions(gather_object(texts), self._rewards.tolist(), G)           # N_all
        start = self.accelerator.process_index * len(texts)
        return siblings[start:start + len(texts)]

    def _generate_and_score_completions(self, inputs):
        """TRL's batch plus each row's teacher prompt ids (N, P'), left-padded; for `sibling`, the
        rows that have a teacher, teacher_context_rows (N,) bool (the others get their own prompt,
        never scored)."""
        out = super()._generate_and_score_completions(inputs)
        if METHODS[self.args.method].teacher is None:
            return out
        G = self.num_generations if self.model.training else self.num_generations_eval
        firsts = inputs[::G]
        for i, x in enumerate(inputs):
            if (x["prompt"], x.get(CONTEXT_COLUMN)) != (firsts[i // G]["prompt"], firsts[i // G].get(CONTEXT_COLUMN)):
                raise ValueError(f"row {i} differs from the first row of its group in prompt or {CONTEXT_COLUMN}")
        device = out["prompt_ids"].device
        if self.args.teacher_context == "sibling":   # one prompt per row
            siblings = self._siblings(out["completion_ids"], G)
            prompts = [x["prompt"] if s is None else privileged_prompt(x["prompt"], s, self.privileged_template(x["prompt"]))
                       for x, s in zip(inputs, siblings)]
            out["teacher_context_rows"] = torch.tensor([s is not None for s in siblings], device=device)   # (N,)
            repeat = 1
        else:                                        # one prompt per group, from its privileged_context
            prompts = [privileged_prompt(x["prompt"], x[CONTEXT_COLUMN], self.privileged_template(x["prompt"]))
                       for x in firsts]
            repeat = G
        ids = [torch.tensor(row) for row in self._tokenize_prompts(prompts)[0]]     # B or N x (P'_b,)
        out["teacher_prompt_ids"] = pad(ids, self._tokenizer.pad_token_id, "left").to(device).repeat_interleave(repeat, 0)
        out["teacher_prompt_mask"] = pad([torch.ones_like(r) for r in ids], 0, "left").to(device).repeat_interleave(
            repeat, 0)
        return out                                                                  # teacher prompts (N, P')

    def _teacher_of(self):
        """The teacher (trl_teacher.make_teacher), made on first use."""
        if self._teacher is None:
            self._teacher = make_teacher(self)
        return self._teacher

    def _step_batch(self, model, inputs, cfg: TrainConfig) -> StepBatch:
        """TRL's micro-batch as rlsd_min's StepBatch, the teacher's scores included."""
        if "pixel_values" in inputs or "tool_mask" in inputs:
            raise ValueError(f"{type(self).__name__} takes text prompts only: no images or tool turns")
        G = self.num_generations if self.model.training else self.num_generations_eval
        rollout = Rollout(inputs["prompt_ids"], inputs["prompt_mask"], inputs["completion_ids"],
                          inputs["completion_mask"], texts=[], group_size=G)
        advantages = inputs["advantages"]                                           # (N,) TRL's A_i
        batch = StepBatch(rollout, rewards=torch.full_like(advantages, math.nan),  # (N,) no loss reads R_i
                          advantages=advantages, old_logp=inputs.get("old_per_token_logps"),
                          ref_logp=inputs.get("ref_per_token_logps"))
        if METHODS[cfg.method].teacher is not None:
            if "teacher_logp" not in inputs:
                logp, logits, rows = teacher_scores(self, self._teacher_of(), model, inputs, rollout, advantages,
                                                    cfg)                            # (N, T), (N, T, V), (N,)
                if self.num_iterations > 1:  # scored once per sampled batch, as rlsd_min's collect
                    inputs.update(teacher_logp=logp, teacher_logits=logits, teacher_rows=rows)
            else:
                logp, logits, rows = inputs["teacher_logp"], inputs["teacher_logits"], inputs["teacher_rows"]
            batch.teacher_logp, batch.teacher_logits, batch.teacher_rows = logp, logits, rows
        return batch

    def student_scores(self, model, batch: StepBatch, cfg: TrainConfig):
        """The student's (log-probs (N, T), entropies (N, T), logits (N, T, V) or None) on the
        micro-batch: the one scoring path, TRL's old and reference log-probs' own call."""
        r = batch.rollout
        return completion_scores(self, model, r.prompt_ids, r.prompt_mask, r.completion_ids, r.completion_mask,
                                 entropy=True, full_vocab=METHODS[cfg.method].needs_logits(cfg))

    def _compute_loss(self, model, inputs):
        """rlsd_min's loss of the method on the micro-batch, weighted so that the step's loss over
        every process and micro-batch is rlsd_min's loss over the whole sampled batch."""
        cfg = self._rlsd_config()
        batch = self._step_batch(model, inputs, cfg)
        logp, entropies, logits = self.student_scores(model, batch, cfg)           # (N, T), (N, T), (N, T, V)
        if batch.old_logp is None:  # the weights are still the sampling policy's
            batch.old_logp = logp.detach()
        loss, metrics = METHODS[cfg.method].loss_of_logits(logp, logits, batch, cfg, self.rl_step())
        mask = batch.rollout.completion_mask                                        # (N, T)
        metrics["entropy"] = ((entropies.detach() * mask).sum() / mask.sum().clamp(min=1)).item()
        if METHODS[cfg.method].teacher is not None:  # the rows that have a teacher (all but sibling's)
            context_rows = inputs.get("teacher_context_rows")
            metrics["teacher_frac"] = 1.0 if context_rows is None else context_rows.float().mean().item()
        training = self.model.training
        accumulation = self.current_gradient_accumulation_steps if training else 1
        weight = shard_weight(cfg.loss_agg, mask.sum(), inputs["num_items_in_batch"],
                              self.accelerator.num_processes * accumulation)
        self._log_rlsd_metrics(metrics, weights(batch, cfg), "train" if training else "eval")
        return loss * (weight / accumulation)

    def _log_rlsd_metrics(self, metrics: dict, metric_weights: dict, mode: str) -> None:
        """rlsd_min's metrics under their names: summed with their weights (trl_metrics) over the
        step's micro-batches, then at the step's last one reduced over the processes and handed
        to TRL's `log` as the step's value."""
        means = self._step_means[mode]
        means.add(metrics, metric_weights)
        if mode == "eval" or self.accelerator.sync_gradients:
            for name, value in means.means(self.accelerator).items():
                self._metrics[mode][name].append(value)

    def _save_checkpoint(self, model, trial):
        """TRL's checkpoint, plus what the teacher adds: a copy's weights, or a LoRA teacher's
        adapter weights (nothing for a live teacher, or a frozen one that is the base model)."""
        super()._save_checkpoint(model, trial)
        state = self._teacher.state_dict() if self._teacher is not None else None
        if state is not None and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            torch.save(state, os.path.join(folder, self.TEACHER_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        path = os.path.join(checkpoint, self.TEACHER_FILE) if checkpoint else None
        if path and os.path.isfile(path):
            self._teacher_of().load_state_dict(torch.load(path, map_location=self.accelerator.device,
                                                          weights_only=True))


class RLSDTrainer(_SelfDistillationTrainer):
    """RLSD (Yang et al. 2026, arXiv 2604.03128) on trl.GRPOTrainer: rlsd_min.methods.rlsd's loss."""
    config_class = RLSDConfig
    _tag_names = ["trl", "rlsd", "rlsd_min"]
    _name = "RLSD"


class SDPGTrainer(_SelfDistillationTrainer):
    """SDPG (Liu et al. 2026, arXiv 2606.04036) on trl.GRPOTrainer: rlsd_min.methods.sdpg's loss."""
    config_class = SDPGConfig
    _tag_names = ["trl", "sdpg", "rlsd_min"]
    _name = "SDPG"


class OPSDTrainer(_SelfDistillationTrainer):
    """OPSD (Zhao et al. 2026, arXiv 2601.18734) on trl.GRPOTrainer: rlsd_min.methods.opsd's loss, or
    grpo_opsd's (GRPO + beta * OPSD) with OPSDConfig(with_reward=True)."""
    config_class = OPSDConfig
    _tag_names = ["trl", "opsd", "rlsd_min"]
    _name = "OPSD"


CONFIGS = {n: getattr(trl_configs, m.trl_config).for_method(n) for n, m in METHODS.items() if m.trl_config}
"""rlsd_min method -> a callable making its TRL config (the record's trl_config)"""
TRAINERS = {n: globals()[m.trl_trainer] for n, m in METHODS.items() if m.trl_trainer}
"""rlsd_min method -> the TRL trainer that runs it (the record's trl_trainer)"""
