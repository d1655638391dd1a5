"""Figures drawn from run folders (metrics.jsonl), never from numbers typed in."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg") if not matplotlib.get_backend().lower().startswith(("module://", "nbagg", "widget")) else None
import matplotlib.pyplot as plt  # noqa: E402


def plot_eval_curves(histories: dict, title: str = "held-out accuracy", ax=None):
    """Held-out sampled accuracy against RL step, one line per run: {label: history}."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for label, history in histories.items():
        rows = [r for r in history if "eval_acc" in r]
        ax.plot([r["step"] for r in rows], [r["eval_acc"] for r in rows], marker="o", ms=3, label=label)
    ax.set_xlabel("RL step")
    ax.set_ylabel("validation accuracy (sampled, T=1)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return ax
