"""The two records the step hands around: a `Rollout` (sampled completions, rlsd_min.sampling)
and a `StepBatch` (everything one RL step computes once, rlsd_min.step), which every loss of
rlsd_min.methods reads. They sit below the losses and the step, so both import them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Rollout:
    """G completions for each of B prompts, N = B * G rows (group members adjacent)."""
    prompt_ids: torch.Tensor       # (N, P) left-padded, starts with <bos>
    prompt_mask: torch.Tensor      # (N, P) 1 on real prompt tokens
    completion_ids: torch.Tensor   # (N, T) right-padded with <pad> after the first <eos>
    completion_mask: torch.Tensor  # (N, T) 1 up to and including the first <eos>
    texts: list                    # N decoded completions, special tokens removed
    group_size: int
    entropy: torch.Tensor | None = None  # (N, T) entropy of the distribution each token was drawn
                                         #        from (the sampler's; None for given completions)


@dataclass
class StepBatch:
    """Everything one RL step computes once and every update of that step reuses."""
    rollout: Rollout
    rewards: torch.Tensor                        # (N,) verifier rewards R_i
    advantages: torch.Tensor                     # (N,) group-relative A_i
    old_logp: torch.Tensor | None = None         # (N, T) log-probs of the sampling policy (detached),
                                                 #        filled by the first update's own forward
    ref_logp: torch.Tensor | None = None         # (N, T) log pi_ref, when kl_coef > 0
    teacher_logp: torch.Tensor | None = None     # (N, T) log q_t(y_t), detached
    teacher_logits: torch.Tensor | None = None   # (N, T, V), when the method needs the full vocabulary
    teacher_rows: torch.Tensor | None = None     # (N,) bool: the rows the teacher scored (None = all);
                                                 #        elsewhere its log-probs are 0, its logits 0 (uniform),
                                                 #        and the loss has no teacher term
    metrics: dict = field(default_factory=dict)  # measured while collecting (teacher_frac, distill_floor)
