"""Methods as small choices inside one loss template (one page per method in docs/: grpo.md,
opsd.md, grpo_opsd.md, rlsd.md, sdpg.md; the template itself is rlsd_min.objective.template_loss):

    L = - agg[ surrogate(Ahat) ]  +  beta(k) * agg[ m_i * D_t ]  +  alpha * agg[ K_t ]

    method     Ahat_t                          D_t (full vocab)       m_i          beta(k)     teacher
    grpo       A_i                             -                      -            -           -
    opsd       - (no reward)                   reverse/forward/JSD    1            distill_coef frozen
               or the surrogate of sg[log q - log p] ('sampled': OPSD Eq. 9's estimator)
    grpo_opsd  A_i                             reverse/forward/JSD    1            distill_coef frozen
    rlsd       A_i ((1-lam) + lam clip(w_t))   -                      -            -           synced
    sdpg       A_i (REINFORCE)                 KL(p || sg q)          1[A_i > 0]   sdpg_beta   live

alpha * K_t (reference KL, rlsd_min.reference_kl) is available to every method via
kl_coef; SDPG uses it by default. Every method gets the same `StepBatch` and returns
(loss, metrics).

`METHODS` (at the end) holds one `Method` record per method: everything the rest of the
package knows about it (its loss, label, defaults, rules, the settings it reads, whether the
demo trains it, its TRL trainer). Every list of methods elsewhere is derived from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from .batch import StepBatch
from .objective import clipped_surrogate, masked_mean, template_loss
from .reverse_kl import divergence, sampled_token_advantage


# --- the equations ---------------------------------------------------------------------

def rlsd_advantages(advantages: torch.Tensor, teacher_logp: torch.Tensor, student_logp: torch.Tensor,
                    lam: float, eps_w: float) -> torch.Tensor:
    """RLSD token advantages (Yang et al. 2026, arXiv 2604.03128; docs/rlsd.md):

        Delta_t = sg[log q_t(y_t) - log p_t(y_t)]
        w_t     = exp(sign(A_i) * Delta_t)            (= (q/p)^sign(A))
        Ahat_t  = A_i * ((1 - lam) + lam * clip(w_t, 1 - eps_w, 1 + eps_w))

    The verifier fixes the direction (sign of A_i, never flipped: the factor is > 0);
    the teacher only rescales each token's magnitude. advantages (N,), log-probs (N, T)
    -> (N, T).
    """
    if not 0 <= lam <= 1:
        raise ValueError(f"lam must be in [0, 1], got {lam}")
    if not 0 < eps_w < 1:
        raise ValueError(f"eps_w must be in (0, 1), got {eps_w}")
    w = rlsd_weights(advantages, teacher_logp, student_logp)                     # (N, T)
    return advantages[:, None] * ((1 - lam) + lam * torch.clamp(w, 1 - eps_w, 1 + eps_w))  # (N, T)


def rlsd_weights(advantages: torch.Tensor, teacher_logp: torch.Tensor, student_logp: torch.Tensor) -> torch.Tensor:
    """RLSD's unclipped per-token weight w_t = exp(sign(A_i) * sg[log q_t(y_t) - log p_t(y_t)]): (N, T)."""
    delta = sampled_token_advantage(student_logp, teacher_logp)                   # (N, T)
    return torch.exp(torch.sign(advantages[:, None]) * delta)                    # (N, T)


def rlsd_lambda(step: int, lam0: float, decay_steps: int) -> float:
    """RLSD's mixing weight: lam0 decaying linearly to 0 over decay_steps (then RLSD is GRPO)."""
    if decay_steps <= 0:
        return 0.0
    return lam0 * max(0.0, 1.0 - step / decay_steps)


def sdpg_beta(step: int, total_steps: int, distill_coef: float, t_warm: int, t_decay: int) -> float:
    """SDPG's distillation weight (Liu et al. 2026, arXiv 2606.04036, Sec. 3; docs/sdpg.md):

        beta(k) = distill_coef * min(1, k / T_warm) * min(1, (T - k) / T_decay)

    (distill_coef is the paper's beta_base.)
    Warm-up and decay windows may overlap (the paper's T=400, T_warm=50, T_decay=350 meet
    at k=50: a triangle with no plateau). A window of length 0 is no window; the value
    never goes below 0 past T.
    """
    warm = 1.0 if t_warm <= 0 else min(1.0, step / t_warm)
    decay = 1.0 if t_decay <= 0 else min(1.0, max(0.0, (total_steps - step) / t_decay))
    return distill_coef * warm * decay


def sdpg_windows(cfg) -> tuple[int, int]:
    """(T_warm, T_decay) of a run: the fractions sdpg_warm_frac, sdpg_decay_frac of its steps,
    so a run of any length keeps the paper's shape (50 and 350 of 400 steps). A window of a
    non-zero fraction lasts at least one step, so a very short run still starts at beta = 0."""
    def window(frac: float) -> int:
        return max(1, round(frac * cfg.steps)) if frac > 0 else 0
    return window(cfg.sdpg_warm_frac), window(cfg.sdpg_decay_frac)


def distillation(cfg, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """The distillation term D_t of cfg.divergence (rlsd_min.reverse_kl.divergence, with the run's
    jsd_beta, entry_clip, token_clip): (..., V) x 2 -> (...). rlsd_min.step calls it on a chunk of
    rows at a time, the TRL trainers on their micro-batch; the losses keep it on the rows with a
    teacher (`_with_teacher`)."""
    return divergence(cfg.divergence, student_logits, teacher_logits, cfg.jsd_beta,
                      cfg.entry_clip or None, cfg.token_clip or None)


def _with_teacher(term: torch.Tensor, batch: StepBatch) -> torch.Tensor:
    """A teacher term (N, T) on the rows the teacher scored, 0 on the others (batch.teacher_rows):
    a row without a teacher adds nothing to the loss, nor to its gradient."""
    return term if batch.teacher_rows is None else term * batch.teacher_rows[:, None]   # (N, T)


def _teacher_logp(logp: torch.Tensor, batch: StepBatch) -> torch.Tensor:
    """log q_t(y_t) (N, T) where the teacher scored the row, sg[log p_t(y_t)] elsewhere: a row
    without a teacher gets Delta_t = 0 (RLSD's w_t = 1, GRPO's token advantage)."""
    if batch.teacher_rows is None:
        return batch.teacher_logp
    return torch.where(batch.teacher_rows[:, None], batch.teacher_logp, logp.detach())  # (N, T)


# --- the methods ------------------------------------------------------------------------

def grpo(logp, distill, batch: StepBatch, cfg, step: int):
    """GRPO (Shao et al. 2024): every token of completion i gets the group advantage A_i."""
    ahat = batch.advantages[:, None].expand_as(logp)                                # (N, T)
    return template_loss(logp, batch, cfg, ahat=ahat)


def opsd(logp, distill, batch: StepBatch, cfg, step: int):
    """OPSD (Zhao et al. 2026, arXiv 2601.18734): minimise distill_coef * D(q_t, p_t) on the
    student's own rollouts, no reward. divergence='sampled' takes as D_t the clipped
    surrogate of OPSD Eq. 9's estimator sg[log q - log p] used as a token advantage (its
    value at ratio 1 is the sampled estimate of KL(p || q); its expected gradient is the
    full reverse KL's, SDPG Prop. 3.1)."""
    if cfg.divergence == "sampled":
        delta = sampled_token_advantage(logp, batch.teacher_logp)     # (N, T) sg[log q - log p], p current
        distill = clipped_surrogate(logp, batch.old_logp, delta, cfg.eps_low, cfg.eps_high)[0]  # (N, T)
    return template_loss(logp, batch, cfg, distill=_with_teacher(distill, batch), beta=cfg.distill_coef)


def grpo_opsd(logp, distill, batch: StepBatch, cfg, step: int):
    """GRPO + beta * OPSD divergence on all tokens (the additive baseline of RLSD's table)."""
    ahat = batch.advantages[:, None].expand_as(logp)                                # (N, T)
    return template_loss(logp, batch, cfg, ahat=ahat, distill=_with_teacher(distill, batch), beta=cfg.distill_coef)


def rlsd(logp, distill, batch: StepBatch, cfg, step: int):
    """RLSD: the verifier's A_i sets the direction, the teacher's Delta_t the per-token magnitude."""
    lam = rlsd_lambda(step, cfg.rlsd_lam, cfg.rlsd_lam_steps)
    teacher_logp = _teacher_logp(logp, batch)                                      # (N, T)
    ahat = rlsd_advantages(batch.advantages, teacher_logp, logp, lam, cfg.rlsd_eps_w)  # Delta of the current p
    loss, metrics = template_loss(logp, batch, cfg, ahat=ahat)
    w = rlsd_weights(batch.advantages, teacher_logp, logp)                          # (N, T)
    outside = ((w < 1 - cfg.rlsd_eps_w) | (w > 1 + cfg.rlsd_eps_w)).to(logp.dtype)  # (N, T)
    signed = batch.rollout.completion_mask * (batch.advantages != 0)[:, None]     # (N, T) tokens with A_i != 0
    metrics.update(lam=lam, w_clip_frac=masked_mean(outside, signed).item())      # (w = 1 where A_i = 0)
    return loss, metrics


def sdpg(logp, distill, batch: StepBatch, cfg, step: int):
    """SDPG: REINFORCE outcome term + beta(k) * gated full-vocabulary KL(p || sg q) + alpha * K."""
    ahat = batch.advantages[:, None].expand_as(logp)                                # (N, T)
    gate = (batch.advantages > 0).to(logp.dtype) if cfg.sdpg_gate else None         # (N,)
    if cfg.sdpg_schedule:
        beta = sdpg_beta(step, cfg.steps, cfg.distill_coef, *sdpg_windows(cfg))
    else:
        beta = cfg.distill_coef
    return template_loss(logp, batch, cfg, ahat=ahat, distill=_with_teacher(distill, batch), gate=gate, beta=beta,
                         outcome=cfg.sdpg_outcome)


# --- the records ------------------------------------------------------------------------

METHOD_FIELDS = ("teacher_mode", "teacher_context", "divergence", "distill_coef", "kl_coef", "kl_estimator",
                 "loss_agg")
"""TrainConfig fields whose default depends on the method (None there = the method's value)."""
COMMON = dict(kl_coef=0.0, kl_estimator="k3", loss_agg="token-mean")
"""The method-dependent settings every method uses, at the value most methods take."""
TEACHER_FIELDS = ("privileged_template", "sync_every", "ema_rate")
"""TrainConfig fields every method with a teacher reads (beside teacher_mode, teacher_context)."""
DIVERGENCE_FIELDS = ("jsd_beta", "entry_clip", "token_clip")
"""TrainConfig fields every method with a full-vocabulary divergence reads."""


def _floor_rule(cfg) -> str | None:
    from .leakage import FLOORS  # the floor's own list of divergences
    from .teacher import REFERENCE_KINDS  # the floor averages over the problem's own references

    if cfg.distill_floor and (cfg.task != "split" or cfg.divergence not in FLOORS):
        return (f"distill_floor=True needs task 'split' and a forward or reverse divergence, got task "
                f"{cfg.task!r} and divergence {cfg.divergence!r}")
    if cfg.distill_floor and cfg.teacher_context not in REFERENCE_KINDS:
        return (f"distill_floor=True needs a teacher shown the problem's own reference {REFERENCE_KINDS}, "
                f"got teacher_context={cfg.teacher_context!r}")
    return None


def _no_reference_kl(cfg) -> bool:
    """A_i = 0 makes every term 0 when the only other term, the reference KL, is off."""
    return cfg.kl_coef == 0


def _sdpg_skips_zero_rows(cfg) -> bool:
    """SDPG's outcome term is 0 at A_i = 0 and its gate 1[A_i > 0] zeroes D_t there."""
    return cfg.kl_coef == 0 and cfg.sdpg_gate


def _sdpg_total_steps(cfg) -> str | None:
    if cfg.sdpg_schedule:
        return "SDPG's beta(k) schedule is laid out over the total (sdpg_warm_frac, sdpg_decay_frac of steps)"
    return None


@dataclass(frozen=True)
class Method:
    """One method: everything the package knows about it."""
    name: str
    """the name a config, a command line and a run folder use"""
    label: str
    """the name tables and plots show"""
    loss: Callable
    """(logp (N, T), distill (N, T) or None, batch, cfg, step) -> (loss, metrics): logp the
    student's log-probs with gradient, distill its full-vocabulary D_t (`distillation`) when
    needs_logits(cfg), else None"""
    teacher: str | None = None
    """None, 'logp' (sampled-token log-probs) or 'logits' (full vocabulary)"""
    defaults: dict = field(default_factory=dict)
    """its value of each METHOD_FIELDS setting it uses; a setting it does not use is absent"""
    reads: tuple = ()
    """the TrainConfig fields of this method alone that its loss reads (rlsd_lam, ...)"""
    distill: tuple = ()
    """the kinds of distillation term D_t it can use: 'full' (any full-vocabulary divergence of
    rlsd_min.reverse_kl), 'sampled' (OPSD Eq. 9's sampled-token estimator); () = none"""
    demo: bool = False
    """whether `python -m rlsd_min demo` trains it"""
    trl_trainer: str | None = None
    """its trainer in rlsd_min.integrations.trl (None: TRL's GRPOTrainer is the method)"""
    trl_config: str | None = None
    """that trainer's config class"""
    rules: tuple = (_floor_rule,)
    """cfg -> a message when the resolved config breaks a rule of this method, else None"""
    uses_total_steps: Callable = lambda cfg: None
    """cfg -> why a run depends on its total number of steps, or None: a finished run whose
    method returns None can simply go on for more steps"""
    teacher_rows: Callable = lambda advantages, cfg: None
    """(advantages (N,), cfg) -> (N,) bool of the rows whose loss the teacher can change, or None
    for all: the teacher scores only those (the others' teacher term is multiplied by 0)"""
    skips_zero_rows: Callable = lambda cfg: False
    """cfg -> whether a row with A_i = 0 adds exactly nothing to this method's loss and gradient
    (beyond the token counts of the normaliser): then the student's forward and backward skip it"""

    @property
    def divergences(self) -> tuple:
        """The values of TrainConfig.divergence this method accepts."""
        from .reverse_kl import FULL_VOCAB_DIVERGENCES

        return (FULL_VOCAB_DIVERGENCES if "full" in self.distill else ()) + (
            ("sampled",) if "sampled" in self.distill else ())

    @property
    def fields(self) -> tuple:
        """Every TrainConfig field this method's loss and teacher read beyond the run's size and
        the optimiser (what a TRL config of the method adds to GRPOConfig)."""
        names = [n for n in METHOD_FIELDS if n in self.defaults]
        if self.teacher is not None:
            names += TEACHER_FIELDS
        if self.distill:
            names += DIVERGENCE_FIELDS
        return tuple(names) + ("dual_clip",) + self.reads

    def resolve(self, values: dict) -> dict:
        """TrainConfig values with this method's settings filled where None, and checked:
        an explicit value for a setting the method does not use is refused, not ignored."""
        from .teacher import CONTEXT_KINDS, TEACHER_MODES  # the teacher's own lists

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

    def check(self, cfg) -> None:
        """Raise a ValueError naming the first of this method's rules that the resolved `cfg` breaks."""
        for rule in self.rules:
            message = rule(cfg)
            if message:
                raise ValueError(message)

    def loss_of_logits(self, logp, logits, batch, cfg, step: int):
        """`loss` given the student's whole logits (N, T, V) (the TRL trainers' micro-batch, a
        test's batch): D_t from them when the method reads it (logits None otherwise)."""
        distill = distillation(cfg, logits, batch.teacher_logits_of()) if self.needs_logits(cfg) else None
        return self.loss(logp, distill, batch, cfg, step)

    def needs_logits(self, cfg) -> bool:
        """Whether the teacher must return full-vocabulary logits (not only log q_t(y_t)) for `cfg`."""
        return self.teacher == "logits" and cfg.divergence != "sampled"


_TEACHER = dict(teacher_mode="frozen", teacher_context="solution")
METHODS = {m.name: m for m in (
    Method("grpo", "GRPO", grpo, defaults=COMMON, demo=True, skips_zero_rows=_no_reference_kl),
    Method("opsd", "OPSD", opsd, "logits", dict(COMMON, **_TEACHER, divergence="reverse", distill_coef=1.0),
           distill=("full", "sampled"), trl_trainer="OPSDTrainer", trl_config="OPSDConfig"),
    Method("grpo_opsd", "GRPO+OPSD", grpo_opsd, "logits",
           dict(COMMON, **_TEACHER, divergence="reverse", distill_coef=0.1), distill=("full",),
           trl_trainer="OPSDTrainer", trl_config="OPSDConfig"),
    # RLSD's token advantage is A_i times the teacher's factor: nothing to weight where A_i = 0
    Method("rlsd", "RLSD", rlsd, "logp", dict(COMMON, teacher_mode="synced", teacher_context="answer"),
           reads=("rlsd_lam", "rlsd_lam_steps", "rlsd_eps_w"), demo=True,
           trl_trainer="RLSDTrainer", trl_config="RLSDConfig",
           teacher_rows=lambda advantages, cfg: advantages != 0, skips_zero_rows=_no_reference_kl),
    # SDPG's gate m_i = 1[A_i > 0] zeroes the distillation term of every other rollout
    Method("sdpg", "SDPG", sdpg, "logits",
           dict(COMMON, teacher_mode="live", teacher_context="solution", divergence="reverse", distill_coef=0.1,
                kl_coef=0.01, kl_estimator="ufkl", loss_agg="group-token-mean"),
           reads=("sdpg_outcome", "sdpg_gate", "sdpg_schedule", "sdpg_warm_frac", "sdpg_decay_frac"),
           distill=("full",), demo=True, trl_trainer="SDPGTrainer", trl_config="SDPGConfig",
           uses_total_steps=_sdpg_total_steps,
           teacher_rows=lambda advantages, cfg: advantages > 0 if cfg.sdpg_gate else None,
           skips_zero_rows=_sdpg_skips_zero_rows),
)}
"""GRPO, OPSD, GRPO+OPSD, RLSD, SDPG: the table at the top of this file."""
