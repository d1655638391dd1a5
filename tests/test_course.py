"""The course as code: every notebook in notebooks/, whichever are there.

- pairing: each notebook has its jupytext py:percent script (notebooks/NN_name.py, the text
  people edit and review) and the two hold the same cells: type, source and tags (outputs and
  other metadata are the .ipynb's alone); no script without its notebook;
- exercises: a cell tagged `exercise` leaves a function blank and is followed by a cell tagged
  `check`; the check fails on the blank, saying it is blank, and passes with the solution of
  notebooks/solutions/ (RLSD_SOLUTIONS=1); at least six across the course;
- the first cell: the same set-up cell opens every notebook; it does nothing where rlsd_min is
  importable, and where it is not (a fresh virtual environment that has the dependencies but not
  the package) it installs the checkout it sits in and imports it.
"""

from __future__ import annotations

import json
import re
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import jupytext
import pytest

import rlsd_min

ROOT = Path(rlsd_min.__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def notebooks() -> list[Path]:
    return sorted(NOTEBOOKS.glob("*.ipynb"))


def cells_of(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


def source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def tags(cell) -> list:
    return list(cell.get("metadata", {}).get("tags", []))


def ids(paths) -> list[str]:
    return [p.name for p in paths]


# --- pairing ---------------------------------------------------------------------------------

def test_there_are_notebooks():
    assert len(notebooks()) >= 10, "the course's notebooks are missing"


@pytest.mark.parametrize("path", notebooks(), ids=ids(notebooks()))
def test_every_notebook_has_its_script_and_they_agree(path):
    script = path.with_suffix(".py")
    assert script.is_file(), (f"{path.name} has no paired script: run `jupytext --set-formats ipynb,py:percent "
                              f"notebooks/{path.name}` and commit {script.name}")
    text = jupytext.read(script)
    assert text.metadata.get("jupytext", {}).get("text_representation", {}).get("format_name") == "percent", (
        f"{script.name} is not in the py:percent format")
    nb = cells_of(path)
    left = [(c["cell_type"], source(c).strip("\n"), tags(c)) for c in nb]
    right = [(c.cell_type, c.source.strip("\n"), list(c.metadata.get("tags", []))) for c in text.cells]
    assert len(left) == len(right), (f"{path.name} has {len(left)} cells, {script.name} {len(right)}: out of sync; "
                                     "after editing the script run `make notebooks` (then re-execute)")
    for i, (a, b) in enumerate(zip(left, right)):
        assert a == b, (f"cell {i} differs between {path.name} and {script.name}: out of sync; after editing the "
                        f"script run `make notebooks` (then re-execute)\n--- notebook\n{a}\n--- script\n{b}")
    formats = json.loads(path.read_text())["metadata"].get("jupytext", {}).get("formats", "")
    assert "py:percent" in formats, f"{path.name} does not record its pairing (metadata jupytext.formats)"


def test_no_script_without_its_notebook():
    orphans = [p.name for p in sorted(NOTEBOOKS.glob("*.py")) if not p.with_suffix(".ipynb").exists()]
    assert orphans == [], f"scripts without a notebook: {orphans} (make one with `make notebooks`)"


def test_the_pairing_check_sees_a_difference(tmp_path):
    """The check itself: an edit to the script alone is caught."""
    nb = notebooks()[0]
    shutil.copy(nb, tmp_path / nb.name)
    script = tmp_path / nb.with_suffix(".py").name
    script.write_text(nb.with_suffix(".py").read_text().replace("# %%\n", "# %%\nx = 1  # an edit\n", 1))
    with pytest.raises(AssertionError, match="differs|out of sync"):
        test_every_notebook_has_its_script_and_they_agree(tmp_path / nb.name)


# --- exercises --------------------------------------------------------------------------------

def exercises() -> list:
    out = []
    for path in notebooks():
        cells = cells_of(path)
        for i, cell in enumerate(cells):
            if "exercise" in tags(cell):
                out.append(pytest.param(path, i, id=f"{path.stem}-cell{i}"))
    return out


def test_at_least_six_exercises_across_the_course():
    found = exercises()
    assert len(found) >= 6, f"{len(found)} exercise cells (tag 'exercise'), the course promises at least six"
    assert len({p.values[0] for p in found}) >= 5, "the exercises sit in too few notebooks"


def _run_exercise(path: Path, i: int, monkeypatch, solutions: bool):
    cells = cells_of(path)
    exercise, check = source(cells[i]), source(cells[i + 1])
    assert "check" in tags(cells[i + 1]), f"{path.name}: the cell after exercise cell {i} is not tagged 'check'"
    if solutions:
        monkeypatch.setenv("RLSD_SOLUTIONS", "1")
    else:
        monkeypatch.delenv("RLSD_SOLUTIONS", raising=False)
    monkeypatch.chdir(NOTEBOOKS)                       # the notebooks run in notebooks/
    monkeypatch.syspath_prepend(str(NOTEBOOKS))        # where `from solutions...` finds them
    namespace = {"__name__": "__main__"}              # each pair on its own: they must not need earlier cells
    exec(compile(exercise, f"{path.name}[{i}]", "exec"), namespace)
    exec(compile(check, f"{path.name}[{i + 1}]", "exec"), namespace)


@pytest.mark.parametrize("path,i", exercises())
def test_the_exercise_leaves_a_blank_and_its_check_says_so(path, i, monkeypatch):
    text = source(cells_of(path)[i])
    assert "raise NotImplementedError" in text and "YOUR CODE HERE" in text
    assert 'os.environ.get("RLSD_SOLUTIONS") == "1"' in text and "from solutions." in text
    with pytest.raises(AssertionError, match="still blank"):
        _run_exercise(path, i, monkeypatch, solutions=False)


@pytest.mark.parametrize("path,i", exercises())
def test_the_check_passes_with_the_solution(path, i, monkeypatch, capsys):
    _run_exercise(path, i, monkeypatch, solutions=True)
    assert "solved" in capsys.readouterr().out


def test_the_check_says_what_is_wrong():
    import torch

    from rlsd_min.lab.exercises import compare

    wrong = lambda r, G: r - r.mean()             # centred over the batch, not per group, not scaled
    with pytest.raises(AssertionError, match=r"differs from group_advantages at index \(\d+,\): got .*expected"):
        compare("mine", wrong, rlsd_min.group_advantages, torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)
    with pytest.raises(AssertionError, match=r"returned shape \(4, 1\), expected \(4,\)"):
        compare("mine", lambda r, G: rlsd_min.group_advantages(r, G)[:, None], rlsd_min.group_advantages,
                torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)


def test_solutions_are_not_in_the_exercise_cells():
    """No exercise cell holds its solution's body (they live in notebooks/solutions/ only)."""
    import ast

    for param in exercises():
        path, i = param.values
        tree = ast.parse(source(cells_of(path)[i]))
        for fn in [n for n in tree.body if isinstance(n, ast.FunctionDef)]:
            body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
            assert len(body) == 1 and isinstance(body[0], ast.Raise), (
                f"{path.name} cell {i}: {fn.name} has a body beyond `raise NotImplementedError`")


# --- the first cell ----------------------------------------------------------------------------

def setup_cell(path: Path) -> str:
    code = [c for c in cells_of(path) if c["cell_type"] == "code"]
    return source(code[0])


def test_every_notebook_opens_with_the_same_setup_cell():
    first = {p.name: setup_cell(p) for p in notebooks()}
    reference = first[notebooks()[0].name]
    assert "find_spec(\"rlsd_min\")" in reference and "default_profile()" in reference
    different = [name for name, text in first.items() if text != reference]
    assert different == [], f"these notebooks do not open with the set-up cell of {notebooks()[0].name}: {different}"
    for path in notebooks():   # and the set-up comes first: no code cell before it, the title before it
        cells = cells_of(path)
        assert cells[0]["cell_type"] == "markdown" and cells[1]["cell_type"] == "code", path.name


PROBE = """
import json, os, sys
code = open(sys.argv[1]).read()
before = list(sys.path)
import subprocess
def refuse(*a, **k):
    raise AssertionError(f"the set-up cell ran a command: {a}")
subprocess.run = subprocess.check_call = refuse
ns = {}
exec(code, ns)
import rlsd_min
print(json.dumps(dict(profile=ns["PROFILE"], runs=str(ns["RUNS"]), path_changed=sys.path != before,
                      file=rlsd_min.__file__)))
"""


@pytest.mark.parametrize("profile", ["ci", None])
def test_setup_cell_is_a_no_op_where_the_package_imports(tmp_path, profile):
    cell = tmp_path / "cell.py"
    cell.write_text(setup_cell(notebooks()[0]))
    env = {k: v for k, v in os.environ.items() if k != "RLSD_PROFILE"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if profile:
        env["RLSD_PROFILE"] = profile
    proc = subprocess.run([sys.executable, "-c", PROBE, str(cell)], cwd=NOTEBOOKS, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert got["path_changed"] is False
    assert Path(got["file"]).resolve().parent == ROOT / "rlsd_min"
    import torch
    assert got["profile"] == (profile or ("gpu" if torch.cuda.is_available() else "cpu"))
    assert Path(got["runs"]) == ROOT / "runs" / "course" / got["profile"]


def _checkout_copy(dest: Path) -> Path:
    """What a clone holds that an install needs, plus one notebook folder; a copy, so that the
    install writes no egg-info into the repository."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("rlsd_min", "data"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / "notebooks").mkdir()
    return dest / "notebooks"


@pytest.fixture
def bare_python(tmp_path_factory):
    """A fresh virtual environment with pip, whose Python finds the dependencies (torch, ...) on
    PYTHONPATH but not rlsd_min: a folder of links to everything in this environment's
    site-packages except rlsd_min's own entries (its dist-info and the editable install's finder,
    whose module name a new editable install would reuse); .pth files on PYTHONPATH are not read."""
    tmp = tmp_path_factory.mktemp("bare")
    venv, deps = tmp / "venv", tmp / "deps"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=300)
    python = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    deps.mkdir()
    for outer in [Path(p) for p in site.getsitepackages() if os.path.isdir(p)]:
        for entry in outer.iterdir():
            low = entry.name.lower()
            if low.startswith(("rlsd_min", "rlsd-min", "__editable__")) or low.endswith(".pth"):
                continue
            if not (deps / entry.name).exists():
                (deps / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "RLSD_", "VIRTUAL_ENV", "PIP_"))}
    env.update(PYTHONPATH=str(deps), PYTHONNOUSERSITE="1")
    probe = subprocess.run([python, "-c", "import importlib.util, torch; print(importlib.util.find_spec('rlsd_min'))"],
                           env=env, cwd=tmp, capture_output=True, text=True, timeout=300)
    assert probe.returncode == 0 and probe.stdout.strip() == "None", probe.stdout + probe.stderr
    return python, env


AFTER = """
import json, sys
ns = {}
exec(open(sys.argv[1]).read(), ns)
import rlsd_min
print(json.dumps(dict(file=rlsd_min.__file__, profile=ns["PROFILE"], runs=str(ns["RUNS"]))))
"""


@pytest.mark.parametrize("pip_works", [True, False], ids=["installs", "pip-fails"])
def test_setup_cell_installs_the_checkout_where_the_package_is_missing(tmp_path, bare_python, pip_works):
    python, env = bare_python
    where = _checkout_copy(tmp_path)
    cell = tmp_path / "cell.py"
    cell.write_text(setup_cell(notebooks()[0]))
    env = dict(env, RLSD_PROFILE="ci", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    if pip_works:   # offline: build with the outer environment's setuptools, no isolated build environment
        env["PIP_NO_BUILD_ISOLATION"] = "0"   # (pip reads this variable inverted: "0" turns isolation off)
    # else: no index, and an isolated build needs setuptools from one: pip fails
    proc = subprocess.run([python, "-c", AFTER, str(cell)], cwd=where, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert f"pip install -e {tmp_path}" in proc.stdout
    assert Path(got["file"]).resolve() == (tmp_path / "rlsd_min" / "__init__.py").resolve()
    assert got["profile"] == "ci"
    # a new Python process: imports the checkout only if pip really installed it
    again = subprocess.run([python, "-c", "import rlsd_min; print(rlsd_min.__file__)"], cwd=tmp_path.parent,
                           env=env, capture_output=True, text=True, timeout=300)
    if pip_works:
        assert "pip install failed" not in proc.stdout, proc.stdout + proc.stderr[-3000:]
        assert again.returncode == 0, again.stderr[-2000:]
        assert Path(again.stdout.strip()).resolve() == (tmp_path / "rlsd_min" / "__init__.py").resolve()
    else:
        assert "pip install failed" in proc.stdout
        assert again.returncode != 0


def test_a_hosted_start_takes_its_paths_from_the_clone(tmp_path, bare_python):
    """A hosted runtime: the kernel starts in the clone's parent, rlsd_min not installed, and the
    clone's folder is named rlsd_min (what `git clone` makes), which Python in that working
    directory sees as an empty namespace package. The first cell installs the clone, imports the
    package, and puts the run folders under the clone, not under the working directory's parent."""
    python, env = bare_python
    content = tmp_path / "content"
    clone = content / "rlsd_min"
    clone.mkdir(parents=True)
    _checkout_copy(clone)
    cell = tmp_path / "cell.py"
    cell.write_text(setup_cell(notebooks()[0]))
    env = dict(env, RLSD_PROFILE="ci", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_BUILD_ISOLATION="0")
    proc = subprocess.run([python, "-c", AFTER, str(cell)], cwd=content, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads(proc.stdout.splitlines()[-1])
    assert f"pip install -e {clone}" in proc.stdout
    assert Path(got["file"]).resolve() == (clone / "rlsd_min" / "__init__.py").resolve()
    assert Path(got["runs"]) == clone / "runs" / "course" / "ci"


# --- one set of runs ------------------------------------------------------------------------------

TRAINS = re.compile(r"\b(?:rlsd_min\.train|warm_start|run_experiment)\(")


@pytest.mark.parametrize("path", notebooks(), ids=ids(notebooks()))
def test_notebooks_train_into_the_course_run_folders(path):
    """Every run goes to a folder under RUNS (runs/course/<profile>/), none to a temporary folder:
    notebooks that train the same config share its folder (RunDir refuses a different config in
    it), and a notebook run a second time reads its finished runs instead of training again."""
    for i, cell in enumerate(cells_of(path)):
        text = source(cell)
        if cell["cell_type"] != "code" or "check" in tags(cell):
            continue
        assert "tempfile" not in text, f"{path.name} cell {i} uses tempfile: train into RUNS / <name> instead"
        if TRAINS.search(text):
            assert "RUNS" in text, f"{path.name} cell {i} trains, but not into a folder under RUNS"


# --- what the checks reject -----------------------------------------------------------------------

def _exercise_in(stem: str) -> tuple[Path, int]:
    (param,) = [p for p in exercises() if p.values[0].stem == stem]
    return param.values


def test_exercise_6_rejects_an_answer_without_the_detach(monkeypatch):
    """The same formula as the solution, with Delta_t left attached: its values are right, its
    gradients are not, and the check says so (with the seed that draws the case again)."""
    import torch

    def undetached(A, teacher_logp, student_logp, lam, eps_w):
        w = torch.exp(torch.sign(A)[:, None] * (teacher_logp - student_logp))                  # (N, T), no sg
        return A[:, None] * ((1 - lam) + lam * w.clamp(1 - eps_w, 1 + eps_w))                 # (N, T)

    path, i = _exercise_in("06_rlsd")
    cells = cells_of(path)
    namespace = {"__name__": "__main__"}
    monkeypatch.delenv("RLSD_SOLUTIONS", raising=False)
    exec(compile(source(cells[i]), path.name, "exec"), namespace)
    namespace["my_rlsd_advantages"] = undetached
    with pytest.raises(AssertionError, match=r"the gradient of my_rlsd_advantages.*differs.*seeded (\d+)") as err:
        exec(compile(source(cells[i + 1]), path.name, "exec"), namespace)
    seed = re.search(r"seeded (\d+)", str(err.value))[1]
    monkeypatch.setenv("RLSD_EXERCISE_SEED", seed)       # the same seed draws the same failing case
    with pytest.raises(AssertionError) as again:
        exec(compile(source(cells[i + 1]), path.name, "exec"), namespace)
    assert str(again.value) == str(err.value)


def test_a_failure_prints_the_values_of_a_larger_input(monkeypatch):
    import torch

    from rlsd_min.lab.exercises import compare, fresh_generator

    x = torch.arange(40.0).reshape(4, 10)
    with pytest.raises(AssertionError, match=r"tensor\(\[0\.0, 1\.0, .*39\.0\], shape \(4, 10\)\)"):
        compare("mine", lambda t: t + 1, lambda t: t, x)
    monkeypatch.setenv("RLSD_EXERCISE_SEED", "abc")
    with pytest.raises(ValueError, match="RLSD_EXERCISE_SEED must be a non-negative integer, got 'abc'"):
        fresh_generator()
