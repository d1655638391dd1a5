"""REPORT.md and the figures of a verification folder, generated from its run folders only.

Each claim (the RLSD, SDPG and OPSD papers' in docs/rlsd.md, docs/sdpg.md, docs/leakage.md; the
claims that isolate the teacher's term; the positive controls; the teacher contexts) is one
comparison of two run labels over the seeds both have, judged by rlsd_min.lab.stats, so the
verdict is as reproducible as the numbers:

    reproduced    the paired 95 % bootstrap interval of the per-seed difference lies on the
                  claimed side of 0 and the paired t-test, Holm-corrected over the task's claims
                  (one family, each claim once), has p < 0.05
    contradicted  both, on the other side
    inconclusive  anything else; the report then says how many paired seeds would settle it

The unpaired analysis (Welch's test, an interval resampling each label on its own) stands beside
each claim. A claim about one label's course compares two of its metrics seed by seed (OPSD:
the first quarter's mean accuracy against the last quarter's). Sample efficiency and the
sensitivity variants are exploratory tables: paired intervals and uncorrected p-values, no
verdict, and no row that repeats a claim of the family.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from types import SimpleNamespace

from ..methods import METHODS
from . import stats
from .design import CONTEXT_ARMS, VARIANTS
from .plots import plt, plot_seed_bands
from .results import finished_history, read_experiment, run_dir, seeds_of

LABELS = {name: m.label for name, m in METHODS.items()}
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
    """mean ± std over seeds; '-' where no seed has a value, (n/seeds) where some lack one."""
    cell = _get(row, key)
    if cell is None:
        return "-"
    some = f" ({cell['n']}/{row['seeds']})" if cell["n"] < row["seeds"] else ""
    return f"{cell['mean']:.{digits}f} ± {cell['std']:.{digits}f}{some}"


def teacher_kl_basis(settings: dict) -> str:
    """The rows, context and aggregation teacher_kl is computed on for a run's settings
    (rlsd_min.objective: the sampled-token KL(student || teacher) over the rows the method's
    teacher scores, Method.teacher_rows, asked here of advantages -1, 0, +1; with the sibling
    context, those of them whose group has another success)."""
    import torch

    if settings["teacher_context"] is None:
        return ""
    rows = METHODS[settings["method"]].teacher_rows(torch.tensor([-1.0, 0.0, 1.0]), SimpleNamespace(**settings))
    scored = "all rows" if rows is None else {(True, False, True): "rows A≠0", (False, False, True): "rows A>0"}.get(
        tuple(rows.tolist()), f"rows {rows.tolist()} of A = -1, 0, 1")
    if settings["teacher_context"] == "sibling":  # a row whose group has no other success has no teacher
        scored += " with a sibling"
    return f"{scored}, {settings['teacher_context']}, {settings['loss_agg']}"


# --- claims: each one a paired comparison with an interval, a corrected test and a verdict ---

@dataclass
class Claim:
    """One claim on one task and the comparison that decides it."""
    text: str
    task: str
    parts: list
    """[(what is compared, stats.Comparison or None when fewer than 2 seeds pair)]: one part"""
    verdict: str = "inconclusive"


def _values(row: dict, key: str) -> dict | None:
    """{seed: value} of a summary cell, or None with fewer than 2 seeds."""
    cell = row.get(key)
    if not isinstance(cell, dict) or len(cell.get("values", [])) < 2:
        return None
    return dict(zip(cell["seeds"], cell["values"]))


def _label(name: str) -> str:
    return LABELS.get(name, name)


def _compare(va, vb, lower=False):
    """The comparison, or None when fewer than 2 seeds pair."""
    if not va or not vb or len(set(va) & set(vb)) < 2:
        return None
    return stats.compare(va, vb, lower=lower)


def two_methods(t: dict, key: str, a: str, b: str, lower: bool = False):
    """(what, Comparison) of metric `key` of label `a` against label `b`, paired over their
    shared seeds (None: fewer than 2), or None when either label is absent."""
    if a not in t or b not in t or key not in t[a] or key not in t[b]:
        return None
    return f"{key}: {_label(a)} − {_label(b)}", _compare(_values(t[a], key), _values(t[b], key), lower)


def one_method(t: dict, m: str, key_a: str, key_b: str):
    """(what, Comparison) of metric key_a against key_b of one label, paired seed by seed."""
    if m not in t or key_a not in t[m] or key_b not in t[m]:
        return None
    return f"{_label(m)} {key_a} − {key_b}", _compare(_values(t[m], key_a), _values(t[m], key_b))


def _setting(summary_settings: dict, task: str, label: str) -> dict:
    return summary_settings.get(f"{task}/{label}", {})


def task_claims(task: str, t: dict, settings: dict | None = None) -> list[Claim]:
    """The claims this task's runs can test, each once: the papers' (docs/rlsd.md, docs/sdpg.md,
    docs/leakage.md), the teacher's term off, the positive controls and the teacher contexts.
    `settings` is the summary's {task/label: settings} (names OPSD's teacher mode and steps)."""
    out, settings = [], settings or {}

    def claim(text, part):
        if part is not None:
            out.append(Claim(f"{text} ({task})", task, [part]))

    claim("OPSD rises early: above GRPO over the first quarter, at the same steps", two_methods(t, "early_acc", "opsd", "grpo"))
    for label in t:
        s = _setting(settings, task, label)
        if s.get("method") == "opsd":
            claim(f"OPSD declines late ({_label(label)}: teacher {s['teacher_mode']}, {s['steps']} steps): first "
                  "quarter above the last", one_method(t, label, "early_acc", "final_acc"))
    claim("GRPO ends above OPSD", two_methods(t, "final_acc", "grpo", "opsd"))
    claim("RLSD ends above GRPO (= RLSD's teacher term helps: RLSD with λ = 0 is GRPO)",
          two_methods(t, "final_acc", "rlsd", "grpo"))
    claim("RLSD learns faster than GRPO (area under the accuracy curve)", two_methods(t, "auc", "rlsd", "grpo"))
    claim("RLSD ends above OPSD", two_methods(t, "final_acc", "rlsd", "opsd"))
    claim("RLSD keeps higher entropy than GRPO", two_methods(t, "tail_entropy", "rlsd", "grpo"))
    claim("SDPG ends above GRPO", two_methods(t, "final_acc", "sdpg", "grpo"))
    claim("SDPG learns faster than GRPO (area under the accuracy curve)", two_methods(t, "auc", "sdpg", "grpo"))
    claim("SDPG ends above RLSD", two_methods(t, "final_acc", "sdpg", "rlsd"))
    claim("SDPG keeps higher entropy than RLSD", two_methods(t, "tail_entropy", "sdpg", "rlsd"))
    claim("SDPG's teacher term helps: SDPG ends above SDPG with distill_coef = 0",
          two_methods(t, "final_acc", "sdpg", "sdpg_nodistill"))
    claim("GRPO+OPSD's teacher term helps: GRPO+OPSD ends above GRPO", two_methods(t, "final_acc", "grpo_opsd", "grpo"))
    claim("Positive control: RLSD with the solution as context ends above GRPO",
          two_methods(t, "final_acc", "rlsd_solution", "grpo"))
    claim("Positive control: RLSD with the solution and λ held at 0.5 ends above GRPO",
          two_methods(t, "final_acc", "rlsd_solution_lamconst", "grpo"))
    claim("The solution teacher moves RLSD more than the answer teacher",
          two_methods(t, "final_acc", "rlsd_solution", "rlsd"))
    claim("SDPG's answer-only teacher term helps: SDPG (answer) ends above SDPG with distill_coef = 0",
          two_methods(t, "final_acc", "sdpg_answer", "sdpg_nodistill"))
    claim("The solution teacher moves SDPG more than the answer teacher", two_methods(t, "final_acc", "sdpg", "sdpg_answer"))
    for name, (m, sets) in VARIANTS.items():  # the teacher contexts of the 'privilege or context' question
        context = sets.get("teacher_context")
        if context in CONTEXT_ARMS:
            default = METHODS[m].defaults["teacher_context"]
            claim(f"{_label(m)}'s gain needs the problem's own reference: its {default} context ends above "
                  f"another problem's worked example ({context})" if context.startswith("other") else
                  f"{_label(m)}: its {default} context serves better than a sibling's success (a sibling "
                  f"serving as well shows as an interval around 0)", two_methods(t, "final_acc", m, name))
            claim(f"{_label(m)} with the {context} context ends above GRPO (its teacher term off)",
                  two_methods(t, "final_acc", name, "grpo"))
    if "opsd" in t and _get(t["opsd"], "tail_distill_floor"):
        claim("OPSD's loss stays above its exact floor, E_r D(q_r, p) >= floor",
              one_method(t, "opsd", "tail_distill_loss", "tail_distill_floor"))
    if "opsd" in t and _get(t["opsd"], "probe_ref_match_train"):
        claim("OPSD learns question-to-reference shortcuts on training prompts",
              one_method(t, "opsd", "probe_ref_match_train", "probe_ref_match_heldout"))
    return out


def judge_claims(claims: list[Claim]) -> list[Claim]:
    """Holm over the claims of one task (one family, each claim once), then each claim's verdict."""
    stats.judge([c for claim in claims for _, c in claim.parts if c is not None])
    for claim in claims:
        verdicts = [c.verdict if c is not None else "inconclusive" for _, c in claim.parts]
        claim.verdict = ("reproduced" if all(v == "reproduced" for v in verdicts) else
                         "contradicted" if "contradicted" in verdicts else "inconclusive")
    return claims


def claims(summary: dict) -> list[Claim]:
    """Every task's claims, judged with Holm's correction over the claims of each task."""
    return [c for task, t in summary["table"].items()
            for c in judge_claims(task_claims(task, t, summary.get("settings")))]


def _num(x: float, digits: int = 3) -> str:
    """A signed number to `digits` decimals, or in scientific notation when that would show 0."""
    return f"{x:+.{digits}f}" if abs(x) >= 10 ** -digits or x == 0 else f"{x:+.1e}"


def to_settle(c, digits: int = 3) -> str:
    """What would settle an inconclusive comparison: the paired seeds that would detect the
    observed difference with 80 % power at the same corrected level (sd of the differences as
    observed), and the seeds per label the unpaired test would need."""
    if c is None:
        return "at least 2 seeds"
    if c.verdict != "inconclusive":
        return "-"
    if c.seeds_needed is None:
        return (f"not seeds: {_num(c.diff, digits)} is below what 1000 paired seeds detect; the interval bounds it "
                f"to [{_num(c.ci_low, digits)}, {_num(c.ci_high, digits)}]")
    unpaired = f"~{c.u_seeds_needed}" if c.u_seeds_needed is not None else "> 1000"
    return f"~{c.seeds_needed} paired seeds (unpaired: {unpaired} per label)"


def _cmp(c, digits=3) -> str:
    if c is None:
        return "- (fewer than 2 seeds)"
    return f"{_num(c.diff, digits)} [{_num(c.ci_low, digits)}, {_num(c.ci_high, digits)}]"


def _table(task: str, rows: dict, threshold: float, settings: dict) -> str:
    probe = ("probe_ref_match_train", "probe_ref_match_heldout") if task == "split" else \
            ("probe_disagree_train", "probe_disagree_heldout")
    head = (f"| run | final acc (last quarter) | last eval | best acc | AUC | steps to {threshold} (reached) | "
            f"collapses | entropy | teacher KL | its basis | train-heldout gap | {probe[0][6:]} | {probe[1][6:]} |")
    lines = [head, "|---" * 13 + "|"]
    for m, r in rows.items():
        cell = _get(r, "steps_to_threshold")  # over the seeds that reached it; (reached/seeds) counts them
        steps = "-" if cell is None else f"{cell['mean']:.0f} ± {cell['std']:.0f}"
        basis = teacher_kl_basis(settings[f"{task}/{m}"]) if f"{task}/{m}" in settings else ""
        lines.append(f"| {_label(m)} | {_fmt(r, 'final_acc')} | {_fmt(r, 'last_acc')} | {_fmt(r, 'best_acc')} | "
                     f"{_fmt(r, 'auc')} | {steps} ({r['reached']}/{r['seeds']}) | {r['collapsed']}/{r['seeds']} | "
                     f"{_fmt(r, 'tail_entropy')} | {_fmt(r, 'tail_teacher_kl')} | {basis} | {_fmt(r, 'probe_gap')} | "
                     f"{_fmt(r, probe[0])} | {_fmt(r, probe[1])} |")
    return "\n".join(lines)


COMPARISON_HEAD = ["| claim | verdict | paired: difference [95 % CI] | n | p (t, Holm) | p (sign-flip, Holm) | "
                   "seeds better | paired MDE | unpaired: difference [95 % CI] | p (Welch, Holm) | unpaired MDE | "
                   "what would settle it |",
                   "|---" * 12 + "|"]


def _digits(what: str) -> int:
    """Decimals of a comparison's numbers: 0 for steps to the threshold (whole steps), else 3. Read
    from the metric's name, never a run label's (`opsd_steps400`'s accuracies keep 3)."""
    return 0 if "steps_to_threshold" in what else 3


def _row(text: str, verdict: str, what: str, c) -> str:
    digits = _digits(what)
    if c is None:
        return f"| {text} | {verdict} | {what}: {_cmp(c)} | - | - | - | - | - | - | - | - | {to_settle(c)} |"
    unpaired = f"{_num(c.u_diff, digits)} [{_num(c.u_ci_low, digits)}, {_num(c.u_ci_high, digits)}]"
    return (f"| {text} | {verdict} | {what}: {_cmp(c, digits)} | {c.n} | {c.p_holm:.3g} | {c.p_flip_holm:.3g} | "
            f"{c.p_improve:.2f} | {c.mde:.{digits}f} | {unpaired} | {c.u_p_holm:.3g} | {c.u_mde:.{digits}f} | "
            f"{to_settle(c, digits)} |")


def claims_table(judged: list[Claim]) -> list[str]:
    """One line per claim (each has one comparison)."""
    lines = list(COMPARISON_HEAD)
    for claim in judged:
        for i, (what, c) in enumerate(claim.parts):
            lines.append(_row(claim.text if i == 0 else "", f"**{claim.verdict}**" if i == 0 else "", what, c))
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
                rows.append((f"{_label(label)} {text}", part))
    return rows


def sensitivity_rows(t: dict, variants: dict) -> list[tuple[str, tuple]]:
    """Each variant against its method at the defaults and against GRPO, on final accuracy and AUC."""
    rows = []
    for name, v in variants.items():
        if name not in t:
            continue
        sets = ", ".join(f"{k}={val}" for k, val in v["sets"].items())
        for base in dict.fromkeys((v["method"], "grpo")):
            for key in ("final_acc", "auc"):
                part = two_methods(t, key, name, base)
                if part is not None:
                    rows.append((f"{name} ({sets}) vs {_label(base)}", part))
    return rows


EXPLORATORY_HEAD = ["| comparison | paired: difference [95 % CI] | n | p (t, uncorrected) | seeds better | "
                    "paired MDE at 0.05 | unpaired: difference [95 % CI] |", "|---" * 7 + "|"]


def judged_table(rows: list[tuple[str, tuple]], family: list[Claim] = ()) -> list[str]:
    """An exploratory table: each comparison on its own (uncorrected p, MDE at 0.05, no verdict),
    leaving out the comparisons that are claims of `family` (tested there, once)."""
    tested = {what for claim in family for what, _ in claim.parts}
    lines = list(EXPLORATORY_HEAD)
    for text, (what, c) in rows:
        if what in tested:
            continue
        digits = _digits(what)
        if c is None:
            lines.append(f"| {text} | {what}: {_cmp(c)} | - | - | - | - | - |")
            continue
        lines.append(f"| {text} | {what}: {_cmp(c, digits)} | {c.n} | {c.p:.3g} | {c.p_improve:.2f} | "
                     f"{c.mde:.{digits}f} | {_num(c.u_diff, digits)} [{_num(c.u_ci_low, digits)}, "
                     f"{_num(c.u_ci_high, digits)}] |")
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


def _generated_by(summary: dict) -> str:
    """The commands the runs' provenance.json records (`results.provenance_commands`)."""
    commands = summary.get("commands") or []
    if not commands:
        return "Generated from"
    return ("Generated by " + " and ".join(f"`{c}`" for c in commands)
            + " (the command line the runs' provenance.json records; `__main__.py` is `python -m`), from")


def _evaluation(summary: dict) -> str:
    """What one evaluation samples, from the runs' settings: 'S completion(s) of each of P
    validation problems', per label where they differ."""
    kinds = {}
    for key, s in summary.get("settings", {}).items():
        if "eval_samples" in s:
            kinds.setdefault((s["eval_samples"], s["eval_problems"]), []).append(key)
    parts = [f"{n} sampled completion{'s' if n > 1 else ''} of each of {p} validation problems" for n, p in kinds]
    if len(kinds) > 1:
        parts = [f"{part} for {', '.join(keys)}" for part, keys in zip(parts, kinds.values())]
    return "; ".join(parts) or "the evaluation's settings are not recorded in this summary"


def write_report(out: str, summary: dict) -> str:
    """Figures and REPORT.md for a verification folder; returns the report's path."""
    figures = make_figures(out, load_runs(out, summary), summary.get("variants"))
    c = summary["collapse"]
    thresholds = summary["threshold"]
    lines = [
        "# Verification of the papers' claims at small scale",
        "",
        f"{_generated_by(summary)} the {summary['runs']} run folders under `runs/` "
        f"({summary['wall_s'] / 60:.1f} minutes of training, summed over runs). Every number in the run tables "
        "is mean ± std over seeds." + _clock(summary),
        "",
        f"- **final acc**, the endpoint of every accuracy claim: {summary['endpoint']} (`results.final_window`), "
        f"held-out (validation) accuracy sampled at T=1 ({_evaluation(summary)}); robust to one evaluation's "
        "noise. **last eval** is the last evaluation alone, **best acc** the best one.",
        "- **AUC**: area under the held-out accuracy curve divided by the run's steps (its mean accuracy over "
        "training; trapezoids between evaluations): the papers claim faster learning, not only a higher end.",
        f"- **steps to threshold** ({', '.join(f'{t} {v}' for t, v in thresholds.items())}): first evaluated step at "
        "or above it, over the seeds that reached it.",
        f"- **collapses**: runs whose last {c['patience']} evaluations all lie more than {c['margin']} below "
        "their earlier best (`rlsd_min.lab.stability.collapsed`).",
        "- **entropy, teacher KL**: mean over the last 10 steps; teacher KL is the sampled-token estimate of "
        "KL(student || teacher) on the rows, context and token aggregation in **its basis** (the rows the "
        "method's teacher scores), so it compares runs of one basis only; on rows chosen by the advantage it "
        "can be negative.",
        "- **probes** (`rlsd_min.leakage.leakage_probes`), at the last evaluation, on the first `probe_problems` "
        "training and held-out prompts: *ref_match* = fraction of correct split answers equal to the data's reference (chance 0.1); "
        "*disagree* = fraction of arith and mul7 answers that differ from what their own scratchpad computes. "
        "'-' where no seed has a value: a fraction with nothing to count (`results.missing_probes`); (k/n) "
        "where k of n seeds have one.",
        "",
    ]
    if summary.get("missing"):
        n = len(summary["missing"])
        lines += [f"**An interim report**: {n} of the plan's {summary['runs'] + n} runs are not finished, so "
                  f"left out (each claim pairs the seeds both its labels have): {', '.join(summary['missing'])}.", ""]
    for task, rows in summary["table"].items():
        lines += [f"## Task `{task}`", "", _table(task, rows, thresholds[task], summary.get("settings", {})), ""]
        lines += [f"![{name}]({name})" for name in figures if name.endswith(f"_{task}.png")] + [""]
    judged = claims(summary)
    counts = {v: sum(c.verdict == v for c in judged) for v in stats.VERDICTS}
    lines += [
        "## The claims at this scale", "",
        "Each claim is one comparison of two run labels over the seeds both have (`rlsd_min/lab/stats.py`): for "
        "seed k every label shares the warm start, the prompt order and the evaluation's random stream, so the "
        "analysis is paired. **paired**: the mean per-seed difference with a 95 % bootstrap interval resampling "
        "seeds (10,000 resamples, seed 0), the paired t-test and the exact sign-flip test (all 2^n sign patterns), "
        "both Holm-corrected over the claims of the task (one family, each claim once); *seeds better*: the "
        "fraction of seeds on which the first beats the second. *reproduced*: the paired interval lies on the "
        "claimed side of 0 and the t-test's corrected p < 0.05; *contradicted*: both, on the other side; "
        "*inconclusive*: anything else. **paired MDE**: the smallest true difference n paired seeds detect with "
        "80 % power at the family's strictest level α/k (`stats.paired_mde`: (t_{1-α/2k,n-1} + t_{0.8,n-1}) · "
        "s_d/√n); **what would settle it**: the paired seeds whose MDE reaches the observed difference, s_d as "
        "observed (`stats.paired_seeds_needed`), and the seeds per label the unpaired test would need. "
        "**unpaired**, beside: Welch's test and an interval resampling each label on its own.",
        "",
        f"Verdicts: {counts['reproduced']} reproduced, {counts['contradicted']} contradicted, "
        f"{counts['inconclusive']} inconclusive.", "",
    ]
    lines += claims_table(judged) + [""]
    lines += ["## Sample efficiency against GRPO (exploratory)", "",
              "Area under the accuracy curve and steps to the threshold, each run label against GRPO, paired; "
              "uncorrected p, no verdict; a comparison that is a claim above is not repeated. A run that never "
              "reaches the threshold counts at its last step (censored: its true value is later, so such a "
              "comparison understates a lead over it).", ""]
    for task, t in summary["table"].items():
        rows = efficiency_rows(t)
        if rows:
            lines += [f"### `{task}`", ""] + judged_table(rows, [c for c in judged if c.task == task]) + [""]
    if summary.get("variants"):
        lines += ["## Sensitivity of each method's knobs (exploratory)", "",
                  "Each variant against its method at the defaults and against GRPO, paired; uncorrected p, no "
                  "verdict; a comparison that is a claim above is not repeated.", ""]
        for task, t in summary["table"].items():
            rows = sensitivity_rows(t, summary["variants"])
            if rows:
                lines += [f"### `{task}`", ""] + judged_table(rows, [c for c in judged if c.task == task]) + [""]
    path = os.path.join(out, "REPORT.md")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path
