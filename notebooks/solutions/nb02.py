"""Solutions of notebook 02: exercise 1 (group advantages), exercise 2 (token aggregation)."""

import torch


def my_group_advantages(rewards: torch.Tensor, G: int, scale: str = "group", eps: float = 1e-6) -> torch.Tensor:
    r = rewards.float().view(-1, G)                              # (B, G): one row per prompt
    centred = r - r.mean(dim=1, keepdim=True)                    # R_i - group mean
    if scale == "none":                                          # Dr. GRPO: centre only
        return centred.reshape(-1)
    std = r.std(dim=1, keepdim=True) if scale == "group" else rewards.float().std()   # unbiased
    # an all-equal group has centred == 0, so it gets 0 (std + eps > 0 for eps > 0)
    return (centred / (std + eps)).reshape(-1)


def my_aggregate(x: torch.Tensor, mask: torch.Tensor, mode: str, G: int) -> torch.Tensor:
    x = torch.where(mask.bool(), x, 0.0)          # not x * mask: nan * 0 is nan
    m = mask.to(x.dtype)
    if mode == "token-mean":                      # every token of the batch weighs the same
        return x.sum() / m.sum()
    if mode == "seq-mean":                        # mean per sequence, then over sequences
        return (x.sum(1) / m.sum(1)).mean()
    if mode == "group-token-mean":                # per group: sum / the group's tokens; mean over groups
        return (x.sum(1).view(-1, G).sum(1) / m.sum(1).view(-1, G).sum(1)).mean()
    raise ValueError(mode)
