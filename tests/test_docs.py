"""The documentation as someone who clones the repository reads it.

README.md, docs/*.md and the notebooks' markdown cells, one test case per file:

- every relative link (markdown links and images, reference definitions, HTML src/href)
  resolves to a file or folder inside the repository that git does not ignore, and an
  `#anchor` into a markdown file (or the file itself) names one of its headings;
- no text points outside the repository: `../shared`, or an absolute path of a
  development machine (/work/..., /home/..., /Users/...);
- every repository path the text names (`rlsd_min/lab/report.py`, `docs/sdpg.md`) exists, and
  every markdown file it names by itself (`REPORT.md`) is one the repository holds.

Links to the web are not followed (the tests run offline).
"""

from __future__ import annotations

import json
import re
import subprocess
import urllib.parse
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_PASS = "fixed by the notebook pass"
KNOWN_NOTEBOOK_FAILURES: set = set()
"""(test, notebook) pairs that fail today, marked xfail(strict=True): none left."""


def sources() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "notebooks").glob("*.ipynb"))]


def cases(test: str) -> list:
    out = []
    for path in sources():
        marks = ()
        if (test, path.name) in KNOWN_NOTEBOOK_FAILURES:
            marks = (pytest.mark.xfail(strict=True, reason=NOTEBOOK_PASS),)
        out.append(pytest.param(path, id=str(path.relative_to(ROOT)), marks=marks))
    return out


# --- reading the files ---------------------------------------------------------------------

def markdown_of(path: Path) -> str:
    """The markdown of a .md file, or of a notebook's markdown cells (one after the other)."""
    if path.suffix == ".ipynb":
        cells = json.loads(path.read_text())["cells"]
        return "\n\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")
    return path.read_text()


def all_text_of(path: Path) -> str:
    """Everything a reader sees: for a notebook, every cell's source and its stored text outputs."""
    if path.suffix != ".ipynb":
        return path.read_text()
    parts = []
    for cell in json.loads(path.read_text())["cells"]:
        parts.append("".join(cell["source"]))
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")))
            parts.extend("".join(v) for k, v in out.get("data", {}).items() if k.startswith("text/"))
            parts.extend(out.get("traceback", []))
    return "\n".join(parts)


FENCE = re.compile(r"^\s*(```|~~~)")


def prose(markdown: str, inline: bool = True) -> str:
    """The markdown without its code: fenced blocks, indented blocks and (`inline`) code spans."""
    lines, in_fence, previous_blank = [], False, True
    for line in markdown.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            lines.append("")
            continue
        indented_code = previous_blank and (line.startswith("    ") or line.startswith("\t"))
        if in_fence or indented_code:
            lines.append("")
            continue  # an indented block stays code until a blank line (previous_blank stays False)
        previous_blank = not line.strip()
        lines.append(line)
    text = "\n".join(lines)
    return re.sub(r"`[^`\n]*`", "", text) if inline else text


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())   # a link's text stays
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


@lru_cache(maxsize=None)
def anchors(path: Path) -> frozenset:
    """Every heading anchor of a markdown file or notebook, with GitHub's -1, -2 for repeats."""
    seen, out = {}, set()
    for line in prose(markdown_of(path), inline=False).splitlines():  # a heading's `code` is in its anchor
        m = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            base = slug(m[1])
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.add(base if n == 0 else f"{base}-{n}")
    return frozenset(out)


LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+[\"'(][^)]*)?\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
HTML = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']+)["']""")
SCHEME = re.compile(r"^(?:[a-zA-Z][a-zA-Z0-9+.-]*:|//)")


def links(markdown: str) -> list[str]:
    text = prose(markdown)
    return [t for pattern in (LINK, REFERENCE, HTML) for t in pattern.findall(text)]


@lru_cache(maxsize=None)
def ignored(path: Path) -> bool:
    """Whether git ignores the path (a file made by running something, not shipped); False without git."""
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", str(path)], capture_output=True,
                             timeout=30)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0


def link_problem(source: Path, target: str) -> str | None:
    """Why a link of `source` does not resolve inside the repository, or None when it does."""
    if not target or SCHEME.match(target):
        return None  # empty, or a web / mail link
    where, _, anchor = target.partition("#")
    where = urllib.parse.unquote(where)
    path = (source.parent / where).resolve() if where else source
    if not path.is_relative_to(ROOT):
        return f"{target}: outside the repository"
    if not path.exists():
        return f"{target}: no such file in the repository"
    if where and ignored(path):
        return f"{target}: ignored by git (made by a run, not in a clone)"
    if anchor and path.suffix in (".md", ".ipynb") and anchor.lower() not in anchors(path):
        return f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}"
    return None


OUTSIDE = re.compile(r"\.\./shared\b|\bshared/spec\b|(?<![\w.~-])/(?:work|home|root|Users|mnt|opt)/[\w.-]")
TOP = ("rlsd_min", "docs", "notebooks", "results", "benchmarks", "tests")
NAMED_PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w./-]*\.(?:py|md|ipynb|json|jsonl|png|csv|toml|safetensors))\b"
                        % "|".join(TOP))
NAMED_MD = re.compile(r"(?<![\w./-])([A-Za-z][\w-]*\.md)\b")


@lru_cache(maxsize=None)
def markdown_names() -> frozenset:
    """The names of the markdown files the repository holds (outside ignored folders)."""
    return frozenset(p.name for p in ROOT.rglob("*.md")
                     if ".git" not in p.parts and ".venv" not in p.parts and not ignored(p))


# --- the tests -----------------------------------------------------------------------------

def test_the_sources_are_there():
    names = {p.name for p in sources()}
    assert "README.md" in names and len([p for p in sources() if p.suffix == ".ipynb"]) >= 1
    for page in ("grpo", "opsd", "grpo_opsd", "rlsd", "sdpg", "leakage", "tasks_and_model"):
        assert f"{page}.md" in names, f"docs/{page}.md is missing"


@pytest.mark.parametrize("path", cases("links"))
def test_relative_links_resolve_inside_the_repository(path):
    problems = [p for t in links(markdown_of(path)) if (p := link_problem(path, t))]
    assert not problems, f"{path.relative_to(ROOT)}: broken links:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("path", cases("outside"))
def test_no_text_points_outside_the_repository(path):
    text = all_text_of(path)
    hits = sorted({text[max(0, m.start() - 30):m.end() + 30].replace("\n", " ") for m in OUTSIDE.finditer(text)})
    assert not hits, f"{path.relative_to(ROOT)} points outside the repository:\n  " + "\n  ".join(hits)


@pytest.mark.parametrize("path", cases("named"))
def test_the_files_it_names_exist(path):
    text = markdown_of(path)
    missing = sorted({name for name in NAMED_PATH.findall(text) if not (ROOT / name).exists()}
                     | {name for name in NAMED_MD.findall(text) if name not in markdown_names()})
    assert not missing, f"{path.relative_to(ROOT)} names files the repository does not hold: {missing}"


# --- the checker itself --------------------------------------------------------------------

def test_the_link_reader_on_a_hand_example(tmp_path):
    md = ("# A title\n\nSee [the page](docs/x.md#key-equations), ![img](a.png 'title'),\n"
          "<img src=\"b.png\"> and [web](https://example.com).\n\n[ref]: c.md\n\n"
          "```\n[not a link](code.md)\n```\n\n    [indented code](code2.md)\n\nand `[inline](code3.md)`.\n")
    assert sorted(links(md)) == sorted(["docs/x.md#key-equations", "a.png", "https://example.com", "c.md", "b.png"])
    assert slug("3. Key equations (`RLSD`, Eq. 9)") == "3-key-equations-rlsd-eq-9"
    assert slug("GRPO+OPSD: the sum") == "grpoopsd-the-sum"
    assert "the-task-arith-one-valid-answer" in anchors(ROOT / "docs" / "tasks_and_model.md")


def test_link_problems_are_found():
    readme = ROOT / "README.md"
    assert link_problem(readme, "https://example.com") is None
    assert link_problem(readme, "docs/grpo.md") is None
    assert "outside" in link_problem(readme, "../shared/spec/METHODS.md")
    assert "no such file" in link_problem(readme, "docs/no_such_page.md")
    assert "no heading" in link_problem(readme, "docs/grpo.md#no-such-heading")
    assert OUTSIDE.search("see /work/shared/spec/METHODS.md") and OUTSIDE.search("../shared/x")
    assert not OUTSIDE.search("python -m rlsd_min eval --split ood > /tmp/x.txt")


# --- the generated blocks (rlsd_min/lab/blocks.py) -------------------------------------------

def _block_names(path: Path) -> list[str]:
    from rlsd_min.lab.blocks import OPEN

    return [m["name"] for m in OPEN.finditer(markdown_of(path))]


def test_the_generated_blocks_agree_with_their_sources():
    from rlsd_min.lab.blocks import stale_blocks

    stale = stale_blocks(ROOT)
    assert stale == [], (f"generated blocks differ from their sources (the summary.json of blocks.SOURCES) or "
                         f"the notebooks' stored runs in {stale}: run `python -m rlsd_min.lab.blocks`")


def test_every_results_section_is_generated():
    """The README and each method page quote the final experiment on mul7 through blocks; every
    notebook states its stored run's time through one."""
    readme = _block_names(ROOT / "README.md")
    assert {"verdicts mul7", "clock mul7", "course-times"} <= set(readme) and any(n.startswith("metrics mul7") for n in readme)
    for page in ("grpo", "opsd", "grpo_opsd", "rlsd", "sdpg"):
        names = _block_names(ROOT / "docs" / f"{page}.md")
        assert f"claims mul7 {page}" in names and any(n.startswith("runs mul7") for n in names), page
    assert "below-floor" in _block_names(ROOT / "docs" / "leakage.md")
    for nb in sorted((ROOT / "notebooks").glob("*.ipynb")):
        assert "notebook-time" in _block_names(nb), f"{nb.name} does not state its stored run's time"


def _copy_of_the_sources(dest: Path) -> None:
    """What the blocks read and where they are, copied: the pages, the notebooks, the summaries and
    the split runs' metrics."""
    from rlsd_min.lab.blocks import SOURCES

    for path in ["README.md", *[p.relative_to(ROOT) for p in (ROOT / "docs").glob("*.md")],
                 *[p.relative_to(ROOT) for p in (ROOT / "notebooks").glob("[0-9]*")],
                 *[f"{d}/summary.json" for d in SOURCES.values() if (ROOT / d / "summary.json").exists()],
                 *[p.relative_to(ROOT) for p in (ROOT / "results/arith_split/runs/split").glob("*/seed*/metrics.jsonl")]]:
        (dest / path).parent.mkdir(parents=True, exist_ok=True)
        (dest / path).write_bytes((ROOT / path).read_bytes())


def test_a_changed_number_makes_the_blocks_stale(tmp_path):
    """The drift check: one number changed in a copy of summary.json, or one cell time in a copy of
    a notebook, and the check names the files whose blocks quote it; rewriting them makes them agree."""
    from rlsd_min.lab.blocks import stale_blocks, write_blocks

    _copy_of_the_sources(tmp_path)                 # in agreement: test_the_generated_blocks_agree_with_their_sources
    summary = json.loads((tmp_path / "results/summary.json").read_text())
    cell = summary["table"]["mul7"]["rlsd"]["final_acc"]
    cell["mean"] += 0.1
    (tmp_path / "results/summary.json").write_text(json.dumps(summary))
    stale = stale_blocks(tmp_path)
    assert "README.md" in stale and "docs/rlsd.md" in stale, stale
    nb = tmp_path / "notebooks" / "06_rlsd.ipynb"
    cells = json.loads(nb.read_text())
    timed = next(c for c in cells["cells"] if "execution" in c.get("metadata", {}))
    timed["metadata"]["execution"]["shell.execute_reply"] = "2099-01-01T00:00:00.000000Z"
    nb.write_text(json.dumps(cells, indent=1, ensure_ascii=False) + "\n")
    assert {"notebooks/06_rlsd.ipynb", "notebooks/06_rlsd.py"} <= set(stale_blocks(tmp_path))
    write_blocks(tmp_path)
    assert stale_blocks(tmp_path) == []
    assert f"{cell['mean']:.3f} ± {cell['std']:.3f}" in (tmp_path / "docs/rlsd.md").read_text()


def test_a_bad_block_is_named(tmp_path):
    from rlsd_min.lab.blocks import rewrite

    page = tmp_path / "docs" / "x.md"
    with pytest.raises(ValueError, match="unknown block kind 'table'"):
        rewrite("<!-- generated: table mul7 -->\n<!-- end generated -->\n", tmp_path, page)
    with pytest.raises(ValueError, match="no line '<!-- end generated -->'"):
        rewrite("<!-- generated: clock mul7 -->\ntext\n", tmp_path, page)
    with pytest.raises(ValueError, match="unknown block source 'mul8'"):
        rewrite("<!-- generated: runs mul8 grpo -->\n<!-- end generated -->\n", tmp_path, page)


def test_the_clock_block_says_an_interim_report_is_one(tmp_path):
    """A summary with runs not finished names itself interim, with the plan's count; a whole one does not."""
    from rlsd_min.lab.blocks import render

    (tmp_path / "results").mkdir(parents=True)
    summary = {"runs": 3, "wall_s": 7200.0, "clock": None, "missing": ["mul7/grpo/seed3"]}
    (tmp_path / "results" / "summary.json").write_text(json.dumps(summary))
    body = render("clock mul7", tmp_path, tmp_path / "README.md")
    assert body.startswith("**An interim report**: 3 of the plan's 4 runs finished so far, **2.0 hours of training**")
    (tmp_path / "results" / "summary.json").write_text(json.dumps({**summary, "missing": []}))
    assert render("clock mul7", tmp_path, tmp_path / "README.md").startswith("3 runs, **2.0 hours")


def test_the_contexts_block_holds_the_context_arms_claims_as_judged(tmp_path):
    """A summary with the context arms: the block lists each arm's two claims (against its method
    at the default context, against GRPO) with the report's verdicts, and no other claim."""
    from rlsd_min.lab.blocks import render
    from rlsd_min.lab.design import CONTEXT_ARMS, VARIANTS

    def cell(values):
        return {"mean": sum(values) / len(values), "std": 0.0, "n": len(values), "values": values,
                "seeds": list(range(len(values)))}

    base = [0.70, 0.72, 0.69, 0.71, 0.73]
    arms = [n for n, (_, sets) in VARIANTS.items() if sets.get("teacher_context") in CONTEXT_ARMS]
    table = {label: {"final_acc": cell(base), "seeds": 5} for label in ("grpo", "rlsd", "grpo_opsd", "sdpg")}
    table.update({a: {"final_acc": cell([x - 0.1 for x in base]), "seeds": 5} for a in arms})
    (tmp_path / "results").mkdir(parents=True)
    (tmp_path / "results" / "summary.json").write_text(json.dumps({"table": {"mul7": table}}))
    body = render("contexts mul7", tmp_path, tmp_path / "docs" / "opsd.md")
    rows = [line for line in body.splitlines() if line.startswith("| ") and "verdict" not in line]
    assert len(rows) == 2 * len(arms)
    for a in arms:
        assert sum(f" − {a}: " in r or f": {a} − GRPO: " in r for r in rows) == 2, a
    assert all("**reproduced**" in r for r in rows if " − GRPO: " not in r)       # the default context wins
    assert all("**contradicted**" in r for r in rows if " − GRPO: " in r)         # every arm below GRPO
    (tmp_path / "results" / "summary.json").write_text(json.dumps({"table": {"mul7": {
        "grpo": table["grpo"], "rlsd": table["rlsd"]}}}))
    with pytest.raises(ValueError, match="no run of a context arm"):
        render("contexts mul7", tmp_path, tmp_path / "docs" / "opsd.md")
