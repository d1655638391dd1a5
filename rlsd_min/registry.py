"""The methods' records: `METHODS`, one `Method` each, with its defaults and its rules.

A record says what a method needs from the teacher, the value of each setting whose default
depends on the method, which distillation terms it can use, and whether a run depends on its
total number of steps. `TrainConfig.validate()` (rlsd_min.config) resolves a run's settings
through `Method.resolve`. The loss functions themselves are in rlsd_min.methods; a record
loads its loss on first use, so that this file, like config.py and tasks.py, imports no torch:
the command line checks names and values before any heavy library loads.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

METHOD_FIELDS = ("teacher_mode", "teacher_context", "divergence", "distill_coef", "kl_coef", "kl_estimator",
                 "loss_agg")
"""TrainConfig fields whose default depends on the method (None there = the method's value)."""
COMMON = dict(kl_coef=0.0, kl_estimator="k3", loss_agg="token-mean")
"""The method-dependent settings every method uses, at the value most methods take."""


def sdpg_uses_total_steps(cfg) -> str | None:
    if cfg.sdpg_schedule:
        return "SDPG's beta(k) schedule is laid out over the total (sdpg_warm_frac, sdpg_decay_frac of steps)"
    return None


@dataclass(frozen=True)
class Method:
    """One method: what it needs from the teacher, its defaults and its rules."""
    name: str
    """the method's name, also the name of its loss function in rlsd_min.methods"""
    teacher: str | None
    """None, 'logp' (sampled-token log-probs) or 'logits' (full vocabulary)"""
    defaults: dict = field(default_factory=dict)
    """its value of each METHOD_FIELDS setting it uses; a setting it does not use is absent"""
    distill: tuple = ()
    """the kinds of distillation term D_t it can use: 'full' (any full-vocabulary divergence of
    rlsd_min.reverse_kl), 'sampled' (OPSD Eq. 9's sampled-token estimator); () = none"""
    uses_total_steps: Callable = lambda cfg: None
    """cfg -> why a run depends on its total number of steps, or None: a finished run whose
    method returns None can simply go on for more steps"""
    teacher_rows: Callable = lambda advantages, cfg: None
    """(advantages (N,), cfg) -> (N,) bool of the rows whose loss the teacher can change, or None
    for all: the teacher scores only those (the others' teacher term is multiplied by 0)"""
    loss_fn: Callable | None = None
    """the loss, when not rlsd_min.methods.<name> (a test's wrapper, say)"""

    @property
    def loss(self) -> Callable:
        """(logp, logits, batch, cfg, step) -> (loss, metrics): the method's loss (rlsd_min.methods)."""
        return self.loss_fn or getattr(importlib.import_module(".methods", __package__), self.name)

    @property
    def divergences(self) -> tuple:
        """The values of TrainConfig.divergence this method accepts."""
        from .reverse_kl import FULL_VOCAB_DIVERGENCES

        return (FULL_VOCAB_DIVERGENCES if "full" in self.distill else ()) + (
            ("sampled",) if "sampled" in self.distill else ())

    def resolve(self, values: dict) -> dict:
        """TrainConfig values with this method's settings filled where None, and checked:
        an explicit value for a setting the method does not use is refused, not ignored."""
        from .teacher import CONTEXT_KINDS, TEACHER_MODES  # the checks load torch; naming a method does not

        out = dict(values)
        for name in METHOD_FIELDS:
            if out[name] is None:
                out[name] = self.defaults.get(name)
            elif name not in self.defaults:
                raise ValueError(f"method {self.name!r} does not use {name}; got {name}={out[name]!r} "
                                 f"(leave it unset)")
        choices = [("divergence", self.divergences)]
        if self.teacher is not None:
            choices += [("teacher_mode", TEACHER_MODES), ("teacher_context", CONTEXT_KINDS)]
        for name, allowed in choices:
            if out[name] is not None and out[name] not in allowed:
                raise ValueError(f"method {self.name!r} cannot use {name}={out[name]!r}; choose from {allowed}")
        return out

    def needs_logits(self, cfg) -> bool:
        """Whether the teacher must return full-vocabulary logits (not only log q_t(y_t)) for `cfg`."""
        return self.teacher == "logits" and cfg.divergence != "sampled"


_TEACHER = dict(teacher_mode="frozen", teacher_context="solution")
METHODS = {m.name: m for m in (
    Method("grpo", None, COMMON),
    Method("opsd", "logits", dict(COMMON, **_TEACHER, divergence="reverse", distill_coef=1.0), ("full", "sampled")),
    Method("grpo_opsd", "logits", dict(COMMON, **_TEACHER, divergence="reverse", distill_coef=0.1), ("full",)),
    # RLSD's token advantage is A_i times the teacher's factor: nothing to weight where A_i = 0
    Method("rlsd", "logp", dict(COMMON, teacher_mode="synced", teacher_context="answer"),
           teacher_rows=lambda advantages, cfg: advantages != 0),
    # SDPG's gate m_i = 1[A_i > 0] zeroes the distillation term of every other rollout
    Method("sdpg", "logits", dict(COMMON, teacher_mode="live", teacher_context="solution", divergence="reverse",
                                  distill_coef=0.1, kl_coef=0.01, kl_estimator="ufkl", loss_agg="group-token-mean"),
           ("full",), sdpg_uses_total_steps, teacher_rows=lambda advantages, cfg: advantages > 0 if cfg.sdpg_gate else None),
)}
"""GRPO, OPSD, GRPO+OPSD, RLSD, SDPG (the table in rlsd_min.methods)."""
