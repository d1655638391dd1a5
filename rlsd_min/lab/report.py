"""REPORT.md and the figures of a verification folder, generated from its run folders only.

Each claim of the RLSD and SDPG papers (docs/rlsd.md, docs/sdpg.md, docs/leakage.md) is one
comparison over seeds (or two), judged by rlsd_min.lab.stats, so the verdict is as reproducible
as the numbers:

    reproduced    the 95 % bootstrap interval of the difference lies on the claimed side of 0
                  and Welch's test, Holm-corrected over the comparisons of the task, has p < 0.05
    contradicted  both, on the other side
    inconclusive  anything else; the report then says how many seeds would settle it

A claim about two methods compares their per-seed values (final accuracy, area under the
accuracy curve, entropy); a claim about one method's course compares per-seed differences
with 0 (OPSD: mean accuracy over the first quarter of the run minus the start, and minus the
last quarter). Sample efficiency (area under the curve, steps to a threshold) and the
sensitivity variants are compared with the same statistics, each table its own Holm family.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from . import stats
from .plots import plt, plot_seed_bands
from .results import finished_history, read_experiment, run_dir, seeds_of

LABELS = {"grpo": "GRPO", "opsd": "OPSD", "grpo_opsd": "GRPO+OPSD", "rlsd": "RLSD", "sdpg": "SDPG"}
STABILITY_KEYS = (("entropy", "entropy (nats/token)"), ("completion_len", "completion length (tokens)"),
                  ("teacher_kl", "teacher-student KL (sampled)"), ("frac_zero_std", "fraction of zero-std groups"),
                  ("grad_norm", "gradient norm"), ("reward_mean", "training reward"))


def load_runs(out: str, summary: dict) -> dict:
    """{task: {method: [history of each finished seed]}}: the runs the summary counts."""
    exp = read_experiment(out)
    runs = {}
    for task, methods in summary["table"].items():
        for m in methods:
            histories = [finished_history(run_dir(out, task, m, s), exp["configs"][f"{task}/{m}"]["steps"])
                         for s in seeds_of(exp, m) if f"{task}/{m}/seed{s}" not in summary.get("damaged", {})]
            runs.setdefault(task, {})[m] = [h for h in histories if h is not None]
    return runs


def make_figures(out: str, runs: dict, variants: dict | None = None) -> list[str]:
    """Accuracy with seed bands, stability panels, leakage probes, the OPSD loss over its floor
    (the methods), and one accuracy panel per method with its sensitivity variants."""
    paths, variants = [], variants or {}

    def save(fig, name):
        path = os.path.join(out, name)
        fig.savefig(path, bbox_inches="tight", dpi=90)
        plt.close(fig)
        paths.append(name)

    for task, by_label in runs.items():
        by_method = {m: h for m, h in by_label.items() if m not in variants}
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

        bases = list(dict.fromkeys(v["method"] for name, v in variants.items() if name in by_label))
        if bases:
            fig, axes = plt.subplots(1, len(bases), figsize=(5.2 * len(bases), 3.8), squeeze=False)
            for ax, base in zip(axes[0], bases):
                group = ["grpo", base] + [n for n, v in variants.items() if v["method"] == base]
                plot_seed_bands({LABELS.get(n, n): by_label[n] for n in group if n in by_label}, "eval_acc", ax,
                                ylabel="validation accuracy (sampled, T=1)")
                ax.set_title(f"{LABELS.get(base, base)} and its variants")
                ax.legend(fontsize=7)
            fig.suptitle(f"{task}: sensitivity, mean and min-max over seeds")
            fig.tight_layout()
            save(fig, f"sensitivity_{task}.png")
    return paths


def _get(row, key):
    cell = row.get(key)
    return cell if isinstance(cell, dict) and cell.get("n") else None


def _fmt(row, key, digits=3):
    cell = _get(row, key)
    return "-" if cell is None else f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}"


# --- claims: each one a comparison (or two) with an interval, a corrected test and a verdict ---

@dataclass
class Claim:
    """One claim of a paper on one task and the comparisons that decide it."""
    text: str
    task: str
    parts: list
    """[(what is compared, stats.Comparison or None when there are too few seeds)]"""
    verdict: str = "inconclusive"


def _values(row: dict, key: str) -> list | None:
    cell = row.get(key)
    return cell["values"] if isinstance(cell, dict) and len(cell.get("values", [])) >= 2 else None


def two_methods(t: dict, key: str, a: str, b: str, lower: bool = False):
    """(what, Comparison) of metric `key` of runs `a` against runs `b` (None: fewer than 2 seeds),
    or None when either method is absent."""
    if a not in t or b not in t or key not in t[a] or key not in t[b]:
        return None
    va, vb = _values(t[a], key), _values(t[b], key)
    what = f"{key}: {LABELS.get(a, a)} − {LABELS.get(b, b)}"
    return what, (stats.compare(va, vb, lower=lower) if va and vb else None)


def one_method(t: dict, m: str, key_a: str, key_b: str):
    """(what, Comparison) of the per-seed differences key_a - key_b of one method against 0 (a
    paired comparison: Welch with a sample of zeros is the one-sample t-test on n - 1 df)."""
    if m not in t or key_a not in t[m] or key_b not in t[m]:
        return None
    va, vb = _values(t[m], key_a), _values(t[m], key_b)
    what = f"{LABELS.get(m, m)} {key_a} − {key_b}"
    if not va or not vb or len(va) != len(vb):
        return what, None
    return what, stats.compare([x - y for x, y in zip(va, vb)], [0.0] * len(va))


def task_claims(task: str, t: dict) -> list[Claim]:
    """The papers' claims (docs/rlsd.md, docs/sdpg.md, docs/leakage.md) that this task's runs can test."""
    out = []

    def claim(text, *parts):
        parts = [p for p in parts if p is not None]
        if parts:
            out.append(Claim(f"{text} ({task})", task, parts))

    claim("OPSD rises early, then declines", one_method(t, "opsd", "early_acc", "start_acc"),
          one_method(t, "opsd", "early_acc", "late_acc"))
    claim("GRPO ends above OPSD", two_methods(t, "final_acc", "grpo", "opsd"))
    claim("RLSD ends above GRPO", two_methods(t, "final_acc", "rlsd", "grpo"))
    claim("RLSD learns faster than GRPO (area under the accuracy curve)", two_methods(t, "auc", "rlsd", "grpo"))
    claim("RLSD ends above OPSD", two_methods(t, "final_acc", "rlsd", "opsd"))
    claim("RLSD keeps higher entropy than GRPO", two_methods(t, "tail_entropy", "rlsd", "grpo"))
    claim("SDPG ends above GRPO", two_methods(t, "final_acc", "sdpg", "grpo"))
    claim("SDPG learns faster than GRPO (area under the accuracy curve)", two_methods(t, "auc", "sdpg", "grpo"))
    claim("SDPG ends above RLSD", two_methods(t, "final_acc", "sdpg", "rlsd"))
    claim("SDPG keeps higher entropy than RLSD", two_methods(t, "tail_entropy", "sdpg", "rlsd"))
    if "opsd" in t and _get(t["opsd"], "tail_distill_floor"):
        claim("OPSD's loss stays above its exact floor, E_r D(q_r, p) >= floor",
              one_method(t, "opsd", "tail_distill_loss", "tail_distill_floor"))
    if "opsd" in t and _get(t["opsd"], "probe_ref_match_train"):
        claim("OPSD learns question-to-reference shortcuts on training prompts",
              one_method(t, "opsd", "probe_ref_match_train", "probe_ref_match_heldout"))
    return out


def judge_claims(claims: list[Claim]) -> list[Claim]:
    """Holm over every comparison of the claims (one family), then each claim's verdict:
    reproduced when all its parts are, contradicted when any part is, else inconclusive."""
    stats.judge([c for claim in claims for _, c in claim.parts if c is not None])
    for claim in claims:
        verdicts = [c.verdict if c is not None else "inconclusive" for _, c in claim.parts]
        claim.verdict = ("reproduced" if all(v == "reproduced" for v in verdicts) else
                         "contradicted" if "contradicted" in verdicts else "inconclusive")
    return claims


def claims(summary: dict) -> list[Claim]:
    """Every task's claims, judged with Holm's correction over the comparisons of each task."""
    return [c for task, t in summary["table"].items() for c in judge_claims(task_claims(task, t))]


def _num(x: float, digits: int = 3) -> str:
    """A signed number to `digits` decimals, or in scientific notation when that would show 0."""
    return f"{x:+.{digits}f}" if abs(x) >= 10 ** -digits or x == 0 else f"{x:+.1e}"


def to_settle(c, digits: int = 3) -> str:
    """What would settle an inconclusive comparison: the seeds (per method) that would detect
    the observed difference with 80 % power at the same corrected level (the stds as observed)."""
    if c is None:
        return "at least 2 seeds"
    if c.verdict != "inconclusive":
        return "-"
    per = " per method" if c.sd_b > 0 else ""  # sd_b = 0: a one-method claim (differences against 0)
    n = stats.seeds_needed(c.diff, c.sd_a, c.sd_b, alpha=c.level)
    if n is None:
        return (f"not seeds: {_num(c.diff, digits)} is below what 1000 seeds{per} detect; the interval bounds it "
                f"to [{_num(c.ci_low, digits)}, {_num(c.ci_high, digits)}]")
    return f"~{n} seeds{per} would detect {_num(c.diff, digits)} (80 % power)"


def _cmp(c, digits=3) -> str:
    if c is None:
        return "- (fewer than 2 seeds)"
    return f"{_num(c.diff, digits)} [{_num(c.ci_low, digits)}, {_num(c.ci_high, digits)}]"


def _table(task: str, rows: dict, threshold: float) -> str:
    probe = ("probe_ref_match_train", "probe_ref_match_heldout") if task == "split" else \
            ("probe_disagree_train", "probe_disagree_heldout")
    head = (f"| run | final acc | best acc | AUC | steps to {threshold} (reached) | collapses | entropy | "
            f"teacher KL | train-heldout gap | {probe[0][6:]} | {probe[1][6:]} |")
    lines = [head, "|---" * 11 + "|"]
    for m, r in rows.items():
        steps = _fmt(r, "steps_to_threshold", 0)
        lines.append(f"| {LABELS.get(m, m)} | {_fmt(r, 'final_acc')} | {_fmt(r, 'best_acc')} | {_fmt(r, 'auc')} | "
                     f"{steps} ({r['reached']}/{r['seeds']}) | {r['collapsed']}/{r['seeds']} | {_fmt(r, 'tail_entropy')} | "
                     f"{_fmt(r, 'tail_teacher_kl')} | {_fmt(r, 'probe_gap')} | {_fmt(r, probe[0])} | {_fmt(r, probe[1])} |")
    return "\n".join(lines)


COMPARISON_HEAD = ["| claim | verdict | difference [95 % CI] | p (Holm) | P(better) | MDE (80 %) | what would settle it |",
                   "|---|---|---|---|---|---|---|"]


def _row(text: str, verdict: str, what: str, c) -> str:
    digits = 0 if "steps" in what else 3
    if c is None:
        return f"| {text} | {verdict} | {what}: {_cmp(c)} | - | - | - | {to_settle(c)} |"
    return (f"| {text} | {verdict} | {what}: {_cmp(c, digits)} | {c.p_holm:.3g} | {c.p_improve:.2f} | "
            f"{c.mde:.{digits}f} | {to_settle(c, digits)} |")


def claims_table(judged: list[Claim]) -> list[str]:
    """One line per comparison: the claim's verdict, and each part's own when it has several."""
    lines = list(COMPARISON_HEAD)
    for claim in judged:
        for i, (what, c) in enumerate(claim.parts):
            verdict = f"**{claim.verdict}**" if i == 0 else ""
            if len(claim.parts) > 1:
                verdict += f" (this part: {c.verdict if c else 'inconclusive'})"
            lines.append(_row(claim.text if i == 0 else "", verdict, what, c))
    return lines


def efficiency_rows(t: dict) -> list[tuple[str, tuple]]:
    """Each run label against GRPO: area under the accuracy curve (higher is better) and steps to
    the threshold (lower is better; a run that never reaches it counts at its last step)."""
    rows = []
    for label in t:
        if label == "grpo":
            continue
        for key, lower, text in (("auc", False, "more area under the curve than GRPO"),
                                 ("steps_to_threshold_or_end", True, "reaches the threshold before GRPO")):
            part = two_methods(t, key, label, "grpo", lower=lower)
            if part is not None:
                rows.append((f"{LABELS.get(label, label)} {text}", part))
    return rows


def sensitivity_rows(t: dict, variants: dict) -> list[tuple[str, tuple]]:
    """Each variant against its method at the defaults and against GRPO, on final accuracy and AUC."""
    rows = []
    for name, v in variants.items():
        if name not in t:
            continue
        sets = ", ".join(f"{k}={val}" for k, val in v["sets"].items())
        for base in (v["method"], "grpo"):
            for key in ("final_acc", "auc"):
                part = two_methods(t, key, name, base)
                if part is not None:
                    rows.append((f"{name} ({sets}) vs {LABELS.get(base, base)}", part))
    return rows


def judged_table(rows: list[tuple[str, tuple]]) -> list[str]:
    """A table of comparisons judged as one Holm family."""
    stats.judge([c for _, (_, c) in rows if c is not None])
    lines = list(COMPARISON_HEAD)
    lines += [_row(text, f"**{c.verdict if c else 'inconclusive'}**", what, c) for text, (what, c) in rows]
    return lines


def _clock(summary: dict) -> str:
    clock = summary.get("clock")
    if not clock:
        return ""
    hours = clock["elapsed_s"] / 3600
    return (f" On the clock: {clock['elapsed_s'] / 60:.1f} minutes from the first run's start to the last one's end "
            f"({summary['runs'] / hours:.1f} runs per hour), {summary['wall_s'] / clock['elapsed_s']:.2f} runs "
            f"training at a time on average, at most {clock['at_once']} (read from the run folders: "
            "`results.clock_span`).")


def write_report(out: str, summary: dict) -> str:
    """Figures and REPORT.md for a verification folder; returns the report's path."""
    figures = make_figures(out, load_runs(out, summary), summary.get("variants"))
    c = summary["collapse"]
    thresholds = summary["threshold"]
    command = (f"python -m rlsd_min verify --profile {summary['profile']} --seeds {summary['seeds']} "
               f"--tasks {','.join(summary['table'])}"
               + (f" --variants {','.join(summary['variants'])}" if summary.get("variants") else "")
               + (f" --variant-seeds {summary['variant_seeds']}" if "variant_seeds" in summary else ""))
    lines = [
        "# Verification of the papers' claims at small scale",
        "",
        f"Generated by `{command}` from the {summary['runs']} run folders under `runs/` "
        f"({summary['wall_s'] / 60:.1f} minutes of training, summed over runs). Every number in the run tables "
        "is mean ± std over seeds." + _clock(summary),
        "",
        "- **final / best acc**: held-out (validation) accuracy, sampled at T=1, at the last / best evaluation.",
        "- **AUC**: area under the held-out accuracy curve divided by the run's steps (its mean accuracy over "
        "training; trapezoids between evaluations): the papers claim faster learning, not only a higher end.",
        f"- **steps to threshold** ({', '.join(f'{t} {v}' for t, v in thresholds.items())}): first evaluated step at "
        "or above it, over the seeds that reached it.",
        f"- **collapses**: runs whose last {c['patience']} evaluations all lie more than {c['margin']} below "
        "their earlier best (`rlsd_min.lab.stability.collapsed`).",
        "- **entropy, teacher KL**: mean over the last 10 steps; teacher KL is the sampled estimate of "
        "KL(student || teacher) for methods with a teacher.",
        "- **probes** (`rlsd_min.leakage.leakage_probes`), at the last evaluation, on the first `probe_problems` "
        "training and held-out prompts: *ref_match* = fraction of correct split answers equal to the data's reference (chance 0.1); "
        "*disagree* = fraction of arith and mul7 answers that differ from what their own scratchpad computes.",
        "",
    ]
    if summary.get("missing"):
        lines += [f"Not finished, so left out: {', '.join(summary['missing'])}.", ""]
    for task, rows in summary["table"].items():
        lines += [f"## Task `{task}`", "", _table(task, rows, thresholds[task]), ""]
        lines += [f"![{name}]({name})" for name in figures if name.endswith(f"_{task}.png")] + [""]
    judged = claims(summary)
    counts = {v: sum(c.verdict == v for c in judged) for v in stats.VERDICTS}
    lines += [
        "## The papers' claims at this scale", "",
        "Each claim is a comparison over seeds (`rlsd_min/lab/stats.py`): the difference of means with a 95 % "
        "bootstrap interval (10,000 resamples, seed 0), Welch's t-test Holm-corrected over the comparisons of its "
        "task, and P(better), the chance that a random seed of the first beats one of the second. *reproduced*: "
        "the interval lies on the claimed side of 0 and the corrected p < 0.05; *contradicted*: both, on the other "
        "side; *inconclusive*: anything else. **MDE** is the smallest true difference this many seeds detect with "
        "80 % power at the corrected level (`stats.mde`: (t_{1-α/2k,ν} + t_{0.8,ν}) · se); **what would settle "
        "it** gives the seeds per method that would detect the observed difference, the stds as observed.",
        "",
        f"Verdicts: {counts['reproduced']} reproduced, {counts['contradicted']} contradicted, "
        f"{counts['inconclusive']} inconclusive.", "",
    ]
    lines += claims_table(judged) + [""]
    lines += ["## Sample efficiency against GRPO", "",
              "Area under the accuracy curve and steps to the threshold, each run label against GRPO; one Holm "
              "family per task. A run that never reaches the threshold counts at its last step (censored: its "
              "true value is later, so such a comparison understates a lead over it).", ""]
    for task, t in summary["table"].items():
        rows = efficiency_rows(t)
        if rows:
            lines += [f"### `{task}`", ""] + judged_table(rows) + [""]
    if summary.get("variants"):
        lines += ["## Sensitivity of each method's knobs", "",
                  "Each variant against its method at the defaults and against GRPO; one Holm family per task.", ""]
        for task, t in summary["table"].items():
            rows = sensitivity_rows(t, summary["variants"])
            if rows:
                lines += [f"### `{task}`", ""] + judged_table(rows) + [""]
    path = os.path.join(out, "REPORT.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
