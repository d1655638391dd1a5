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
    teacher_logits: torch.Tensor | None = None   # (N, T, V), or (n, T, V): the n rows of teacher_rows alone,
                                                 #        when the method needs the full vocabulary
    teacher_rows: torch.Tensor | None = None     # (N,) bool: the rows the teacher scored (None = all);
                                                 #        elsewhere its log-probs are 0, its logits 0 (uniform),
                                                 #        and the loss has no teacher term
    metrics: dict = field(default_factory=dict)  # measured while collecting (teacher_frac, distill_floor)

    def teacher_logits_of(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The teacher's logits of the batch rows `rows` ((n,) long; None = all N): (n, T, V), 0
        (a uniform teacher) on a row it did not score. Reads either layout of teacher_logits:
        every row's, or the scored rows' alone (then fewer rows than the batch; the tiny loop
        keeps only those, so an SDPG batch holds no logits for its A_i <= 0 rows)."""
        logits, N = self.teacher_logits, self.rollout.completion_ids.shape[0]
        if logits.shape[0] == N:
            return logits if rows is None else logits[rows]
        rows = torch.arange(N, device=logits.device) if rows is None else rows
        slot = torch.where(self.teacher_rows, self.teacher_rows.cumsum(0) - 1, -1)[rows]   # (n,) row in logits
        out = logits.new_zeros(len(rows), *logits.shape[1:])                             # (n, T, V)
        out[slot >= 0] = logits[slot[slot >= 0]]
        return out
