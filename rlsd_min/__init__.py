"""rlsd_min: reinforcement learning with self-distillation for language models, small and exact.

The names below are the package's public API; notebooks and tests use them.
"""

import os

# Nothing in this project comes from a hub: the model is trained here, the data generated here.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")  # file-loading bars; training shows its own

from transformers.utils import logging as _hf_logging  # noqa: E402

_hf_logging.disable_progress_bar()  # tqdm bars of save/load; training shows its own

from .advantages import frac_zero_std, group_advantages  # noqa: E402
from .config import SFTConfig, TaskConfig, ModelConfig, TrainConfig, train_config  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .leakage import mutual_information_floor  # noqa: E402
from .methods import METHODS, rlsd_advantages, rlsd_lambda, sdpg_beta  # noqa: E402
from .reference_kl import kl_penalty  # noqa: E402
from .reverse_kl import full_reverse_kl  # noqa: E402
from .sampling import sample_group, token_logprobs  # noqa: E402
from .tasks import Problem, verify  # noqa: E402
from .teacher import teacher_logprobs  # noqa: E402
from .train import last_eval, read_metrics, train  # noqa: E402

__all__ = [
    "group_advantages", "frac_zero_std", "kl_penalty", "sample_group", "token_logprobs",
    "rlsd_advantages", "rlsd_lambda", "sdpg_beta", "full_reverse_kl", "teacher_logprobs", "METHODS",
    "mutual_information_floor",
    "Problem", "verify", "evaluate", "train", "train_config", "last_eval", "read_metrics",
    "ModelConfig", "TaskConfig", "SFTConfig", "TrainConfig",
]
