"""Configuration: one dataclass per job, the three profiles (ci, cpu, gpu), and the one place
where a run's settings are resolved.

Every field has a docstring that says what it controls; `python -m rlsd_min train
--help` lists the overridable ones. Profiles size the same job for three budgets:

    ci   seconds on a 2-core CPU (the test suite and the notebooks under nbval)
    cpu  a few minutes on a laptop CPU (`make demo`)
    gpu  a classroom GPU lab (one GPU, one class period)

A TrainConfig field left at None takes its value from the first layer that sets it:

    the method (rlsd_min.methods.METHODS)  >  the task (rlsd_min.tasks.TASKS)  >  the profile (PROFILES)

`TrainConfig.validate()` does that resolution and every check; `train_config(profile, ...)` is
`TrainConfig(profile=profile, ...).validate()`. config.json records the resolved values.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import typing
from dataclasses import dataclass

import torch

from .methods import METHODS
from .tasks import TASKS

PROFILES = {
    "ci": dict(steps=4, prompts_per_step=4, group_size=4, eval_every=2, eval_problems=16, checkpoint_every=2),
    "cpu": dict(steps=100, prompts_per_step=16, group_size=8, eval_every=10, eval_problems=256, checkpoint_every=20),
    "gpu": dict(steps=200, prompts_per_step=64, group_size=8, eval_every=10, eval_problems=256, checkpoint_every=50),
}
"""What each profile sets: the size of a run. ci: seconds (tests, notebooks under nbval);
cpu: a minute or two per method on 2 CPU cores (`make demo`); gpu: a classroom GPU lab. eval_problems
is at most a task's validation split (256 problems each; `train` refuses more)."""
BASE_VALUES = dict(max_new_tokens=40)
"""The value of a None field that no method, task or profile sets."""

@dataclass
class ModelConfig:
    hidden_size: int = 128
    """width of the residual stream"""
    intermediate_size: int = 512
    """width of the MLP"""
    num_layers: int = 2
    """transformer blocks"""
    num_heads: int = 4
    """attention heads"""
    max_positions: int = 128
    """longest sequence (prompt + completion) the model accepts"""


@dataclass
class SFTConfig:
    """Supervised warm start (`rlsd_min.sft`)."""
    lr: float = 3e-3
    """AdamW learning rate after warm-up"""
    batch_size: int = 128
    """sequences per step"""
    warmup_steps: int = 50
    """linear learning-rate warm-up"""
    max_steps: int = 3000
    """give up after this many steps even if target_acc is not reached"""
    eval_every: int = 25
    """steps between evaluations of sampled accuracy"""
    eval_problems: int = 256
    """validation problems per evaluation"""
    target_acc: float = 0.45
    """stop once sampled (T=1) validation accuracy reaches this: RL needs a policy that is
    right sometimes but not always, else every group has equal rewards and no signal"""
    privileged_frac: float = 0.5
    """fraction of training sequences shown with the privileged (teacher) prompt, so the
    same weights learn to use the reference when it is given"""
    seed: int = 0
    """seed of initialisation, problem draws and sampling"""


@dataclass
class TrainConfig:
    """One RL run (`rlsd_min.train`). None = resolved by `validate()` (see the module docstring)."""
    method: str = "grpo"
    """which method: see rlsd_min.methods.METHODS"""
    task: str = "arith"
    """arith (one valid answer), split (ten valid answers) or mul7 (one, longer: the unsaturated task);
    picks the data and the warm start"""
    profile: str = "cpu"
    """ci, cpu or gpu: sets steps, prompts_per_step, group_size, eval_every, eval_problems and
    checkpoint_every where they are left at None"""
    steps: int | None = None
    """RL steps (one batch of prompts each); None = the profile's (cpu 100)"""
    prompts_per_step: int | None = None
    """distinct prompts per step; None = the profile's (cpu 16)"""
    group_size: int | None = None
    """completions sampled per prompt (G), at least 2 for group advantages; None = the profile's (cpu 8)"""
    max_new_tokens: int | None = None
    """completion length limit; None = the task's (arith 40, split 12, mul7 80)"""
    temperature: float = 1.0
    """sampling temperature; 1.0 samples exactly from pi_theta"""
    lr: float = 1e-4
    """AdamW learning rate (constant). A fresh Adam moves every weight by about lr on its
    first step: 1e-3 wrecks the 0.5M warm start in one step, 1e-4 is safe"""
    max_grad_norm: float = 1.0
    """gradient clipping"""
    num_iterations: int = 1
    """policy updates per sampled batch (>1 makes the PPO ratio and clip act)"""
    eps_low: float = 0.2
    """PPO clip: ratio floor 1 - eps_low"""
    eps_high: float = 0.2
    """PPO clip: ratio ceiling 1 + eps_high (DAPO / RLSD code: 0.28)"""
    loss_agg: str | None = None
    """token aggregation: token-mean, seq-mean or group-token-mean; None = the method's (sdpg
    group-token-mean, else token-mean)"""
    adv_scale: str = "group"
    """advantage normalisation: group, batch or none (Dr. GRPO)"""
    adv_eps: float = 1e-6
    """eps added to the std in the advantage (TRL: 1e-4; RLSD, SDPG: 1e-6)"""
    dual_clip: float = 0.0
    """C of the dual clip bounding the loss at C*|A| for A < 0 (0 = off; RLSD code 3, SDPG code 10)"""
    kl_coef: float | None = None
    """alpha, weight of the reference-policy KL (0 = no reference model); None = the method's
    (sdpg 0.01, else 0)"""
    kl_estimator: str | None = None
    """reference KL estimator: k1, k2, k3, SDPG's names urkl (= k2), ufkl (= k3), or its code's
    normalised fkl (pi_ref/pi_theta), rkl ((l+1)^2/2); None = the method's (sdpg ufkl, else k3)"""
    # --- self-distillation (teacher = the same model shown the reference) ---
    teacher_mode: str | None = None
    """live, frozen, synced or ema; None = the method's (opsd, grpo_opsd frozen; rlsd synced;
    sdpg live); stays None for a method without a teacher"""
    teacher_context: str | None = None
    """the teacher's context (rlsd_min.teacher.CONTEXT_KINDS): answer or solution (the problem's own
    reference), sibling (a success of its group), other_answer or other_solution (another
    problem's worked example); None = the method's (rlsd answer, else solution)"""
    privileged_template: str | None = None
    """teacher prompt template with {context} and {prompt} placeholders; None = the package's,
    rlsd_min.teacher.PRIVILEGED_TEMPLATE ("{context}|{prompt}")"""
    sync_every: int = 10
    """synced teacher: steps between refreshes from the student (RLSD: 10 paper, 20 code)"""
    ema_rate: float = 0.05
    """ema teacher: rate of the moving average (SDPO: 0.05)"""
    divergence: str | None = None
    """distillation term D_t: reverse, forward, jsd (full vocabulary) or sampled (OPSD Eq. 9
    estimator, opsd only); None = the method's (reverse); stays None for grpo and rlsd"""
    jsd_beta: float = 0.5
    """beta of the generalised JSD"""
    entry_clip: float = 0.0
    """forward KL: clip each vocabulary entry at this value (0 = off; OPSD v3)"""
    token_clip: float = 0.0
    """clip the per-token divergence at this value (0 = off; SDPG code: 20)"""
    distill_coef: float | None = None
    """beta: weight of the distillation term (SDPG: beta_base of the schedule); None = the
    method's (opsd 1.0, grpo_opsd 0.1, sdpg 0.1); stays None for grpo and rlsd"""
    rlsd_lam: float = 0.5
    """RLSD: initial mixing weight lam of the teacher's per-token weight"""
    rlsd_lam_steps: int = 50
    """RLSD: steps over which lam decays linearly to 0 (paper 50, code 60)"""
    rlsd_eps_w: float = 0.2
    """RLSD: clip of the per-token weight w_t to [1 - eps_w, 1 + eps_w]"""
    sdpg_outcome: str = "reinforce"
    """SDPG outcome term: reinforce (paper) or ppo (the clipped surrogate of eps_low, eps_high and
    dual_clip as set here; the released code runs it with eps_high 0.28 and dual_clip 10)"""
    sdpg_gate: bool = True
    """SDPG: distil only positive-advantage rollouts, m_i = 1[A_i > 0] (paper on, code off)"""
    sdpg_schedule: bool = True
    """SDPG: beta(k) warm-up/decay schedule (paper on, code off); off = constant distill_coef"""
    sdpg_warm_frac: float = 0.125
    """SDPG: T_warm as a fraction of steps (paper 50 / 400)"""
    sdpg_decay_frac: float = 0.875
    """SDPG: T_decay as a fraction of steps (paper 350 / 400)"""
    # --- speed; evaluation always runs in float32 with the default sampler ---
    bf16_autocast: bool = False
    """run the student, teacher and reference forwards and the sampling under bfloat16 autocast
    (log-probs and losses stay float32); sampling then draws from the bf16-computed policy"""
    compile_decoding: bool = False
    """sample with the decoding step's forward compiled by torch.compile (rlsd_min.decoding.
    compiled_forward, over transformers' StaticCache); the first step pays the compile, a batch of
    another width one more. Off in every profile: a whole 200-step run loses more to the compile
    than it saves (2-core CPU and H200 measured, benchmarks/RESULTS.md)"""
    compile_scoring: bool = False
    """run the forwards that score completions (the student's in the update, its backward with it;
    the teacher's; the reference's) through torch.compile with dynamic shapes (rlsd_min.decoding.
    compiled_forward): one graph for every batch's widths; the first step pays the compile"""
    eval_every: int | None = None
    """steps between held-out evaluations; None = the profile's (cpu 10)"""
    eval_problems: int | None = None
    """validation problems per evaluation; None = the profile's (cpu 256)"""
    eval_samples: int = 1
    """sampled completions per validation problem in each evaluation (`eval_acc`): more samples
    make one evaluation's own sampling noise smaller (its sd falls as 1/sqrt(problems x samples))"""
    probe_problems: int = 0
    """leakage probes at each evaluation (rlsd_min.leakage.leakage_probes) on this many training
    and this many held-out prompts; 0 = off"""
    distill_floor: bool = False
    """log `distill_floor`, the exact floor of distill_loss found by enumerating the task's
    references (rlsd_min.leakage.reference_floor; task split, a forward or reverse divergence);
    costs one teacher forward per reference"""
    checkpoint_every: int | None = None
    """steps between checkpoints (and at the end); None = the profile's (cpu 20)"""
    seed: int = 0
    """seed of the prompt order, sampling and evaluation"""
    base_checkpoint: str | None = None
    """warm-started model to start from; None = the task's (data_root()/base, .../base_split,
    .../base_mul7)"""
    data_dir: str | None = None
    """folder of the data files; None = the task's (data_root()/arith, .../split, .../mul7)"""

    def validate(self) -> "TrainConfig":
        """The resolved config: every None filled by the method, task or profile, every value
        checked. Raises a ValueError naming the first bad value; returns a new TrainConfig."""
        from .teacher import PRIVILEGED_TEMPLATE

        for name, choices in (("profile", PROFILES), ("task", TASKS), ("method", METHODS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose from {tuple(choices)}")
        method = METHODS[self.method]
        layers = {**PROFILES[self.profile], **TASKS[self.task].overrides, "privileged_template": PRIVILEGED_TEMPLATE}
        values = {f: v if v is not None else layers.get(f, BASE_VALUES.get(f))
                  for f, v in dataclasses.asdict(self).items()}
        cfg = TrainConfig(**method.resolve(values))
        cfg._check()
        return cfg

    def _check(self) -> None:
        """Types and ranges of every field (resolved values)."""
        from .advantages import SCALES as ADV_SCALES
        from .objective import AGGREGATIONS
        from .reference_kl import ESTIMATORS, SDPG_NAMES
        from .teacher import teacher_prompt

        kl_estimators = ESTIMATORS + tuple(SDPG_NAMES)
        for name, kind in field_types(TrainConfig).items():
            value = getattr(self, name)
            if value is not None and not _is(kind, value):
                what = "a finite number" if kind is float else f"of type {kind.__name__}"
                raise ValueError(f"{name} must be {what}, got {value!r}")
        checks = [
            (self.probe_problems >= 0, f"probe_problems must be >= 0, got {self.probe_problems}"),
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.prompts_per_step >= 1, f"prompts_per_step must be >= 1, got {self.prompts_per_step}"),
            (self.group_size >= 2, f"group_size must be >= 2 for group advantages, got {self.group_size}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}"),
            (self.eval_problems >= 1, f"eval_problems must be >= 1, got {self.eval_problems}"),
            (self.eval_samples >= 1, f"eval_samples must be >= 1, got {self.eval_samples}"),
            (self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}"),
            (0 <= self.eps_low < 1, f"eps_low must be in [0, 1), got {self.eps_low}"),
            (self.eps_high >= 0, f"eps_high must be >= 0, got {self.eps_high}"),
            (self.loss_agg in AGGREGATIONS, f"unknown loss_agg {self.loss_agg!r}; choose from {AGGREGATIONS}"),
            (self.adv_scale in ADV_SCALES, f"unknown adv_scale {self.adv_scale!r}; choose from {ADV_SCALES}"),
            (self.adv_eps >= 0, f"adv_eps must be >= 0, got {self.adv_eps}"),
            (self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}"),
            (self.kl_estimator in kl_estimators, f"unknown kl_estimator {self.kl_estimator!r}; choose from {kl_estimators}"),
            (self.dual_clip == 0 or self.dual_clip > 1, f"dual_clip must be 0 (off) or > 1, got {self.dual_clip}"),
            (0 < self.jsd_beta < 1, f"jsd_beta must be in (0, 1), got {self.jsd_beta}"),
            (self.entry_clip >= 0, f"entry_clip must be >= 0 (0 = off), got {self.entry_clip}"),
            (self.token_clip >= 0, f"token_clip must be >= 0 (0 = off), got {self.token_clip}"),
            (0 < self.rlsd_eps_w < 1, f"rlsd_eps_w must be in (0, 1), got {self.rlsd_eps_w}"),
            (0 <= self.rlsd_lam <= 1, f"rlsd_lam must be in [0, 1], got {self.rlsd_lam}"),
            (self.rlsd_lam_steps >= 0, f"rlsd_lam_steps must be >= 0, got {self.rlsd_lam_steps}"),
            (0 <= self.sdpg_warm_frac <= 1, f"sdpg_warm_frac must be in [0, 1], got {self.sdpg_warm_frac}"),
            (0 <= self.sdpg_decay_frac <= 1, f"sdpg_decay_frac must be in [0, 1], got {self.sdpg_decay_frac}"),
            (self.sdpg_outcome in ("reinforce", "ppo"), f"unknown sdpg_outcome {self.sdpg_outcome!r}; choose reinforce or ppo"),
            (self.sync_every >= 1, f"sync_every must be >= 1, got {self.sync_every}"),
            (0 < self.ema_rate <= 1, f"ema_rate must be in (0, 1], got {self.ema_rate}"),
            (self.distill_coef is None or self.distill_coef >= 0, f"distill_coef must be >= 0, got {self.distill_coef}"),
            (self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
            (not (self.bf16_autocast and self.compile_decoding),
             "bf16_autocast=True and compile_decoding=True cannot be combined: under autocast the "
             "rotary embedding returns float32 keys beside bfloat16 values, and transformers' static "
             "cache holds one dtype for both; turn one of them off"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        METHODS[self.method].check(self)
        teacher_prompt("x", "c", self.privileged_template)  # raises on a missing placeholder

    def needs_reference(self) -> bool:
        """Whether this run scores the reference policy pi_ref (a frozen copy of the starting
        model): kl_coef > 0. The loop, the bench and the TRL trainers ask here."""
        return self.kl_coef > 0

    def data_path(self) -> str:
        """The data folder this run reads (the task's under the data root when data_dir is None)."""
        return str(self.data_dir or TASKS[self.task].data_dir)

    def base_path(self) -> str:
        """The checkpoint this run starts from (the task's warm start when base_checkpoint is None)."""
        return str(self.base_checkpoint or TASKS[self.task].base_checkpoint)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def default_profile() -> str:
    """RLSD_PROFILE if set, else 'gpu' when CUDA is present, else 'cpu'."""
    name = os.environ.get("RLSD_PROFILE") or ("gpu" if torch.cuda.is_available() else "cpu")
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r} (from RLSD_PROFILE); choose from {tuple(PROFILES)}")
    return name


def train_config(profile: str | None = None, **fields) -> TrainConfig:
    """TrainConfig(profile=profile, **fields).validate(), the profile defaulting to
    `default_profile()`; unknown field names are refused by name."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"unknown TrainConfig field(s) {unknown}")
    return TrainConfig(profile=profile or default_profile(), **fields).validate()


RENAMED_FIELDS = {"static_cache_compile": "compile_decoding"}
"""old TrainConfig names, as a run folder's config.json or an experiment.json may still hold them"""


def current_names(values: dict) -> dict:
    """Recorded TrainConfig values under today's field names (RENAMED_FIELDS)."""
    return {RENAMED_FIELDS.get(k, k): v for k, v in values.items()}


@functools.cache
def field_types(cls) -> dict:
    """{field: its type} of a config dataclass, `int | None` read as int (typing.get_type_hints)."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        out[name] = args[0] if args else hint
    return out


def _is(kind: type, value) -> bool:
    """Whether `value` is a valid `kind` (int, float, bool or str) for a config field."""
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


BOOLS = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}
"""the spellings of a bool field's value on the command line"""
_INT = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def parse_field(cls, name: str, text: str):
    """The value of field `name` of config dataclass `cls` written as `text` (a command line's
    `--set name=text`), typed as the field is; a ValueError names the value otherwise. Digits
    are ASCII only (Python's int() would read '٣' as 3)."""
    kind = field_types(cls)[name]
    if kind is bool:
        if text.lower() not in BOOLS:
            raise ValueError(f"{text!r} is not one of {'/'.join(BOOLS)}")
        return BOOLS[text.lower()]
    if kind is int and not _INT.fullmatch(text) or kind is float and not _FLOAT.fullmatch(text):
        raise ValueError(f"{text!r} is not a valid {kind.__name__}")
    return kind(text)


def field_docs(cls) -> dict:
    """{field: (default, docstring)} of a config dataclass, read from the docstrings under its fields."""
    import ast
    import inspect

    body = ast.parse(inspect.getsource(cls)).body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return {f.name: (f.default, docs.get(f.name, "")) for f in dataclasses.fields(cls)}


def write_atomic(path, write) -> None:
    """Replace the file `path` atomically: `write(f)` fills a temporary file of a name no other
    writer uses, in the same folder, which is then renamed over `path`. A rename replaces a
    symlink itself, never the file it points to; a symlink at `path` is refused (named), so a
    received folder cannot send a write elsewhere."""
    import tempfile

    path = str(path)
    if os.path.islink(path):
        raise ValueError(f"{path} is a symlink; it is not written through: replace it by a plain file, or "
                         "delete it")
    folder, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=folder or ".", prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the file from the folder's other readers
        with os.fdopen(fd, "w", newline="") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_json(obj, path) -> None:
    """Write JSON atomically (`write_atomic`)."""
    write_atomic(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True))


def pick_device(device: str | None = None) -> torch.device:
    """CUDA when present, else CPU (an explicit `device` wins)."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
