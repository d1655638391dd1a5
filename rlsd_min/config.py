"""Configuration: one dataclass per job, and the three profiles (ci, cpu, gpu).

Every field has a docstring that says what it controls; `python -m rlsd_min train
--help` lists the overridable ones. Profiles size the same job for three budgets:

    ci   seconds on a 2-core CPU (the test suite and the notebooks under nbval)
    cpu  a few minutes on a laptop CPU (`make demo`)
    gpu  a classroom GPU lab (one GPU, one class period)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .advantages import SCALES as ADV_SCALES
from .objective import AGGREGATIONS
from .reference_kl import ESTIMATORS, SDPG_NAMES
from .reverse_kl import FULL_VOCAB_DIVERGENCES
from .teacher import PRIVILEGED_TEMPLATE

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data" / "arith"
BASE_CHECKPOINT = REPO_ROOT / "data" / "base"
RESULTS_DIR = REPO_ROOT / "results"
PROFILES = ("ci", "cpu", "gpu")
KL_ESTIMATORS = ESTIMATORS + tuple(SDPG_NAMES)
DIVERGENCES = FULL_VOCAB_DIVERGENCES + ("sampled",)



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
class TaskConfig:
    ops: tuple = ("add",)
    """operations to draw problems from: any of 'add', 'sub', 'mul'"""
    digits: int = 3
    """operand digits of train/validation/test problems (difficulty)"""
    ood_digits: int = 4
    """operand digits of the out-of-distribution split"""
    n_train: int = 2000
    """training prompts for RL"""
    n_validation: int = 256
    """held-out prompts for evaluation during training"""
    n_test: int = 512
    """held-out prompts for the final report"""
    n_ood: int = 256
    """harder held-out prompts with more digits"""
    seed: int = 0
    """seed of the data files"""


@dataclass
class Task:
    """One task: how its data files are drawn, where they and its warm start live, and the
    TrainConfig values it changes."""
    data: TaskConfig
    """the data files' recipe (rlsd_min.tasks.build_datasets)"""
    data_dir: Path
    """folder of the data files"""
    base_checkpoint: Path
    """its warm-started checkpoint (rlsd_min.sft)"""
    overrides: dict = dataclasses.field(default_factory=dict)
    """TrainConfig values the task changes"""


TASKS = {
    "arith": Task(data=TaskConfig(), data_dir=DATA_DIR, base_checkpoint=BASE_CHECKPOINT),
    "split": Task(data=TaskConfig(ops=("split",), digits=3, ood_digits=4, n_train=400, n_validation=256, n_test=256),
                  data_dir=REPO_ROOT / "data" / "split", base_checkpoint=REPO_ROOT / "data" / "base_split",
                  overrides=dict(max_new_tokens=12)),  # a split answer is 5 characters long
}
"""The two tasks. arith: one valid answer, shown with a worked scratchpad. split: ten valid
answers, the reference one of them at random (rlsd_min.tasks.SplitProblem); 400 training
prompts, so RL revisits each about a dozen times and a shortcut to the reference could form."""


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
    """One RL run (`rlsd_min.train`)."""
    method: str = "grpo"
    """which method: see rlsd_min.methods.METHODS"""
    task: str = "arith"
    """arith (one valid answer) or split (ten valid answers); picks data_dir and base_checkpoint"""
    profile: str = "cpu"
    """the profile these defaults came from (informational)"""
    steps: int = 100
    """RL steps (one batch of prompts each)"""
    prompts_per_step: int = 16
    """distinct prompts per step"""
    group_size: int = 8
    """completions sampled per prompt (G); at least 2 for group advantages"""
    max_new_tokens: int = 40
    """completion length limit"""
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
    loss_agg: str = "token-mean"
    """token aggregation: token-mean, seq-mean or group-token-mean"""
    adv_scale: str = "group"
    """advantage normalisation: group, batch or none (Dr. GRPO)"""
    adv_eps: float = 1e-6
    """eps added to the std in the advantage (TRL: 1e-4; RLSD, SDPG: 1e-6)"""
    dual_clip: float = 0.0
    """C of the dual clip bounding the loss at C*|A| for A < 0 (0 = off; RLSD code 3, SDPG code 10)"""
    kl_coef: float = 0.0
    """alpha, weight of the reference-policy KL (0 = no reference model)"""
    kl_estimator: str = "k3"
    """reference KL estimator: k1, k2, k3, SDPG's names urkl (= k2), ufkl (= k3), or its code's
    normalised fkl (pi_ref/pi_theta), rkl ((l+1)^2/2)"""
    # --- self-distillation (teacher = the same model shown the reference) ---
    teacher_mode: str = ""
    """live, frozen, synced or ema; '' = the method's default (rlsd_min.methods.METHODS)"""
    teacher_context: str = ""
    """privileged context: answer or solution; '' = the method's default"""
    privileged_template: str = PRIVILEGED_TEMPLATE
    """teacher prompt template with {context} and {prompt} placeholders"""
    sync_every: int = 10
    """synced teacher: steps between refreshes from the student (RLSD: 10 paper, 20 code)"""
    ema_rate: float = 0.05
    """ema teacher: rate of the moving average (SDPO: 0.05)"""
    divergence: str = "reverse"
    """OPSD-style term: reverse, forward, jsd (full vocabulary) or sampled (OPSD Eq. 9 estimator)"""
    jsd_beta: float = 0.5
    """beta of the generalised JSD"""
    entry_clip: float = 0.0
    """forward KL: clip each vocabulary entry at this value (0 = off; OPSD v3)"""
    token_clip: float = 0.0
    """clip the per-token divergence at this value (0 = off; SDPG code: 20)"""
    distill_coef: float = 0.0
    """beta: weight of the distillation term (SDPG: beta_base of the schedule)"""
    rlsd_lam: float = 0.5
    """RLSD: initial mixing weight lam of the teacher's per-token weight"""
    rlsd_lam_steps: int = 50
    """RLSD: steps over which lam decays linearly to 0 (paper 50, code 60)"""
    rlsd_eps_w: float = 0.2
    """RLSD: clip of the per-token weight w_t to [1 - eps_w, 1 + eps_w]"""
    sdpg_outcome: str = "reinforce"
    """SDPG outcome term: reinforce (paper) or ppo (released code's clipped surrogate)"""
    sdpg_gate: bool = True
    """SDPG: distil only positive-advantage rollouts, m_i = 1[A_i > 0] (paper on, code off)"""
    sdpg_schedule: bool = True
    """SDPG: beta(k) warm-up/decay schedule (paper on, code off); off = constant distill_coef"""
    sdpg_warm_frac: float = 0.125
    """SDPG: T_warm as a fraction of steps (paper 50 / 400)"""
    sdpg_decay_frac: float = 0.875
    """SDPG: T_decay as a fraction of steps (paper 350 / 400)"""
    # --- speed (issue #6); evaluation always runs in float32 with the default sampler ---
    bf16_autocast: bool = False
    """run the student, teacher and reference forwards and the sampling under bfloat16 autocast
    (log-probs and losses stay float32); sampling then draws from the bf16-computed policy"""
    static_cache_compile: bool = False
    """sample with a static KV cache and a torch.compile'd decoding forward (transformers'
    generate: cache_implementation='static' + compile_config); the first steps pay the compile"""
    eval_every: int = 10
    """steps between held-out evaluations"""
    eval_problems: int = 256
    """validation problems per evaluation"""
    probe_problems: int = 0
    """leakage probes at each evaluation (rlsd_min.leakage.leakage_probes) on this many training
    and this many held-out prompts; 0 = off"""
    checkpoint_every: int = 20
    """steps between checkpoints (and at the end)"""
    seed: int = 0
    """seed of the prompt order, sampling and evaluation"""
    base_checkpoint: str = str(BASE_CHECKPOINT)
    """warm-started model to start from"""
    data_dir: str = str(DATA_DIR)
    """folder of the data files"""

    def validate(self) -> "TrainConfig":
        """Raise a ValueError naming the first bad value; return self."""
        from .methods import METHODS

        checks = [
            (self.method in METHODS, f"unknown method {self.method!r}; choose from {sorted(METHODS)}"),
            (self.task in TASKS, f"unknown task {self.task!r}; choose from {tuple(TASKS)}"),
            (self.probe_problems >= 0, f"probe_problems must be >= 0, got {self.probe_problems}"),
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.prompts_per_step >= 1, f"prompts_per_step must be >= 1, got {self.prompts_per_step}"),
            (self.group_size >= 2, f"group_size must be >= 2 for group advantages, got {self.group_size}"),
            (self.max_new_tokens >= 1, f"max_new_tokens must be >= 1, got {self.max_new_tokens}"),
            (self.temperature > 0, f"temperature must be > 0, got {self.temperature}"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr}"),
            (self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}"),
            (self.eval_problems >= 1, f"eval_problems must be >= 1, got {self.eval_problems}"),
            (self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}"),
            (0 <= self.eps_low < 1, f"eps_low must be in [0, 1), got {self.eps_low}"),
            (self.eps_high >= 0, f"eps_high must be >= 0, got {self.eps_high}"),
            (self.loss_agg in AGGREGATIONS, f"unknown loss_agg {self.loss_agg!r}; choose from {AGGREGATIONS}"),
            (self.adv_scale in ADV_SCALES, f"unknown adv_scale {self.adv_scale!r}; choose from {ADV_SCALES}"),
            (self.adv_eps >= 0, f"adv_eps must be >= 0, got {self.adv_eps}"),
            (self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}"),
            (self.kl_estimator in KL_ESTIMATORS, f"unknown kl_estimator {self.kl_estimator!r}; choose from {KL_ESTIMATORS}"),
            (self.dual_clip == 0 or self.dual_clip > 1, f"dual_clip must be 0 (off) or > 1, got {self.dual_clip}"),
            (self.divergence in DIVERGENCES, f"unknown divergence {self.divergence!r}; choose from {DIVERGENCES}"),
            (0 < self.jsd_beta < 1, f"jsd_beta must be in (0, 1), got {self.jsd_beta}"),
            (0 < self.rlsd_eps_w < 1, f"rlsd_eps_w must be in (0, 1), got {self.rlsd_eps_w}"),
            (0 <= self.rlsd_lam <= 1, f"rlsd_lam must be in [0, 1], got {self.rlsd_lam}"),
            (0 <= self.sdpg_warm_frac <= 1, f"sdpg_warm_frac must be in [0, 1], got {self.sdpg_warm_frac}"),
            (0 <= self.sdpg_decay_frac <= 1, f"sdpg_decay_frac must be in [0, 1], got {self.sdpg_decay_frac}"),
            (self.sdpg_outcome in ("reinforce", "ppo"), f"unknown sdpg_outcome {self.sdpg_outcome!r}; choose reinforce or ppo"),
            (self.sync_every >= 1, f"sync_every must be >= 1, got {self.sync_every}"),
            (0 < self.ema_rate <= 1, f"ema_rate must be in (0, 1], got {self.ema_rate}"),
            (self.distill_coef >= 0, f"distill_coef must be >= 0, got {self.distill_coef}"),
            (self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}"),
            (self.checkpoint_every >= 1, f"checkpoint_every must be >= 1, got {self.checkpoint_every}"),
            (isinstance(self.bf16_autocast, bool), f"bf16_autocast must be True or False, got {self.bf16_autocast!r}"),
            (isinstance(self.static_cache_compile, bool),
             f"static_cache_compile must be True or False, got {self.static_cache_compile!r}"),
            (not (self.bf16_autocast and self.static_cache_compile),
             "bf16_autocast=True and static_cache_compile=True cannot be combined: under autocast the "
             "rotary embedding returns float32 keys beside bfloat16 values, and transformers' static "
             "cache holds one dtype for both; turn one of them off"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self._check_teacher(METHODS[self.method])
        return self

    def _check_teacher(self, method) -> None:
        """Fill '' teacher settings from the method's defaults; refuse ones it can't use."""
        from .teacher import CONTEXT_KINDS, TEACHER_MODES, teacher_prompt

        if method.teacher is None:
            if self.teacher_mode or self.teacher_context:
                raise ValueError(f"method {self.method!r} uses no teacher; teacher_mode={self.teacher_mode!r} "
                                 f"and teacher_context={self.teacher_context!r} must be left empty")
            return
        self.teacher_mode = self.teacher_mode or method.defaults["teacher_mode"]
        self.teacher_context = self.teacher_context or method.defaults["teacher_context"]
        if self.teacher_mode not in TEACHER_MODES:
            raise ValueError(f"unknown teacher_mode {self.teacher_mode!r}; choose from {TEACHER_MODES}")
        if self.teacher_context not in CONTEXT_KINDS:
            raise ValueError(f"unknown teacher_context {self.teacher_context!r}; choose from {CONTEXT_KINDS}")
        if self.method == "rlsd" and self.divergence != "reverse":
            raise ValueError(f"rlsd takes no divergence (its teacher only weights tokens); got divergence={self.divergence!r}")
        if self.method in ("grpo_opsd", "sdpg") and self.divergence == "sampled":
            raise ValueError(f"{self.method} needs a full-vocabulary divergence, got divergence='sampled'")
        teacher_prompt("x", "c", self.privileged_template)  # raises on a missing placeholder

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_PROFILE_OVERRIDES = {
    "ci": dict(steps=4, prompts_per_step=4, group_size=4, eval_every=2, eval_problems=16,
               checkpoint_every=2),
    "cpu": dict(),
    "gpu": dict(steps=200, prompts_per_step=64, group_size=8, eval_every=10, eval_problems=512,
                checkpoint_every=50),
}


def default_profile() -> str:
    """RLSD_PROFILE if set, else 'gpu' when CUDA is present, else 'cpu'."""
    name = os.environ.get("RLSD_PROFILE") or ("gpu" if torch.cuda.is_available() else "cpu")
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r} (from RLSD_PROFILE); choose from {PROFILES}")
    return name


def train_config(profile: str | None = None, **overrides) -> TrainConfig:
    """The TrainConfig of a profile, with the task's and the method's defaults, then field
    overrides; validated."""
    profile = profile or default_profile()
    if profile not in PROFILES:
        raise ValueError(f"unknown profile {profile!r}; choose from {PROFILES}")
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown TrainConfig field(s) {unknown}")
    from .methods import METHODS

    method, task = overrides.get("method", TrainConfig.method), overrides.get("task", TrainConfig.task)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(METHODS)}")
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {tuple(TASKS)}")
    values = {**_PROFILE_OVERRIDES[profile], "profile": profile, "data_dir": str(TASKS[task].data_dir),
              "base_checkpoint": str(TASKS[task].base_checkpoint), **TASKS[task].overrides,
              **METHODS[method].defaults, **overrides}
    return TrainConfig(**values).validate()


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


def save_json(obj, path) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)


def pick_device(device: str | None = None) -> torch.device:
    """CUDA when present, else CPU (an explicit `device` wins)."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
