"""What the TRL integration reads from each method's record: its label, the names of its TRL
trainer and config, and the TrainConfig fields its loss and teacher read (`reads`), beyond the
run settings GRPOConfig has (rlsd_min.integrations.trl_configs.TRL_NAMES).

    record(name)    the record of method `name`: .label, .trl_trainer, .trl_config, .reads
    trl_methods()   the methods that have a TRL trainer, in METHODS' order

Imports neither torch nor trl, so the command line can list the TRL trainers before loading them.
"""

from __future__ import annotations

from types import SimpleNamespace

from ..registry import METHODS

_TEACHER = ("teacher_mode", "teacher_context", "privileged_template", "sync_every", "ema_rate")
_DIVERGENCE = ("divergence", "distill_coef", "jsd_beta", "entry_clip", "token_clip")
_COMMON = ("kl_coef", "kl_estimator", "loss_agg", "dual_clip")
_TRL = {
    "grpo": SimpleNamespace(label="GRPO", trl_trainer=None, trl_config=None, reads=_COMMON),
    "opsd": SimpleNamespace(label="OPSD", trl_trainer="OPSDTrainer", trl_config="OPSDConfig",
                            reads=_TEACHER + _DIVERGENCE + _COMMON),
    "grpo_opsd": SimpleNamespace(label="GRPO+OPSD", trl_trainer="OPSDTrainer", trl_config="OPSDConfig",
                                 reads=_TEACHER + _DIVERGENCE + _COMMON),
    "rlsd": SimpleNamespace(label="RLSD", trl_trainer="RLSDTrainer", trl_config="RLSDConfig",
                            reads=_TEACHER + _COMMON + ("rlsd_lam", "rlsd_lam_steps", "rlsd_eps_w")),
    "sdpg": SimpleNamespace(label="SDPG", trl_trainer="SDPGTrainer", trl_config="SDPGConfig",
                            reads=_TEACHER + _DIVERGENCE + _COMMON + (
                                "sdpg_outcome", "sdpg_gate", "sdpg_schedule", "sdpg_warm_frac", "sdpg_decay_frac")),
}
"""The records' TRL fields until rlsd_min's `Method` records carry them (label, trl_trainer,
trl_config, reads): `record` is the one place that reads them."""


def record(name: str) -> SimpleNamespace:
    """Method `name`'s label, trl_trainer, trl_config and reads."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {tuple(METHODS)}")
    return _TRL[name]


def trl_methods() -> tuple[str, ...]:
    """The methods with a TRL trainer, in METHODS' order."""
    return tuple(n for n in METHODS if record(n).trl_trainer is not None)
