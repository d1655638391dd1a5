"""Stability of a run over long training: the collapse rule and steps to a threshold.

The RLSD paper reports OPSD rising fast, then declining or oscillating late in training.
To count that instead of eyeballing it, a run *collapses* by one stated rule:

    its last `patience` held-out evaluations all lie more than `margin` below the best
    held-out accuracy it reached before them.

A dip that recovers is not a collapse; a run that never improved cannot collapse.
"""

from __future__ import annotations

COLLAPSE_MARGIN = 0.10
"""how far below its best a run must fall (absolute accuracy)"""
COLLAPSE_PATIENCE = 3
"""for how many consecutive final evaluations"""


def collapsed(accs: list[float], margin: float = COLLAPSE_MARGIN, patience: int = COLLAPSE_PATIENCE) -> bool:
    """True iff the last `patience` values of `accs` (held-out accuracy per evaluation, in
    order) are all < max(accs before them) - margin."""
    if patience < 1 or margin < 0:
        raise ValueError(f"need patience >= 1 and margin >= 0, got patience={patience}, margin={margin}")
    if len(accs) <= patience:
        return False
    best_before = max(accs[:-patience])
    return all(round(best_before - a, 9) > margin for a in accs[-patience:])  # round: 0.8 - 0.7 is 0.1


def steps_to_threshold(history: list[dict], threshold: float, key: str = "eval_acc") -> int | None:
    """The first step whose evaluation reaches `threshold`, or None if none does."""
    return next((row["step"] for row in history if row.get(key, -1.0) >= threshold), None)
