"""REPORT.md and the figures of a verification folder, generated from its run folders only.

Each claim of the RLSD and SDPG papers (docs/rlsd.md, docs/sdpg.md, docs/leakage.md) is
judged by a stated rule on the summary, so the verdict is as reproducible as the numbers:

    a difference of means counts when it exceeds the larger of the two std over seeds
    (and 0.01); otherwise the claim is 'mixed' (within seed noise at this scale).
"""

from __future__ import annotations

import json
import os

from .plots import plt, plot_seed_bands
from .results import TAIL, finished_history, run_dir

LABELS = {"grpo": "GRPO", "opsd": "OPSD", "grpo_opsd": "GRPO+OPSD", "rlsd": "RLSD", "sdpg": "SDPG"}
STABILITY_KEYS = (("entropy", "entropy (nats/token)"), ("completion_len", "completion length (tokens)"),
                  ("teacher_kl", "teacher-student KL (sampled)"), ("frac_zero_std", "fraction of zero-std groups"),
                  ("grad_norm", "gradient norm"), ("reward_mean", "training reward"))


def load_runs(out: str, summary: dict) -> dict:
    """{task: {method: [history of each finished seed]}}: the runs the summary counts."""
    with open(os.path.join(out, "experiment.json")) as f:
        exp = json.load(f)
    runs = {}
    for task, methods in summary["table"].items():
        for m in methods:
            histories = [finished_history(run_dir(out, task, m, s), exp["configs"][f"{task}/{m}"]["steps"])
                         for s in exp["seeds"]]
            runs.setdefault(task, {})[m] = [h for h in histories if h is not None]
    return runs


def make_figures(out: str, runs: dict) -> list[str]:
    """Accuracy with seed bands, stability panels, leakage probes, the OPSD loss over its floor."""
    paths = []

    def save(fig, name):
        path = os.path.join(out, name)
        fig.savefig(path, bbox_inches="tight", dpi=90)
        plt.close(fig)
        paths.append(name)

    for task, by_method in runs.items():
        labelled = {LABELS.get(m, m): h for m, h in by_method.items()}
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        plot_seed_bands(labelled, "eval_acc", ax, ylabel="validation accuracy (sampled, T=1)")
        ax.set_title(f"{task}: held-out accuracy, mean and min-max over seeds")
        ax.legend(fontsize=8)
        save(fig, f"accuracy_{task}.png")

        fig, axes = plt.subplots(2, 3, figsize=(13, 6.4))
        for ax, (key, label) in zip(axes.flat, STABILITY_KEYS):
            plot_seed_bands(labelled, key, ax, smooth=10, ylabel=label)
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(f"{task}: stability over training (running mean of 10 steps, min-max over seeds)")
        fig.tight_layout()
        save(fig, f"stability_{task}.png")

        probe = "probe_ref_match" if task == "split" else "probe_disagree"
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
        for ax, suffix, title in zip(axes, ("train", "heldout"), ("training prompts", "held-out prompts")):
            plot_seed_bands(labelled, f"{probe}_{suffix}", ax, ylabel=probe.replace("probe_", ""))
            ax.set_title(title)
            if task == "split":
                ax.axhline(0.1, color="k", ls=":", lw=1, label="chance (1/10)")
        plot_seed_bands(labelled, "probe_gap", axes[2], ylabel="accuracy gap, train - held-out")
        axes[2].set_title("train / held-out gap")
        axes[0].legend(fontsize=7)
        fig.suptitle(f"{task}: leakage probes" + (" (fraction of correct answers equal to the training reference)"
                                                    if task == "split" else
                                                    " (fraction of answers that disagree with their own scratchpad)"))
        fig.tight_layout()
        save(fig, f"leakage_{task}.png")

        if "opsd" in by_method and any("distill_floor" in r for h in by_method["opsd"] for r in h):
            fig, ax = plt.subplots(figsize=(6.4, 3.8))
            plot_seed_bands({"OPSD loss (reverse KL)": by_method["opsd"]}, "distill_loss", ax, smooth=10)
            plot_seed_bands({"its exact floor": by_method["opsd"]}, "distill_floor", ax, smooth=10,
                            ylabel="nats per token")
            ax.set_title(f"{task}: OPSD distillation loss over its floor (running mean of 10 steps)")
            ax.legend(fontsize=8)
            save(fig, f"floor_{task}.png")
    return paths


def _get(row, key):
    cell = row.get(key)
    return cell if isinstance(cell, dict) and cell.get("n") else None


def _fmt(row, key, digits=3):
    cell = _get(row, key)
    return "-" if cell is None else f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"


def compare(table: dict, key: str, a: str, b: str) -> tuple[str, float | None]:
    """'higher', 'lower' or 'mixed' for method a vs b on `key` (the module's rule), and a - b."""
    ca, cb = _get(table.get(a, {}), key), _get(table.get(b, {}), key)
    if ca is None or cb is None:
        return "missing", None
    diff = ca["mean"] - cb["mean"]
    noise = max(ca["std"], cb["std"], 0.01)
    return ("higher" if diff > noise else "lower" if diff < -noise else "mixed"), diff


def claims(summary: dict) -> list[dict]:
    """Each paper claim with a verdict (reproduced / not reproduced / mixed) and its evidence."""
    out = []

    def claim(text, verdict, evidence):
        out.append({"claim": text, "verdict": verdict, "evidence": evidence})

    def vs(task, key, a, b, text, want="higher"):
        word, diff = compare(summary["table"].get(task, {}), key, a, b)
        if word == "missing":
            return
        verdict = "reproduced" if word == want else "mixed" if word == "mixed" else "not reproduced"
        t = summary["table"][task]
        claim(f"{text} ({task})", verdict, f"{key}: {LABELS[a]} {_fmt(t[a], key)} vs {LABELS[b]} "
                                           f"{_fmt(t[b], key)} (difference {diff:+.3f})")

    for task, t in summary["table"].items():
        if "opsd" in t:
            o = t["opsd"]
            rise = o["best_acc"]["mean"] - o["start_acc"]["mean"]
            drop = o["best_acc"]["mean"] - o["final_acc"]["mean"]
            rose = rise > max(o["best_acc"]["std"], 0.02)
            fell = o["collapsed"] > 0 or drop > max(o["final_acc"]["std"], 0.05)
            verdict = "reproduced" if rose and fell else "not reproduced" if not (rose or fell) else "mixed"
            claim(f"OPSD rises early, then declines ({task})", verdict,
                  f"OPSD start {_fmt(o, 'start_acc')}, best {_fmt(o, 'best_acc')} (rise {rise:+.3f}), final "
                  f"{_fmt(o, 'final_acc')} (drop {drop:.3f}); {o['collapsed']}/{o['seeds']} seeds collapse by the stated rule")
        vs(task, "final_acc", "grpo", "opsd", "GRPO ends above OPSD")
        vs(task, "final_acc", "rlsd", "grpo", "RLSD ends above GRPO")
        vs(task, "final_acc", "rlsd", "opsd", "RLSD ends above OPSD")
        vs(task, "tail_entropy", "rlsd", "grpo", "RLSD keeps higher entropy than GRPO")
        vs(task, "final_acc", "sdpg", "grpo", "SDPG ends above GRPO")
        vs(task, "final_acc", "sdpg", "rlsd", "SDPG ends above RLSD")
        vs(task, "tail_entropy", "sdpg", "rlsd", "SDPG keeps higher entropy than RLSD")
        if "opsd" in t and _get(t["opsd"], "tail_distill_floor"):
            o = t["opsd"]
            above = o["tail_distill_loss"]["mean"] - o["tail_distill_floor"]["mean"]
            claim(f"OPSD's loss stays above its exact floor, E_r D(q_r, p) >= floor ({task})",
                  "reproduced" if above > -0.01 else "not reproduced",
                  f"last {TAIL} steps: loss {_fmt(o, 'tail_distill_loss')} vs floor {_fmt(o, 'tail_distill_floor')} nats")
        if "opsd" in t and _get(t["opsd"], "probe_ref_match_train"):
            o = t["opsd"]
            tr, ho = o["probe_ref_match_train"]["mean"], o["probe_ref_match_heldout"]["mean"]
            noise = max(o["probe_ref_match_train"]["std"], o["probe_ref_match_heldout"]["std"], 0.02)
            claim(f"OPSD learns question-to-reference shortcuts on training prompts ({task})",
                  "reproduced" if tr - ho > noise else "mixed" if tr - ho > 0 else "not reproduced",
                  f"correct answers equal to the reference: training prompts {_fmt(o, 'probe_ref_match_train')}, "
                  f"held-out {_fmt(o, 'probe_ref_match_heldout')} (chance 0.1)")
    return out


def _table(task: str, rows: dict, threshold: float) -> str:
    probe = ("probe_ref_match_train", "probe_ref_match_heldout") if task == "split" else \
            ("probe_disagree_train", "probe_disagree_heldout")
    head = (f"| method | final acc | best acc | steps to {threshold} (reached) | collapses | entropy | "
            f"teacher KL | train-heldout gap | {probe[0][6:]} | {probe[1][6:]} |")
    lines = [head, "|---" * 10 + "|"]
    for m, r in rows.items():
        steps = _fmt(r, "steps_to_threshold", 0)
        lines.append(f"| {LABELS.get(m, m)} | {_fmt(r, 'final_acc')} | {_fmt(r, 'best_acc')} | {steps} "
                     f"({r['reached']}/{r['seeds']}) | {r['collapsed']}/{r['seeds']} | {_fmt(r, 'tail_entropy')} | "
                     f"{_fmt(r, 'tail_teacher_kl')} | {_fmt(r, 'probe_gap')} | {_fmt(r, probe[0])} | {_fmt(r, probe[1])} |")
    return "\n".join(lines)


def write_report(out: str, summary: dict) -> str:
    """Figures and REPORT.md for a verification folder; returns the report's path."""
    figures = make_figures(out, load_runs(out, summary))
    c = summary["collapse"]
    lines = [
        "# Verification of the papers' claims at small scale",
        "",
        f"Generated by `python -m rlsd_min verify --profile {summary['profile']} --seeds {summary['seeds']}` from "
        f"the {summary['runs']} run folders under `runs/` ({summary['wall_s'] / 60:.1f} minutes of training, "
        "summed over runs). Every number is mean ± std over seeds.",
        "",
        "- **final / best acc**: held-out (validation) accuracy, sampled at T=1, at the last / best evaluation.",
        f"- **steps to {summary['threshold']}**: first evaluated step at or above it, over the seeds that reached it.",
        f"- **collapses**: runs whose last {c['patience']} evaluations all lie more than {c['margin']} below "
        "their earlier best (`rlsd_min.stability.collapsed`).",
        "- **entropy, teacher KL**: mean over the last 10 steps; teacher KL is the sampled estimate of "
        "KL(student || teacher) for methods with a teacher.",
        "- **probes** (`rlsd_min.leakage.leakage_probes`), at the last evaluation, on the first `probe_problems` "
        "training and held-out prompts: *ref_match* = fraction of correct split answers equal to the data's reference (chance 0.1); "
        "*disagree* = fraction of arith answers that differ from what their own scratchpad computes.",
        "",
    ]
    for task, rows in summary["table"].items():
        lines += [f"## Task `{task}`", "", _table(task, rows, summary["threshold"]), ""]
        lines += [f"![{name}]({name})" for name in figures if name.endswith(f"_{task}.png")] + [""]
    lines += ["## The papers' claims at this scale", "",
              "Judged by the rule in `rlsd_min/report.py`: a difference counts when it exceeds the larger std "
              "over seeds (and 0.01), else it is *mixed*.", "",
              "| claim | verdict | evidence |", "|---|---|---|"]
    lines += [f"| {c['claim']} | **{c['verdict']}** | {c['evidence']} |" for c in claims(summary)]
    path = os.path.join(out, "REPORT.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
