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


def _steps_and_values(history: list[dict], key: str):
    rows = [r for r in history if key in r]
    return [r["step"] for r in rows], [r[key] for r in rows]


def plot_seed_bands(runs: dict, key: str = "eval_acc", ax=None, smooth: int = 1, ylabel: str | None = None):
    """The mean over seeds of `key` against RL step, with a band from the lowest to the highest
    seed: runs = {label: [history of each seed]}. smooth > 1 takes a running mean over that
    many logged points first (for noisy per-step metrics)."""
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for label, histories in runs.items():
        curves = [_steps_and_values(h, key) for h in histories]
        curves = [c for c in curves if c[0]]
        if not curves:
            continue
        n = min(len(c[0]) for c in curves)
        steps = np.array(curves[0][0][:n])
        values = np.array([c[1][:n] for c in curves], dtype=float)                    # (seeds, n)
        window = min(smooth, n)
        if window > 1:
            kernel = np.ones(window) / window
            values = np.array([np.convolve(v, kernel, mode="valid") for v in values])
            steps = steps[window - 1:]
        line, = ax.plot(steps, values.mean(0), label=f"{label} (n={len(values)})")
        ax.fill_between(steps, values.min(0), values.max(0), color=line.get_color(), alpha=0.18, lw=0)
    ax.set_xlabel("RL step")
    ax.set_ylabel(ylabel or key)
    ax.grid(alpha=0.3)
    return ax
