"""The TRL trainers' configs: GRPOConfig plus TrainConfig's method fields, written out.

    RLSDConfig    rlsd                 SDPGConfig    sdpg
    OPSDConfig    opsd; with_reward=True: grpo_opsd

Each method field has TrainConfig's name, type and default, and TrainConfig's field docstring
as its `--help` (HfArgumentParser); tests/test_trl.py checks the three against TrainConfig and
against the method's record (rlsd_min.methods.METHODS: `fields`). A field left at None
is resolved by the method, as `TrainConfig.validate` resolves it, when the config is made;
`rlsd_config` is that resolved TrainConfig, which the loss reads. teacher_context is the TRL
configs' own (TRL_CONTEXTS): the dataset's column, or `sibling`. privileged_template stays
None until the trainer sees the dataset: None is the chat default for a conversational dataset
(rlsd_min.integrations.trl_teacher.CHAT_TEMPLATE), rlsd_min.teacher.PRIVILEGED_TEMPLATE for text.

Run settings GRPOConfig already has keep TRL's names (TRL_NAMES). The reference-KL weight is
`kl_coef` (TRL's `beta` is set from it, so TRL builds and scores the reference model). TRL's
`loss_type` is read only where rlsd_min has the same aggregation (LOSS_TYPES), as `loss_agg`.
"""

import dataclasses
import functools
from dataclasses import dataclass

import trl

from ..config import TrainConfig, field_docs
from ..methods import METHODS
from ..teacher import SUCCESS_REWARD

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


def checkpointing(on: bool) -> dict:
    """{name: on} for the Trainer's activation-checkpointing switch in the installed transformers:
    `activation_checkpointing` where TrainingArguments has it (from 5.23), else `gradient_checkpointing`
    (the older name, an alias in the newer). GRPOConfig turns it on by default; the comparisons
    and tests that want it off or on say so through this, so they run under either."""
    names = {f.name for f in dataclasses.fields(trl.GRPOConfig)}
    return {"activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": on}


LOSS_TYPES = {"dapo": "token-mean", "grpo": "seq-mean"}
"""TRL's loss_type -> the same aggregation in rlsd_min (rlsd_min.objective.aggregate): dapo divides
the sum by the whole batch's token count (token-mean), grpo averages each sequence's mean over
the sequences (seq-mean). TRL's bnpo (each micro-batch's own token mean), dr_grpo (the sum over
rows x max_completion_length) and the others have no loss_agg: refused."""
UNUSED_LOSS_OPTIONS = ("importance_sampling_level", "top_entropy_quantile", "entropy_coef",
                       "use_adaptive_entropy", "off_policy_mask_threshold", "delta")
"""GRPOConfig options of TRL's own loss; the loss here is rlsd_min's, so they must stay at their defaults"""
TRL_CONTEXTS = (None, "sibling")
"""the TRL configs' teacher_context: None, each row's privileged_context column (any string: the
problem's reference, another problem's worked example); sibling, a success of the row's own group
(rlsd_min.teacher.sibling_completions, over every process's rows)"""
_DOCS = field_docs(TrainConfig)


def _field(name: str, default):
    """A method field: `default` (TrainConfig's, checked by the tests), TrainConfig's docstring as help."""
    return dataclasses.field(default=default, metadata={"help": _DOCS[name][1]})


def method_fields(method: str) -> tuple[str, ...]:
    """The TrainConfig fields of `method`'s TRL config: its record's `fields`, but teacher_context
    (a TRL dataset brings each row's context in its privileged_context column; the configs' own
    teacher_context, TRL_CONTEXTS, adds `sibling`)."""
    return tuple(n for n in METHODS[method].fields if n != "teacher_context")


@dataclass
class _MethodConfig(trl.GRPOConfig):
    """GRPOConfig plus rlsd_min's method fields; `rlsd_config` is the resolved TrainConfig the loss reads."""
    loss_type: str | None = dataclasses.field(default=None, metadata={"help": (
        "TRL's aggregation name, read as loss_agg where rlsd_min has the same one: dapo = token-mean, "
        "grpo = seq-mean; any other is refused (set loss_agg). None: loss_agg decides")})

    @classmethod
    def methods(cls) -> tuple[str, ...]:
        """The methods this config runs: those whose record names it (rlsd_min.methods.METHODS)."""
        return tuple(n for n, m in METHODS.items() if m.trl_config == cls.__name__)

    @classmethod
    def flags_for(cls, method: str) -> dict:
        """The settings of this config that select `method` (none where it runs one method)."""
        if method not in cls.methods():
            raise ValueError(f"{cls.__name__} runs {cls.methods()}, not {method!r}")
        return {}

    @property
    def method(self) -> str:
        (only,) = self.methods()
        return only

    def __post_init__(self):
        self._translate_loss_type()
        super().__post_init__()
        defaults = {f.name: f.default for f in dataclasses.fields(trl.GRPOConfig)}
        changed = [n for n in UNUSED_LOSS_OPTIONS if getattr(self, n) != defaults[n]]
        context = getattr(self, "teacher_context", None)
        checks = [
            (context in TRL_CONTEXTS,
             f"teacher_context={context!r}: a TRL dataset brings the problem's reference (answer, solution) or "
             f"another problem's worked example (other_answer, other_solution) as data, each row's "
             f"privileged_context column (rlsd_min.integrations.tiny.arith_rows(context=...)); teacher_context "
             f"takes {TRL_CONTEXTS}: None (that column) or 'sibling' (a success of the row's own group)"),
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
            if name != "privileged_template":     # resolved by the dataset's kind (the trainer)
                setattr(self, name, getattr(self.rlsd_config, name))
        if self.beta not in (0.0, self.kl_coef):
            raise ValueError(f"the reference-KL weight is kl_coef here (rlsd_min's name), got beta={self.beta}; "
                             f"set kl_coef={self.beta} and leave beta unset")
        self.beta = self.kl_coef  # TRL builds and scores the reference model when beta != 0

    def _translate_loss_type(self) -> None:
        """loss_type given: loss_agg set to the same aggregation, or a refusal naming loss_agg."""
        if self.loss_type is None:
            return
        agg = LOSS_TYPES.get(self.loss_type)
        if agg is None:
            raise ValueError(f"loss_type={self.loss_type!r} has no equivalent in rlsd_min's loss: set loss_agg "
                             f"(token-mean, seq-mean or group-token-mean); loss_type is read only as "
                             f"{LOSS_TYPES}")
        if self.loss_agg not in (None, agg):
            raise ValueError(f"loss_type={self.loss_type!r} is loss_agg={agg!r}, but loss_agg={self.loss_agg!r} "
                             f"was given: set one of them")
        self.loss_agg = agg

    def train_config(self) -> TrainConfig:
        """The resolved rlsd_min TrainConfig of these settings (TrainConfig.validate: a bad
        value is refused here, before the trainer is built)."""
        run = {ours: getattr(self, theirs) for ours, theirs in TRL_NAMES.items()}
        eps_high = self.epsilon if self.epsilon_high is None else self.epsilon_high
        return TrainConfig(method=self.method, **run, eps_high=eps_high, adv_eps=TRL_ADV_EPS,
                           steps=max(1, self.max_steps // self.num_iterations),
                           prompts_per_step=self.generation_batch_size // self.num_generations,
                           teacher_context=getattr(self, "teacher_context", None),  # None: the method's
                           **{n: getattr(self, n) for n in method_fields(self.method)}).validate()

    @classmethod
    def for_method(cls, method: str):
        """A callable making this config for `method` (OPSDConfig for grpo_opsd: with_reward=True)."""
        return functools.partial(cls, **cls.flags_for(method))


@dataclass
class _RunFields(_MethodConfig):
    """The method fields every method reads (Method.fields: kl_coef, kl_estimator, loss_agg, dual_clip)."""
    kl_coef: float | None = _field("kl_coef", None)
    kl_estimator: str | None = _field("kl_estimator", None)
    loss_agg: str | None = _field("loss_agg", None)
    dual_clip: float = _field("dual_clip", 0.0)


@dataclass
class _TeacherFields(_RunFields):
    """The fields of a method with a teacher (methods.TEACHER_FIELDS and teacher_mode)."""
    teacher_mode: str | None = _field("teacher_mode", None)
    teacher_context: str | None = dataclasses.field(default=None, metadata={"help": (
        "None: each row's privileged_context column is the teacher's context; sibling: the completion of the "
        f"first other row of the row's group whose reward is at least {SUCCESS_REWARD:g} (SDPO's teacher; no "
        "column needed), "
        "and a row whose group has no other success gets no teacher term")})
    privileged_template: str | None = _field("privileged_template", None)
    sync_every: int = _field("sync_every", 10)
    ema_rate: float = _field("ema_rate", 0.05)


@dataclass
class _DivergenceFields(_TeacherFields):
    """The fields of a method with a full-vocabulary divergence (methods.DIVERGENCE_FIELDS, its weight)."""
    divergence: str | None = _field("divergence", None)
    distill_coef: float | None = _field("distill_coef", None)
    jsd_beta: float = _field("jsd_beta", 0.5)
    entry_clip: float = _field("entry_clip", 0.0)
    token_clip: float = _field("token_clip", 0.0)


@dataclass
class RLSDConfig(_TeacherFields):
    """GRPOConfig + RLSD's settings (rlsd_min.methods.rlsd; defaults as TrainConfig: synced teacher,
    rlsd_lam 0.5 decaying over rlsd_lam_steps, rlsd_eps_w 0.2)."""
    rlsd_lam: float = _field("rlsd_lam", 0.5)
    rlsd_lam_steps: int = _field("rlsd_lam_steps", 50)
    rlsd_eps_w: float = _field("rlsd_eps_w", 0.2)


@dataclass
class SDPGConfig(_DivergenceFields):
    """GRPOConfig + SDPG's settings (rlsd_min.methods.sdpg; defaults as TrainConfig: live teacher,
    reverse KL, distill_coef 0.1 on the beta(k) schedule over max_steps, gate on, kl_coef 0.01
    ufkl, group-token-mean)."""
    sdpg_outcome: str = _field("sdpg_outcome", "reinforce")
    sdpg_gate: bool = _field("sdpg_gate", True)
    sdpg_schedule: bool = _field("sdpg_schedule", True)
    sdpg_warm_frac: float = _field("sdpg_warm_frac", 0.125)
    sdpg_decay_frac: float = _field("sdpg_decay_frac", 0.875)


@dataclass
class OPSDConfig(_DivergenceFields):
    """GRPOConfig + OPSD's settings (rlsd_min.methods.opsd; with_reward=True: grpo_opsd). Defaults
    as TrainConfig for the method: frozen teacher, reverse KL, distill_coef 1.0 (grpo_opsd 0.1)."""
    with_reward: bool = dataclasses.field(default=False, metadata={
        "help": "add GRPO's outcome term: the method becomes grpo_opsd (GRPO + distill_coef * D)"})

    @classmethod
    def flags_for(cls, method: str) -> dict:
        super().flags_for(method)
        return {"with_reward": method == "grpo_opsd"}

    @property
    def method(self) -> str:
        return "grpo_opsd" if self.with_reward else "opsd"


