"""Group-relative advantages (GRPO; Shao et al. 2024, DeepSeekMath Eq. 3 "outcome supervision").

    A_i = (R_i - mean_group(R)) / (std_group(R) + eps)

Each prompt's G completions form a group; a completion is rewarded relative to its
siblings, so no value network is needed. A group whose rewards are all equal gets
A_i = 0 for every member: it carries no learning signal, which is why the warm start
stops at partial competence and why `frac_zero_std` is logged.
"""

from __future__ import annotations

import torch

SCALES = ("group", "batch", "none")


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if group_size < 2:
        raise ValueError(f"group_size must be >= 2 for group statistics, got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)                               # (B, G)


def group_advantages(rewards: torch.Tensor, group_size: int, scale: str = "group",
                     eps: float = 1e-6) -> torch.Tensor:
    """Group-relative advantages (N,) from rewards (N,), rows of a group adjacent.

    scale: 'group' divides by each group's std (GRPO), 'batch' by the std of all rewards
    (a REINFORCE++-style batch normalisation), 'none' only centres (Dr. GRPO). std is the
    unbiased torch.std, as in TRL. eps: TRL uses 1e-4, RLSD and SDPG 1e-6.
    """
    if scale not in SCALES:
        raise ValueError(f"unknown advantage scale {scale!r}; choose from {SCALES}")
    r = _grouped(rewards.float(), group_size)                         # (B, G)
    centred = r - r.mean(dim=1, keepdim=True)                         # (B, G)
    if scale != "none":
        std = r.std(dim=1, keepdim=True) if scale == "group" else rewards.float().std()
        denom = std + eps
        # a zero-std group has centred == 0: keep A = 0 there even when eps = 0 (no 0/0)
        centred = torch.where(denom > 0, centred / torch.where(denom > 0, denom, 1.0), 0.0)
    return centred.reshape(-1)                                        # (N,)


def frac_zero_std(rewards: torch.Tensor, group_size: int) -> float:
    """Fraction of groups whose rewards are all equal (no learning signal)."""
    r = _grouped(rewards, group_size)                                 # (B, G)
    return (r.max(dim=1).values == r.min(dim=1).values).float().mean().item()
