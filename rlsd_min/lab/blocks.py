"""The generated blocks of the README, the method pages and the notebooks' markdown.

A block is a marked span of a markdown file, or of a notebook's markdown (in its .ipynb, and in its
py:percent script as `# ` comment lines):

    <!-- generated: KIND ARG ... -->
    ...
    <!-- end generated -->

whose text `render` makes from a committed file, never by hand:

    runs SOURCE LABEL,...     the report's run table (results/REPORT.md's), those run labels only
    metrics SOURCE LABEL,... KEY,...   those summary keys (mean ± std over seeds), one row per task and label
    claims SOURCE LABEL       the report's claim rows that name the label, with their verdicts as the
                              report states them, and its exploratory rows of the label and its variants
    contexts SOURCE           the claims of the teacher-context arms (sibling, other_*), as the report
                              judges them
    verdicts SOURCE           one line per claim: its verdict and its first comparison
    clock SOURCE              the verification's time on the clock and its training time
    below-floor               per seed, the steps where OPSD's loss on `split` lay below its exact floor
    notebook-time             this notebook's stored run: the cell times its .ipynb records
    course-times              the same for every notebook, one line

SOURCE is a summary.json of a verification folder (SOURCES): `mul7` (results/, the final
experiment) or `arith_split` (results/arith_split/, the first verification). `python -m rlsd_min
verify` rewrites the blocks after its report in one of these folders (`refresh_after_report`); by
hand:

    python -m rlsd_min.lab.blocks            # rewrite every block in place
    python -m rlsd_min.lab.blocks --check    # name the blocks that differ from their source; exit 1 if any
"""

from __future__ import annotations

import argparse
import json
import re
from datetime import datetime
from functools import lru_cache
from pathlib import Path

from . import report

ROOT = Path(__file__).resolve().parents[2]
SOURCES = {"mul7": "results", "arith_split": "results/arith_split"}
"""A block's SOURCE -> the verification folder (under the checkout) whose summary.json it reads."""
OPEN = re.compile(r"^(?P<prefix>#? ?)<!-- generated: (?P<name>[^>]*?) -->[ \t]*$", re.M)
CLOSE = "<!-- end generated -->"


def _text_of(root: Path, source: str) -> str:
    if source not in SOURCES:
        raise ValueError(f"unknown block source {source!r}: one of {', '.join(SOURCES)}")
    return (root / SOURCES[source] / "summary.json").read_text()


def summary_of(root: Path, source: str) -> dict:
    return json.loads(_text_of(root, source))


@lru_cache(maxsize=8)
def _judged(text: str) -> tuple[list, list]:
    """The report's judged claims of a summary (its text), and the lines of its exploratory tables
    (efficiency and sensitivity against GRPO, each comparison that is a claim left out), made once
    per summary: the bootstrap is slow."""
    summary = json.loads(text)
    judged = report.claims(summary)
    exploratory = []
    for task, t in summary["table"].items():
        groups = [report.efficiency_rows(t)]
        if summary.get("variants"):
            groups.append(report.sensitivity_rows(t, summary["variants"]))
        for rows in ([(f"{text} ({task})", part) for text, part in group] for group in groups):
            exploratory += report.judged_table(rows, [c for c in judged if c.task == task])[len(report.EXPLORATORY_HEAD):]
    return judged, exploratory


# --- the kinds of block ------------------------------------------------------------------------

def _named(text: str, label: str) -> bool:
    """Whether a claim's text names the run label (GRPO is not named by "GRPO+OPSD")."""
    name = re.escape(report.LABELS.get(label, label))
    return re.search(rf"(?<![\w+]){name}(?![\w+])", text) is not None


def runs_block(root: Path, up: str, source: str, labels: str) -> str:
    summary = summary_of(root, source)
    wanted = labels.split(",")
    parts = []
    for task, rows in summary["table"].items():
        picked = {m: rows[m] for m in wanted if m in rows}
        if picked:
            parts.append(f"`{task}`, mean ± std over seeds ([`{SOURCES[source]}/summary.json`]"
                         f"({up}{SOURCES[source]}/summary.json)):\n\n"
                         + report._table(task, picked, summary["threshold"][task], summary.get("settings", {})))
    if not parts:
        raise ValueError(f"block runs {source} {labels}: none of these run labels is in {SOURCES[source]}")
    return "\n\n".join(parts)


def metrics_block(root: Path, up: str, source: str, labels: str, keys: str) -> str:
    summary = summary_of(root, source)
    keys = keys.split(",")
    lines = ["| task | run | " + " | ".join(f"`{k}`" for k in keys) + " |", "|---" * (len(keys) + 2) + "|"]
    for task, rows in summary["table"].items():
        for label in (m for m in labels.split(",") if m in rows):
            lines.append(f"| `{task}` | {report.LABELS.get(label, label)} | "
                         + " | ".join(report._fmt(rows[label], k) for k in keys) + " |")
    present = {k for rows in summary["table"].values() for row in rows.values() for k in row}
    if len(lines) == 2 or not set(keys) <= present:
        raise ValueError(f"block metrics {source} {labels} {','.join(keys)}: no such run label, or a key no run of "
                         f"{SOURCES[source]}/summary.json has ({sorted(set(keys) - present)})")
    return "\n".join(lines)


def claims_block(root: Path, up: str, source: str, label: str) -> str:
    summary = summary_of(root, source)
    judged, exploratory = _judged(_text_of(root, source))
    variants = [n for n, v in summary.get("variants", {}).items() if v["method"] == label]
    starts = tuple(f"| {start}" for start in (report.LABELS.get(label, label) + " ", *(f"{v} (" for v in variants)))
    lines = report.claims_table([c for c in judged if _named(c.text, label)])
    more = [line for line in exploratory if line.startswith(starts)]
    if more:
        lines += ["", "Exploratory comparisons (uncorrected p, no verdict):", "", *report.EXPLORATORY_HEAD, *more]
    return "\n".join(lines)


def contexts_block(root: Path, up: str, source: str) -> str:
    """The teacher-context claims (design.CONTEXT_ARMS: each arm against its method at its default
    context and against GRPO) as the report judges them, in the task's one Holm family."""
    from .design import CONTEXT_ARMS, VARIANTS

    arms = [n for n, (_, sets) in VARIANTS.items() if sets.get("teacher_context") in CONTEXT_ARMS]
    judged = [c for c in _judged(_text_of(root, source))[0]
              if any(re.search(rf"(?<![\w.]){re.escape(a)}(?![\w.])", what) for what, _ in c.parts for a in arms)]
    if not judged:
        raise ValueError(f"block contexts {source}: {SOURCES[source]}/summary.json has no run of a context arm "
                         f"({', '.join(arms)})")
    return "\n".join(report.claims_table(judged))


def verdicts_block(root: Path, up: str, source: str) -> str:
    out = []
    for c in _judged(_text_of(root, source))[0]:
        what, comparison = c.parts[0]
        more = f"; {len(c.parts) - 1} more part in the report" if len(c.parts) > 1 else ""
        out.append(f"- {c.text}: **{c.verdict}** ({what}: {report._cmp(comparison)}{more})")
    return "\n".join(out)


def clock_block(root: Path, up: str, source: str) -> str:
    s = summary_of(root, source)
    where = f"[`{SOURCES[source]}/summary.json`]({up}{SOURCES[source]}/summary.json)"
    clock, missing = s["clock"], s.get("missing") or []
    runs = f"{s['runs']} runs" if not missing else \
        f"**An interim report**: {s['runs']} of the plan's {s['runs'] + len(missing)} runs finished so far"
    if clock is None:  # results.clock_span: a run resumed, so its seconds are not one span
        return (f"{runs}, **{s['wall_s'] / 3600:.1f} hours of training** summed over runs (`wall_s` in "
                f"{where}), trained over several sittings of the command their provenance records; a run cut off at "
                "a sitting's end resumed from its checkpoint, so the runs have no single span on the clock.")
    hours = clock["elapsed_s"] / 3600
    return (f"{runs}, **{clock['elapsed_s'] / 60:.1f} minutes on the clock** with at most "
            f"{clock['at_once']} training at once ({s['wall_s'] / 60:.1f} minutes of training summed over runs, "
            f"{s['runs'] / hours:.1f} runs per hour; `clock` and `wall_s` in {where}).")


def below_floor_block(root: Path, up: str) -> str:
    counts = []
    for folder in sorted((root / SOURCES["arith_split"] / "runs" / "split").glob("*/seed*")):  # the runs that log it
        rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line.strip()]
        scored = [r for r in rows if "distill_floor" in r]
        if scored:
            below = sum(r["distill_loss"] < r["distill_floor"] for r in scored)
            counts.append(f"{report.LABELS.get(folder.parent.name, folder.parent.name)} {folder.name}: "
                          f"{below} of {len(scored)}")
    if not counts:
        raise ValueError(f"block below-floor: no split run folders under {SOURCES['arith_split']}/runs/split")
    return ("Steps at which `distill_loss < distill_floor`, counted in the `metrics.jsonl` of "
            "`results/arith_split/runs/split/<run>/seed<k>/`: " + "; ".join(counts) + ".")


def _cell_seconds(notebook: Path) -> list[float]:
    """Each executed cell's time in the notebook's stored run (nbclient's `execution` metadata)."""
    out = []
    for cell in json.loads(notebook.read_text())["cells"]:
        t = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in t and "shell.execute_reply" in t:
            start, end = (datetime.fromisoformat(t[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))
            out.append((end - start).total_seconds())
    if not out:
        raise ValueError(f"{notebook.name} records no cell times: execute it (jupyter nbconvert --execute)")
    return out


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def notebook_time_block(root: Path, up: str, notebook: Path) -> str:
    cells = _cell_seconds(notebook)
    return (f"**Time.** Its stored run, on the `cpu` profile: {_duration(sum(cells))} (the cells' times recorded "
            f"in this notebook; the longest cell {_duration(max(cells))}). A notebook run again reads its finished "
            "run folders back and trains nothing.")


def course_times_block(root: Path, up: str) -> str:
    times = [f"{p.stem[:2]} {_duration(sum(_cell_seconds(p)))}" for p in sorted((root / "notebooks").glob("*.ipynb"))]
    return ("Each notebook's stored run on the `cpu` profile (the cells' times its `.ipynb` records): "
            + ", ".join(times) + ".")


KINDS = {"runs": runs_block, "metrics": metrics_block, "claims": claims_block, "contexts": contexts_block,
         "verdicts": verdicts_block, "clock": clock_block, "below-floor": below_floor_block,
         "course-times": course_times_block}


# --- finding and rewriting the blocks ---------------------------------------------------------------

def render(name: str, root: Path, path: Path) -> str:
    """The text of block `name` ("KIND ARG ...") in the file `path`, made from its source."""
    kind, *args = name.split()
    up = "../" * (len(path.relative_to(root).parts) - 1)   # links from the file's folder to the checkout's root
    if kind == "notebook-time":
        if path.suffix not in (".ipynb", ".py") or args:
            raise ValueError(f"{path.name}: block notebook-time takes no arguments and lives in a notebook")
        return notebook_time_block(root, up, path.with_suffix(".ipynb"))
    if kind not in KINDS:
        raise ValueError(f"{path.name}: unknown block kind {kind!r} in {name!r}: one of "
                         f"{', '.join([*KINDS, 'notebook-time'])}")
    return KINDS[kind](root, up, *args)


def rewrite(text: str, root: Path, path: Path) -> str:
    """`text` with every block's body replaced by its rendering; a `# ` prefix of the marker line
    (a py:percent script's markdown) is put before every line of the body."""
    out, pos = [], 0
    for m in OPEN.finditer(text):
        if m.start() < pos:
            raise ValueError(f"{path.name}: a block opens inside the block before it")
        prefix = m["prefix"]
        close = text.find(prefix + CLOSE, m.end())
        if close < 0:
            raise ValueError(f"{path.name}: block {m['name']!r} has no line {prefix + CLOSE!r}")
        body = "\n".join((prefix + line).rstrip() if line else prefix.rstrip()
                         for line in render(m["name"], root, path).split("\n"))
        out += [text[pos:m.end()], "\n", body, "\n"]
        pos = close
    return "".join(out) + text[pos:]


def files(root: Path) -> list[Path]:
    """Where blocks may be: the README, docs/*.md, the notebooks and their scripts."""
    notebooks = sorted((root / "notebooks").glob("[0-9]*.ipynb"))
    return [root / "README.md", *sorted((root / "docs").glob("*.md")), *notebooks,
            *[p.with_suffix(".py") for p in notebooks if p.with_suffix(".py").is_file()]]


def regenerated(path: Path, root: Path) -> str:
    """The file's text with its blocks regenerated (a notebook: in its markdown cells)."""
    text = path.read_text()
    if path.suffix != ".ipynb":
        return rewrite(text, root, path)
    nb = json.loads(text)
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            source = "".join(cell["source"])
            new = rewrite(source, root, path)
            if new != source:
                cell["source"] = new.splitlines(keepends=True)
    return json.dumps(nb, indent=1, ensure_ascii=False) + "\n"


def stale_blocks(root: Path = ROOT) -> list[str]:
    """The files whose blocks differ from what their sources make (relative paths)."""
    return [str(p.relative_to(root)) for p in files(root) if regenerated(p, root) != p.read_text()]


def write_blocks(root: Path = ROOT) -> list[str]:
    """Rewrite every block in place; returns the files that changed."""
    changed = []
    for path in files(root):
        new = regenerated(path, root)
        if new != path.read_text():
            path.write_text(new)
            changed.append(str(path.relative_to(root)))
    return changed


def refresh_after_report(out: str) -> None:
    """After `verify` has written a report: rewrite the blocks when `out` is a folder they read."""
    if Path(out).resolve() in {(ROOT / folder).resolve() for folder in SOURCES.values()}:
        changed = write_blocks()
        print(f"generated blocks rewritten: {', '.join(changed) or 'none changed'}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rlsd_min.lab.blocks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="name the stale blocks' files; exit 1 if any")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_blocks()
        print("\n".join(stale) if stale else "every generated block agrees with its source")
        raise SystemExit(1 if stale else 0)
    changed = write_blocks()
    print(f"rewritten: {', '.join(changed)}" if changed else "every generated block agrees with its source")


if __name__ == "__main__":
    main()
