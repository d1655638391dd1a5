"""The method metrics of the TRL trainers, each weighted by what it averages over.

rlsd_min's loss returns each metric as a mean over one micro-batch: over its tokens, its rows,
its groups, or the tokens the teacher scored. Over a step of K accumulated micro-batches on P
processes the logged value is sum_k w_k m_k / sum_k w_k, w_k the micro-batch's count of what
the metric averages over (`weights`), so it equals the metric of the whole batch, as the tiny
loop computes it on that batch; a micro-batch with nothing to average (w_k = 0: no scored
row, no signed token) contributes nothing.

    weights(batch, cfg)   {metric: w} of one micro-batch
    StepMeans             the running sums of a step, reduced over the processes at its end
"""

from __future__ import annotations

import torch


def weights(batch, cfg) -> dict:
    """What each method metric of rlsd_min's loss averages over, counted on this micro-batch.

    loss_pg, clip_frac, distill_loss, kl_ref   aggregate(., mask, loss_agg): tokens (token-mean),
                                               rows (seq-mean) or groups (group-token-mean)
    teacher_kl      the same aggregation over the rows the teacher scored (rlsd_min.objective)
    w_clip_frac     RLSD's tokens with A_i != 0 (rlsd_min.methods.rlsd)
    gate_frac, teacher_frac   rows;  entropy  tokens;  lam, beta  one (the same value in every micro-batch)
    """
    mask = batch.rollout.completion_mask.float()                                 # (N, T)
    N, G = mask.shape[0], batch.rollout.group_size

    def over(m: torch.Tensor) -> float:
        return {"token-mean": float(m.sum()), "seq-mean": float(N), "group-token-mean": float(N // G)}[cfg.loss_agg]

    scored = mask if batch.teacher_rows is None else mask * batch.teacher_rows[:, None]   # (N, T)
    signed = mask * (batch.advantages != 0)[:, None]                                   # (N, T)
    return {"loss_pg": over(mask), "clip_frac": over(mask), "distill_loss": over(mask), "kl_ref": over(mask),
            "teacher_kl": over(scored), "w_clip_frac": float(signed.sum()), "gate_frac": float(N), "teacher_frac": float(N),
            "entropy": float(mask.sum()), "lam": 1.0, "beta": 1.0}


class StepMeans:
    """sum w * m and sum w of each metric over one step's micro-batches."""

    def __init__(self):
        self.sums = {}

    def add(self, metrics: dict, w: dict) -> None:
        unknown = set(metrics) - set(w)
        if unknown:
            raise KeyError(f"no weight for the metrics {sorted(unknown)}: say what they average over in "
                           f"rlsd_min.integrations.trl_metrics.weights")
        for name, value in metrics.items():
            s = self.sums.setdefault(name, [0.0, 0.0])
            s[0] += w[name] * float(value)
            s[1] += w[name]

    def means(self, accelerator) -> dict:
        """The step's weighted means over every process (one all-reduce); resets the sums."""
        names = sorted(self.sums)
        local = torch.tensor([self.sums[n] for n in names], dtype=torch.float64, device=accelerator.device)  # (K, 2)
        total = accelerator.reduce(local, reduction="sum") if accelerator.num_processes > 1 else local    # (K, 2)
        self.sums = {}
        return {n: s / w if w > 0 else 0.0 for n, (s, w) in zip(names, total.tolist())}
