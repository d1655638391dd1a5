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
    rlsd_min  the teacher prompt (`privileged_prompt` -> rlsd_min.teacher.teacher_prompt), the
              teacher's scores of the student's own completion ids (teacher.score_completions),
              the student's forward and the method's loss (step.method_loss -> METHODS[method].loss:
              rlsd_advantages, the divergences, sdpg_beta, the gate, kl_penalty, aggregate)

The trainer turns TRL's batch into rlsd_min's `StepBatch` (`_step_batch`) and calls the same
`method_loss` the tiny loop calls: no formula is written here. The method's settings are
TrainConfig's fields, under TrainConfig's names, with TrainConfig's defaults (resolved by
METHODS[method], as `TrainConfig.validate` resolves them); run settings that GRPOConfig already
has keep TRL's names (`TRL_NAMES`). The reference-KL weight is `kl_coef` (TRL's `beta` is set
from it, so TRL builds and scores the reference model), the aggregation `loss_agg` (TRL's
`loss_type` is not used).

Layout rlsd_min's functions rely on, kept here: rows of a group are adjacent and every
micro-batch holds whole groups (`per_device_train_batch_size` a multiple of `num_generations`),
in order (TRL's `_prepare_inputs` shuffles rows; `_prepare_inputs` below does not), and one
optimiser step per sampled batch (`steps_per_generation == gradient_accumulation_steps`, TRL's
default). Then the loss over P processes x K accumulated micro-batches is exactly rlsd_min's
loss over the whole batch (`shard_weight`).

Simplified: text prompts only (no images, tools or environments); TRL's vLLM importance-
sampling correction is not applied (set vllm_importance_sampling_correction=False with vLLM);
the student's logits (rows x T x V) are materialised, as in rlsd_min's loop, where TRL's own
loss computes log-probs in tiles.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import typing

import torch
import trl
from transformers import TrainerCallback
from trl.trainer.utils import pad, split_tensor_dict

from ..config import TrainConfig, field_docs
from ..methods import METHOD_FIELDS, METHODS
from ..batch import Rollout
from ..objective import masked_mean
from ..sampling import entropy
from ..step import StepBatch, method_loss, teacher_scores
from ..teacher import Teacher, teacher_prompt

CONTEXT_COLUMN = "privileged_context"
"""the dataset column holding each row's privileged context c (a string)"""
TRL_NAMES = {"group_size": "num_generations", "max_new_tokens": "max_completion_length",
             "temperature": "temperature", "lr": "learning_rate", "max_grad_norm": "max_grad_norm",
             "num_iterations": "num_iterations", "eps_low": "epsilon", "adv_scale": "scale_rewards",
             "seed": "seed"}
"""TrainConfig fields that GRPOConfig has under another (or the same) name: the TRL configs keep
TRL's name. eps_high is GRPOConfig's epsilon_high (None: epsilon), steps its max_steps (over
num_iterations: TRL counts optimiser steps, rlsd_min RL steps, one sampled batch each), and
kl_coef sets its beta."""
TRL_ADV_EPS = 1e-4
"""the eps of TRL's group advantages (A_i = (R_i - mean) / (std + 1e-4)); TrainConfig.adv_eps"""
UNUSED_LOSS_OPTIONS = ("loss_type", "importance_sampling_level", "top_entropy_quantile", "entropy_coef",
                       "use_adaptive_entropy", "off_policy_mask_threshold", "delta")
"""GRPOConfig options of TRL's own loss; the loss here is rlsd_min's, so they must stay at their defaults"""


# --- the configs: TrainConfig's method fields on top of GRPOConfig -----------------------------

def method_fields(method: str) -> tuple[str, ...]:
    """The TrainConfig fields that rlsd_min's loss of `method` reads, beyond the run settings
    of TRL_NAMES. teacher_context is not among them: a TRL dataset brings its context in the
    privileged_context column."""
    m = METHODS[method]
    names = [n for n in METHOD_FIELDS if n in m.defaults and n != "teacher_context"]
    if m.teacher is not None:
        names += ["privileged_template", "sync_every", "ema_rate"]
    if m.divergences:
        names += ["jsd_beta", "entry_clip", "token_clip"]
    names += ["dual_clip"] + [f.name for f in dataclasses.fields(TrainConfig) if f.name.startswith(f"{method}_")]
    return tuple(names)


class _MethodConfig(trl.GRPOConfig):
    """GRPOConfig plus rlsd_min's method fields; `rlsd_config` is the resolved TrainConfig the loss reads."""
    _method = ""

    @property
    def method(self) -> str:
        return self._method

    def __post_init__(self):
        super().__post_init__()
        defaults = {f.name: f.default for f in dataclasses.fields(trl.GRPOConfig)}
        changed = [n for n in UNUSED_LOSS_OPTIONS if getattr(self, n) != defaults[n]]
        checks = [
            (not changed, f"{type(self).__name__} computes rlsd_min's loss, not TRL's: {changed} would be "
                          f"ignored; leave them at their defaults (the aggregation is loss_agg)"),
            (self.per_device_train_batch_size % self.num_generations == 0,
             f"per_device_train_batch_size ({self.per_device_train_batch_size}) must be a multiple of "
             f"num_generations ({self.num_generations}): rlsd_min's loss needs whole groups on each process"),
            (self.steps_per_generation == self.gradient_accumulation_steps,
             f"steps_per_generation ({self.steps_per_generation}) must equal gradient_accumulation_steps "
             f"({self.gradient_accumulation_steps}): one optimiser step per sampled batch, as rlsd_min's update"),
            (not (self.use_vllm and self.vllm_importance_sampling_correction),
             "with use_vllm, set vllm_importance_sampling_correction=False: rlsd_min's loss does not apply "
             "TRL's importance-sampling correction"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self.rlsd_config = self.train_config()
        for name in method_fields(self.method):  # the resolved values (None -> the method's)
            setattr(self, name, getattr(self.rlsd_config, name))
        if self.beta not in (0.0, self.kl_coef):
            raise ValueError(f"the reference-KL weight is kl_coef here (rlsd_min's name), got beta={self.beta}; "
                             f"set kl_coef={self.beta} and leave beta unset")
        self.beta = self.kl_coef  # TRL builds and scores the reference model when beta != 0

    def train_config(self) -> TrainConfig:
        """The resolved rlsd_min TrainConfig of these settings (TrainConfig.validate: a bad
        value is refused here, before the trainer is built)."""
        run = {ours: getattr(self, theirs) for ours, theirs in TRL_NAMES.items()}
        eps_high = self.epsilon if self.epsilon_high is None else self.epsilon_high
        return TrainConfig(method=self.method, **run, eps_high=eps_high, adv_eps=TRL_ADV_EPS,
                           steps=max(1, self.max_steps // self.num_iterations),
                           prompts_per_step=self.generation_batch_size // self.num_generations,
                           **{n: getattr(self, n) for n in method_fields(self.method)}).validate()


def _make_config(name: str, method: str, methods: tuple, extra: list = (), doc: str = "", base=_MethodConfig):
    """A GRPOConfig subclass with the fields of `methods` (their union), typed, documented and
    defaulted as in TrainConfig (field docstrings become the `--help` of HfArgumentParser)."""
    types, docs = typing.get_type_hints(TrainConfig), field_docs(TrainConfig)
    names = dict.fromkeys(n for m in methods for n in method_fields(m))
    fields = [(n, types[n], dataclasses.field(default=docs[n][0], metadata={"help": docs[n][1]})) for n in names]
    cls = dataclasses.make_dataclass(name, fields + list(extra), bases=(base,),
                                     namespace={"_method": method, "__module__": __name__})
    cls.__doc__ = doc
    return cls


RLSDConfig = _make_config("RLSDConfig", "rlsd", ("rlsd",), doc=(
    "GRPOConfig + RLSD's settings (rlsd_min.methods.rlsd; defaults as TrainConfig: synced teacher, "
    "rlsd_lam 0.5 decaying over rlsd_lam_steps, rlsd_eps_w 0.2)."))
SDPGConfig = _make_config("SDPGConfig", "sdpg", ("sdpg",), doc=(
    "GRPOConfig + SDPG's settings (rlsd_min.methods.sdpg; defaults as TrainConfig: live teacher, reverse "
    "KL, distill_coef 0.1 on the beta(k) schedule over max_steps, gate on, kl_coef 0.01 ufkl, "
    "group-token-mean)."))


class _OPSDConfig(_MethodConfig):
    @property
    def method(self) -> str:
        return "grpo_opsd" if self.with_reward else "opsd"


OPSDConfig = _make_config("OPSDConfig", "opsd", ("opsd", "grpo_opsd"), doc=(
    "GRPOConfig + OPSD's settings (rlsd_min.methods.opsd; with_reward=True: grpo_opsd). Defaults as "
    "TrainConfig for the method: frozen teacher, reverse KL, distill_coef 1.0 (grpo_opsd 0.1)."),
    extra=[("with_reward", bool, dataclasses.field(default=False, metadata={
        "help": "add GRPO's outcome term: the method becomes grpo_opsd (GRPO + distill_coef * D)"}))],
    base=_OPSDConfig)


# --- the privileged teacher ----------------------------------------------------------------

def privileged_prompt(prompt, context: str, template: str):
    """The teacher's prompt for one dataset row: the one place where TRL prompts meet c.

    plain text     teacher_prompt(prompt, c, template)                    (rlsd_min.teacher)
    conversation   the same conversation, its last (user) turn's content replaced by
                   teacher_prompt(content, c, template); earlier turns untouched

    The context goes into the user's turn, not a system turn: every chat template renders a
    user turn (some refuse a system turn or fold it into the first user turn), and the
    conversation then differs from the student's only inside the question, as the plain-text
    template does. The generation prompt that follows (the assistant's header) is the
    student's, so the student's completion reads the same after either prompt.
    """
    if isinstance(prompt, str):
        return teacher_prompt(prompt, context, template)
    last = prompt[-1]
    if last.get("role") != "user" or not isinstance(last.get("content"), str):
        raise ValueError("a conversational prompt must end with a user turn whose content is a string, got "
                         f"role {last.get('role')!r} with content of type {type(last.get('content')).__name__}")
    return [*prompt[:-1], {**last, "content": teacher_prompt(last["content"], context, template)}]


def check_dataset(dataset, name: str = "train_dataset") -> None:
    """A clear error, before any model is loaded, for a dataset the teacher cannot read."""
    if dataset is None:
        raise ValueError(f"{name} is required")
    columns = getattr(dataset, "column_names", None)
    if columns is not None and CONTEXT_COLUMN not in columns:
        raise ValueError(f"{name} has no {CONTEXT_COLUMN!r} column (it has {list(columns)}): the privileged "
                         f"teacher reads each row's context c from it, a string")
    first = next(iter(dataset))
    if not isinstance(first.get(CONTEXT_COLUMN), str):
        raise ValueError(f"{name}'s {CONTEXT_COLUMN!r} must be a string, got "
                         f"{type(first.get(CONTEXT_COLUMN)).__name__} in its first row")


def check_teacher_sharding(mode: str, fsdp: bool, zero_stage: int | None) -> None:
    """Refuse a teacher that needs a full copy of the weights where the weights are sharded."""
    if mode == "live":
        return
    where = "FSDP" if fsdp else "DeepSpeed ZeRO-3" if zero_stage == 3 else None
    if where:
        raise ValueError(f"teacher_mode={mode!r} keeps its own full copy of the weights, which {where} shards "
                         f"across processes: use teacher_mode='live' (the current weights), or DDP / DeepSpeed "
                         f"ZeRO-1 or ZeRO-2, where every process holds the whole model")


def shard_weight(loss_agg: str, tokens, total_tokens, shards: int) -> float:
    """The weight of one shard's loss that makes the mean over `shards` shards (DDP's mean over
    processes x the sum over accumulated micro-batches) equal rlsd_min.objective.aggregate over
    the whole batch (rlsd_min.objective.aggregate).

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
    """After each optimiser step: the synced or ema teacher's refresh (rlsd_min.teacher.Teacher.update)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        teacher, iterations = self.trainer._teacher, self.trainer.num_iterations
        if teacher is not None and state.global_step % iterations == 0:  # after the RL step's last iteration
            teacher.update(self.trainer.accelerator.unwrap_model(self.trainer.model), state.global_step // iterations)


class _SelfDistillationTrainer(trl.GRPOTrainer):
    """trl.GRPOTrainer whose loss is rlsd_min's METHODS[args.method].loss, with the privileged teacher."""
    config_class = _MethodConfig
    TEACHER_FILE = "rlsd_teacher.pt"

    def __init__(self, model, reward_funcs, args=None, train_dataset=None, *pargs, **kwargs):
        if not isinstance(args, self.config_class):
            raise TypeError(f"{type(self).__name__} needs args={self.config_class.__name__}(...), got "
                            f"{type(args).__name__}")
        if METHODS[args.method].teacher is not None:
            check_dataset(train_dataset)
            if kwargs.get("eval_dataset") is not None:
                check_dataset(kwargs["eval_dataset"], "eval_dataset")
        super().__init__(model, reward_funcs, args, train_dataset, *pargs, **kwargs)
        if self.tools or self.environment_factories is not None:
            raise ValueError(f"{type(self).__name__} takes text prompts only: no tools or environments")
        stage = self.accelerator.state.deepspeed_plugin.zero_stage if self.is_deepspeed_enabled else None
        check_teacher_sharding(args.teacher_mode, self.is_fsdp_enabled, stage)
        self._teacher = None  # made at the first update, from the weights then (theta_0)
        self._cfg = None
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

    def _generate_and_score_completions(self, inputs):
        """TRL's batch plus each row's teacher prompt ids (N, P'), left-padded."""
        out = super()._generate_and_score_completions(inputs)
        if METHODS[self.args.method].teacher is None:
            return out
        G = self.num_generations if self.model.training else self.num_generations_eval
        firsts = inputs[::G]
        for i, x in enumerate(inputs):
            if (x["prompt"], x[CONTEXT_COLUMN]) != (firsts[i // G]["prompt"], firsts[i // G][CONTEXT_COLUMN]):
                raise ValueError(f"row {i} differs from the first row of its group in prompt or {CONTEXT_COLUMN}")
        prompts = [privileged_prompt(x["prompt"], x[CONTEXT_COLUMN], self.args.privileged_template) for x in firsts]
        ids = [torch.tensor(row) for row in self._tokenize_prompts(prompts)[0]]     # B x (P'_b,)
        device = out["prompt_ids"].device
        out["teacher_prompt_ids"] = pad(ids, self._tokenizer.pad_token_id, "left").to(device).repeat_interleave(G, 0)
        out["teacher_prompt_mask"] = pad([torch.ones_like(r) for r in ids], 0, "left").to(device).repeat_interleave(G, 0)
        return out                                                                  # teacher prompts (N, P')

    def _teacher_model(self):
        """The teacher's weights (rlsd_min.teacher.Teacher), made on first use."""
        if self._teacher is None:
            args = self.args
            self._teacher = Teacher(self.accelerator.unwrap_model(self.model), args.teacher_mode,
                                    args.sync_every, args.ema_rate)
            if args.teacher_mode != "live":
                # TRL patches `forward` on the student's module instances (its fused LM head, the fp32
                # LM-head cast), closures over the student's own modules: the copy takes its classes'
                # forwards back, or it would run the student's weights
                for module in self._teacher.model.modules():
                    module.__dict__.pop("forward", None)
        return self._teacher.model

    def _step_batch(self, inputs, cfg: TrainConfig) -> StepBatch:
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
        method = METHODS[cfg.method]
        if method.teacher is not None:
            if "teacher_logp" not in inputs:
                logp, logits, rows = teacher_scores(self._teacher_model(), inputs["teacher_prompt_ids"][::G],
                                                    inputs["teacher_prompt_mask"][::G], rollout, advantages,
                                                    cfg)                            # (N, T), (N, T, V), (N,)
                if self.num_iterations > 1:  # scored once per sampled batch, as rlsd_min's collect
                    inputs.update(teacher_logp=logp, teacher_logits=logits, teacher_rows=rows)
            else:
                logp, logits, rows = inputs["teacher_logp"], inputs["teacher_logits"], inputs["teacher_rows"]
            batch.teacher_logp, batch.teacher_logits, batch.teacher_rows = logp, logits, rows
        return batch

    def _compute_loss(self, model, inputs):
        """rlsd_min's method_loss on the micro-batch, weighted so that the step's loss over every
        process and micro-batch is rlsd_min's loss over the whole sampled batch."""
        cfg = self._rlsd_config()
        batch = self._step_batch(inputs, cfg)
        loss, metrics, logits = method_loss(model, batch, cfg, self.rl_step())
        mask = batch.rollout.completion_mask                                        # (N, T)
        with torch.no_grad():
            metrics["entropy"] = masked_mean(entropy(logits), mask).item()
        training = self.model.training
        accumulation = self.current_gradient_accumulation_steps if training else 1
        weight = shard_weight(cfg.loss_agg, mask.sum(), inputs["num_items_in_batch"],
                              self.accelerator.num_processes * accumulation)
        self._log_rlsd_metrics(metrics, "train" if training else "eval")
        return loss * (weight / accumulation)

    def _log_rlsd_metrics(self, metrics: dict, mode: str) -> None:
        """rlsd_min's metrics under their names, averaged over the processes (as TRL's own are),
        then over the micro-batches of a logging step by TRL's `log`."""
        names = sorted(metrics)
        local = torch.tensor([float(metrics[n]) for n in names], device=self.accelerator.device)   # (K,)
        mean = self.accelerator.gather(local[None]).mean(0).tolist()                # (P, K) -> (K,)
        for n, v in zip(names, mean):
            self._metrics[mode][n].append(v)

    def _save_checkpoint(self, model, trial):
        """TRL's checkpoint, plus the teacher's weights when it keeps its own (frozen, synced, ema)."""
        super()._save_checkpoint(model, trial)
        state = self._teacher.state_dict() if self._teacher is not None else None
        if state is not None and self.args.should_save:
            folder = os.path.join(self._get_output_dir(trial=trial), f"checkpoint-{self.state.global_step}")
            torch.save(state, os.path.join(folder, self.TEACHER_FILE))

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        path = os.path.join(checkpoint, self.TEACHER_FILE) if checkpoint else None
        if path and os.path.isfile(path):
            self._teacher_model()
            self._teacher.load_state_dict(torch.load(path, map_location=self.accelerator.device))


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


CONFIGS = {"rlsd": RLSDConfig, "sdpg": SDPGConfig, "opsd": OPSDConfig,
           "grpo_opsd": functools.partial(OPSDConfig, with_reward=True)}
"""rlsd_min method -> a callable making its TRL config"""
TRAINERS = {"rlsd": RLSDTrainer, "sdpg": SDPGTrainer, "opsd": OPSDTrainer, "grpo_opsd": OPSDTrainer}
"""rlsd_min method -> the TRL trainer that runs it"""
