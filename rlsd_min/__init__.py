"""rlsd_min: reinforcement learning with self-distillation for language models, small and exact.

The names below are the package's public API; notebooks and tests use them. They load on
first use (PEP 562), so `import rlsd_min` and `python -m rlsd_min --help` stay fast, and no
public name is also the name of a module: `rlsd_min.verify` is always the verifier.
"""

import importlib
import importlib.util
import os

# Nothing in this project comes from a hub: the model is trained here, the data generated here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # file-loading bars; training shows its own

_EXPORTS = {
    "advantages": ("group_advantages", "frac_zero_std"),
    "config": ("ModelConfig", "SFTConfig", "TrainConfig", "train_config"),
    "evaluation": ("evaluate",),
    "leakage": ("mutual_information_floor",),
    "loop": ("train", "last_eval"),
    "run_folder": ("read_metrics",),
    "methods": ("METHODS", "rlsd_advantages", "rlsd_lambda", "sdpg_beta"),
    "objective": ("template_loss",),
    "reference_kl": ("kl_penalty",),
    "reverse_kl": ("full_reverse_kl",),
    "sampling": ("sample_group", "token_logprobs"),
    "step": ("StepBatch", "collect", "update", "rl_step"),
    "tasks": ("Problem", "TaskConfig", "verify", "data_root"),
    "teacher": ("teacher_logprobs",),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_HOME)


def __getattr__(name: str):
    if name in _HOME:
        value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    elif importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: rlsd_min.config
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module 'rlsd_min' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
