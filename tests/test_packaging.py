"""Packaging: environment.yml and pyproject.toml declare the same dependencies; the wheel and
sdist ship every module and data file; the installed wheel trains from a fresh virtual
environment; the import graph has no cycle and the core never imports the lab; the lazy
public names (rlsd_min.__all__) never collide with a submodule and `import rlsd_min` is light."""

import ast
import hashlib
import importlib
import importlib.metadata
import importlib.util
import json
import os
import pathlib
import shutil
import site
import subprocess
import sys
import tarfile
import tomllib
import zipfile

import pytest
import yaml
from packaging.version import Version

import rlsd_min

REPO = pathlib.Path(rlsd_min.__file__).resolve().parent.parent


def _pyproject():
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def _environment():
    with open(REPO / "environment.yml") as f:
        return yaml.safe_load(f)


def _normalise(spec: str) -> tuple:
    """'Torch >= 2.3' -> ('torch', '>=2.3'); specifier order and spaces do not matter."""
    from packaging.requirements import Requirement

    req = Requirement(spec)
    return req.name.lower().replace("_", "-"), ",".join(sorted(str(s) for s in req.specifier))


def test_environment_pip_section_matches_pyproject_dependencies():
    deps = _pyproject()["dependencies"]
    env_deps = _environment()["dependencies"]
    pip_sections = [d["pip"] for d in env_deps if isinstance(d, dict) and "pip" in d]
    assert len(pip_sections) == 1, "environment.yml needs exactly one pip: section"
    pip = pip_sections[0]
    assert len(pip) == len(set(pip)), "duplicates in environment.yml"
    assert sorted(_normalise(s) for s in pip) == sorted(_normalise(s) for s in deps)
    assert {s.replace(" ", "") for s in pip} == {s.replace(" ", "") for s in deps}   # literally the same specs
    assert "pip" in env_deps


def test_python_versions_agree():
    requires = _pyproject()["requires-python"].replace(" ", "")
    conda_python = [d for d in _environment()["dependencies"] if isinstance(d, str) and d.startswith("python")]
    assert conda_python == ["python" + requires]


def test_installed_versions_satisfy_the_declared_specs():
    from importlib.metadata import version

    from packaging.requirements import Requirement

    for spec in _pyproject()["dependencies"]:
        req = Requirement(spec)
        assert req.specifier.contains(version(req.name), prereleases=True), (spec, version(req.name))



# --- the package as built, installed and imported ------------------------------------------

PKG = REPO / "rlsd_min"
DATA = REPO / "data"
SOURCES = ("pyproject.toml", "README.md", "MANIFEST.in", "setup.py", "setup.cfg", "LICENSE", "rlsd_min", "data")
"""what a build reads: copied to a scratch folder, so building writes no build/ or egg-info here"""


def _data_files() -> set:
    """Every file under the repository's data/, as a path relative to the repository ('data/...')."""
    return {p.relative_to(REPO).as_posix() for p in DATA.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


def _python_files() -> set:
    return {p.relative_to(REPO).as_posix() for p in PKG.rglob("*.py") if "__pycache__" not in p.parts}


def _run(cmd, *, env=None, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, (f"{cmd} failed ({proc.returncode})\n--- stdout\n{proc.stdout[-4000:]}"
                                  f"\n--- stderr\n{proc.stderr[-4000:]}")
    return proc


def _backend_env(tmp_path) -> dict:
    """The environment to build in without build isolation: this interpreter's setuptools when
    it can build a wheel (>= 64, as pyproject.toml asks, with bdist_wheel: >= 70.1 or `wheel`),
    else a fresh setuptools pip-installed into a scratch folder put on PYTHONPATH (build
    isolation by hand: it needs the package index). Skips only when neither is possible."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    try:
        have = Version(importlib.metadata.version("setuptools"))
    except importlib.metadata.PackageNotFoundError:
        have = None
    if have is not None and have >= Version("64") and (
            have >= Version("70.1") or importlib.util.find_spec("wheel") is not None):
        return env
    backend = tmp_path / "backend"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target", str(backend),
                           "setuptools>=70.1"], capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.skip(f"cannot build the package: setuptools {have or 'absent'} here cannot build a wheel, "
                    f"and installing setuptools>=70.1 failed (no package index?): {proc.stderr[-500:]}")
    env["PYTHONPATH"] = str(backend)
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict:
    """sdist of a copy of the working tree, then the wheel built from that sdist (as
    `python -m build` does, so a file missing from the sdist is missing from the wheel too)."""
    tmp = tmp_path_factory.mktemp("build")
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        elif (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    env = _backend_env(tmp)
    dist = tmp / "dist"
    sdist = _run([sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
                  "print(b.build_sdist(sys.argv[1]))", dist], env=env, cwd=src).stdout.split()[-1]
    with tarfile.open(dist / sdist) as tar:
        sdist_names = tar.getnames()
        tar.extractall(tmp / "unpacked", **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    (unpacked,) = (tmp / "unpacked").iterdir()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "--quiet", "--wheel-dir", dist, unpacked], env=env, cwd=tmp)
    (wheel,) = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as z:
        wheel_names = z.namelist()
    return dict(wheel=wheel, wheel_names=set(wheel_names),
                sdist_names={n.split("/", 1)[1] for n in sdist_names if "/" in n}, tmp=tmp)


def test_wheel_and_sdist_ship_every_data_file_and_module(built):
    data, modules = _data_files(), _python_files()
    assert "data/base/model.safetensors" in data and "data/base_split/model.safetensors" in data
    assert any(m.startswith("rlsd_min/lab/") for m in modules)
    assert "rlsd_min/integrations/trl.py" in modules
    wheel = built["wheel_names"]
    in_wheel = {f"rlsd_min/{n}" for n in data}                                  # data/... is built as rlsd_min/data/...
    assert in_wheel - wheel == set(), "data files missing from the wheel (pyproject.toml package-data)"
    assert modules - wheel == set(), "modules missing from the wheel ([tool.setuptools] packages)"
    assert {n for n in wheel if n.startswith("rlsd_min/data/")} == in_wheel, "files in the wheel's rlsd_min/data/ not in data/"
    assert not [n for n in wheel if "__pycache__" in n or n.endswith(".pyc")]
    sdist = built["sdist_names"]
    assert (data | modules | {"pyproject.toml", "README.md"}) - sdist == set(), "files missing from the sdist"


def _venv_python(venv) -> pathlib.Path:
    return venv / ("Scripts" if os.name == "nt" else "bin") / ("python.exe" if os.name == "nt" else "python")


def _tree(root: pathlib.Path) -> dict:
    """{relative path: sha256 of the file, or 'dir'} of everything under root."""
    return {p.relative_to(root).as_posix(): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


def test_installed_wheel_trains_from_its_shipped_data_and_writes_only_its_run_folder(built, tmp_path):
    # a fresh virtual environment holding only the wheel, installed without its dependencies
    venv = tmp_path / "venv"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "RLSD_", "VIRTUAL_ENV"))}
    outer_pip = Version(importlib.metadata.version("pip")) >= Version("22.3")  # pip --python
    _run([sys.executable, "-m", "venv", *(["--without-pip"] if outer_pip else []), venv], env=clean)
    python = _venv_python(venv)
    pip = [sys.executable, "-m", "pip", "--python", python] if outer_pip else [python, "-m", "pip"]
    _run([*pip, "install", "--quiet", "--no-deps", "--no-index", built["wheel"]], env=clean)
    purelib = pathlib.Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                env=clean).stdout.strip())
    installed = purelib / "rlsd_min"
    assert (installed / "data" / "base" / "model.safetensors").is_file()

    # torch, transformers, ... from this environment's site-packages, on PYTHONPATH: .pth files
    # there are not processed, so the editable install's finder (the repository's rlsd_min)
    # stays out; the fresh venv's own site-packages goes first, so the installed copy wins
    outer = [p for p in site.getsitepackages() if os.path.isdir(p) and pathlib.Path(p).resolve() != purelib.resolve()]
    env = dict(clean, PYTHONPATH=os.pathsep.join([str(purelib), *outer]), PYTHONNOUSERSITE="1",
               HF_HOME=str(tmp_path / "hf"), MPLCONFIGDIR=str(tmp_path / "mpl"))
    elsewhere = tmp_path / "elsewhere"  # a working directory outside the repository
    elsewhere.mkdir()
    assert REPO.resolve() not in elsewhere.resolve().parents
    probe = _run([python, "-c", (
        "import json, sys, rlsd_min; from rlsd_min.tasks import TASKS, data_root; "
        "print(json.dumps(dict(file=rlsd_min.__file__, root=str(data_root()), "
        "base=str(TASKS['arith'].base_checkpoint), data=str(TASKS['arith'].data_dir), "
        "finders=[type(f).__module__ + '.' + type(f).__name__ for f in sys.meta_path])))")],
        env=env, cwd=elsewhere)
    where = json.loads(probe.stdout.splitlines()[-1])
    assert pathlib.Path(where["file"]).resolve().parent == installed.resolve(), where
    assert pathlib.Path(where["root"]).resolve() == (installed / "data").resolve(), where
    assert pathlib.Path(where["base"]).resolve() == (installed / "data" / "base").resolve()
    assert pathlib.Path(where["data"]).resolve() == (installed / "data" / "arith").resolve()
    assert not [f for f in where["finders"] if "editable" in f.lower()], where["finders"]

    before = _tree(installed)
    out = tmp_path / "run"
    proc = _run([python, "-m", "rlsd_min", "train", "--method", "grpo", "--profile", "ci", "--out", out],
                env=env, cwd=elsewhere, timeout=600)
    assert "building data files" not in proc.stdout, "the installed package did not find its shipped data"
    assert f"run in {out}" in proc.stdout, proc.stdout
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["method"], cfg["profile"], cfg["task"]) == ("grpo", "ci", "arith")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    assert [r["step"] for r in rows] == list(range(cfg["steps"] + 1))
    assert (out / "checkpoint").is_dir() and any((out / "checkpoint").iterdir())
    assert list(elsewhere.iterdir()) == [], "train wrote into its working directory"
    after = _tree(installed)
    assert after == before, (f"training wrote into the installed package: added {sorted(set(after) - set(before))}, "
                             f"removed {sorted(set(before) - set(after))}, "
                             f"changed {sorted(k for k in set(after) & set(before) if after[k] != before[k])}")


# --- the import graph --------------------------------------------------------------------------

def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module, module: str, is_package: bool, modules: set) -> list:
    """[(imported rlsd_min module, line, module_level)] of one module's imports: every import
    statement, those under `if TYPE_CHECKING:` and inside functions included, and every
    `importlib.import_module` of a constant name. module_level: run when the module is imported
    (not inside a def or lambda, not under `if TYPE_CHECKING:`); class bodies and `if`/`try`
    blocks at module level are module level."""
    found = []
    package = module if is_package else module.rpartition(".")[0]

    def target(name: str):
        """The deepest rlsd_min module that `name` is or lies in (None outside the package)."""
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    def visit(node, module_level: bool):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, False)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                visit(ast.Module(body=child.body, type_ignores=[]), False)  # for type checkers only
                visit(ast.Module(body=child.orelse, type_ignores=[]), module_level)
            elif (isinstance(child, ast.Call) and isinstance(child.func, ast.Attribute)
                  and child.func.attr == "import_module" and child.args
                  and isinstance(child.args[0], ast.Constant) and isinstance(child.args[0].value, str)):
                name = child.args[0].value  # importlib.import_module(".methods", __package__)
                if name.startswith("."):
                    level = len(name) - len(name.lstrip("."))
                    base = package
                    for _ in range(level - 1):
                        base = base.rpartition(".")[0]
                    name = f"{base}.{name.lstrip('.')}" if name.lstrip(".") else base
                if target(name):
                    found.append((target(name), child.lineno, module_level))
                visit(child, module_level)
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if target(alias.name):
                        found.append((target(alias.name), child.lineno, module_level))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package
                    for _ in range(child.level - 1):
                        base = base.rpartition(".")[0]
                    base = f"{base}.{child.module}" if child.module else base
                else:
                    base = child.module
                if not target(base):
                    continue
                for alias in child.names:  # `from . import x`: x may be a submodule
                    sub = f"{base}.{alias.name}"
                    found.append((sub if sub in modules else target(base), child.lineno, module_level))
            else:
                visit(child, module_level)

    visit(tree, True)
    return found


def _import_graph() -> dict:
    files = {_module_name(p): p for p in sorted(PKG.rglob("*.py")) if "__pycache__" not in p.parts}
    modules = set(files)
    return {m: _imports(ast.parse(p.read_text(), str(p)), m, p.name == "__init__.py", modules)
            for m, p in files.items()}


def _cycle(edges: dict):
    """One cycle of the directed graph {node: {successors}} as a list of nodes, or None."""
    state, stack = {}, []

    def dfs(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_import_graph_walker_sees_the_known_imports():
    graph = _import_graph()
    assert "rlsd_min.lab.cli" in graph and "rlsd_min.__main__" in graph and "rlsd_min" in graph
    edges = {(m, t, level) for m, imps in graph.items() for t, _, level in imps}
    assert ("rlsd_min.loop", "rlsd_min.model", True) in edges          # from . import model as model_io
    assert ("rlsd_min.lab.cli", "rlsd_min.config", True) in edges      # from ..config import ...
    assert ("rlsd_min.lab.cli", "rlsd_min.lab.experiment", False) in edges   # inside cmd_verify
    assert ("rlsd_min.__main__", "rlsd_min.lab.cli", True) in edges
    assert not [e for e in edges if e[1] == "rlsd_min.step" and e[0] in ("rlsd_min.methods", "rlsd_min.objective")]
    toy = ast.parse("from typing import TYPE_CHECKING\nimport importlib\nif TYPE_CHECKING:\n    from .b import X\n"
                    "def f():\n    return importlib.import_module('.c', __package__)\n")
    got = _imports(toy, "p.a", False, {"p", "p.a", "p.b", "p.c"})
    assert got == [("p.b", 4, False), ("p.c", 6, False)]              # type-only and importlib both count
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    graph = _import_graph()
    module_level = {m: {t for t, _, level in imps if level and t != m} for m, imps in graph.items()}
    assert _cycle(module_level) is None, f"module-level import cycle: {' -> '.join(_cycle(module_level))}"
    everything = {m: {t for t, _, _ in imps if t != m} for m, imps in graph.items()}
    assert _cycle(everything) is None, (
        f"import cycle through a function-level import: {' -> '.join(_cycle(everything))}")


def test_the_core_never_imports_the_lab():
    """rlsd_min/ (the concepts) does not import rlsd_min.lab (the tooling), not even inside a
    function; the one exception is the entry point, rlsd_min/__main__.py -> lab.cli."""
    offenders = [f"{m}:{line} imports {t}" for m, imps in _import_graph().items()
                 if not m.startswith("rlsd_min.lab") and m != "rlsd_min.__main__"
                 for t, line, _ in imps if t == "rlsd_min.lab" or t.startswith("rlsd_min.lab.")]
    assert offenders == []
    assert not [m for m in rlsd_min._EXPORTS if m == "lab" or m.startswith("lab.")], "a public name lives in lab"


def test_the_core_never_imports_the_integrations():
    """rlsd_min.integrations (the TRL trainers) sits above the core: no core module imports it,
    not even inside a function (the lab's TRL benchmark does, inside its function)."""
    offenders = [f"{m}:{line} imports {t}" for m, imps in _import_graph().items()
                 if not m.startswith(("rlsd_min.integrations", "rlsd_min.lab"))
                 for t, line, _ in imps if t == "rlsd_min.integrations" or t.startswith("rlsd_min.integrations.")]
    assert offenders == []
    assert "rlsd_min.integrations.trl" in _import_graph()


def _external_imports(path: pathlib.Path) -> set:
    """Top-level names of the non-relative imports anywhere in a file (functions included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_core_never_imports_trl():
    """trl is an optional extra: only rlsd_min.integrations and the lab's TRL comparison use it,
    and importing every core module loads no trl."""
    core = [p for p in sorted(PKG.rglob("*.py")) if "__pycache__" not in p.parts
            and not {"lab", "integrations"} & set(p.relative_to(PKG).parts)]
    assert core and all("trl" not in _external_imports(p) for p in core), [
        p.name for p in core if "trl" in _external_imports(p)]
    code = ("import importlib, json, pathlib, sys, rlsd_min; pkg = pathlib.Path(rlsd_min.__file__).parent\n"
            "for p in pkg.glob('*.py'):\n    importlib.import_module('rlsd_min.' + p.stem) if p.stem != '__init__' else None\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'trl' or m.startswith(('trl.', 'rlsd_min.integrations')))))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = _run([sys.executable, "-c", code], env=env, cwd=REPO, timeout=300)
    assert json.loads(proc.stdout.splitlines()[-1]) == []


# --- the public names ---------------------------------------------------------------------------

def test_no_public_name_is_also_a_submodule_name():
    submodules = {p.stem for p in PKG.glob("*.py")} | {
        p.name for p in PKG.iterdir() if p.is_dir() and p.name.isidentifier() and p.name != "__pycache__"} | {
        "data"}                                                       # data/, installed as rlsd_min/data
    assert "lab" in submodules and "tasks" in submodules
    assert set(rlsd_min.__all__) & submodules == set()
    assert set(rlsd_min._EXPORTS) <= submodules


_EVERY_SUBMODULE = r"""
import importlib, importlib.util, inspect, json, pathlib, sys
import rlsd_min
first = rlsd_min.verify                      # resolved before the submodules load, too
pkg = pathlib.Path(rlsd_min.__file__).parent
names = sorted(".".join(p.relative_to(pkg.parent).with_suffix("").parts).removesuffix(".__init__")
               for p in pkg.rglob("*.py") if "__pycache__" not in p.parts)
for name in names:
    if name.startswith("rlsd_min.integrations.trl") and importlib.util.find_spec("trl") is None:
        continue  # the optional trl extra is not installed here
    importlib.import_module(name)
import rlsd_min.tasks
from rlsd_min import verify, train, evaluate
bad = [n for n in rlsd_min.__all__ if getattr(rlsd_min, n, None) is None]
print(json.dumps(dict(
    imported=names,
    verify_is_the_verifier=rlsd_min.verify is rlsd_min.tasks.verify is verify is first,
    functions=[inspect.isfunction(f) for f in (verify, train, evaluate)],
    homes=[getattr(f, "__module__", type(f).__name__) for f in (verify, train, evaluate)],
    unresolved=bad,
    in_dir=sorted(set(rlsd_min.__all__) - set(dir(rlsd_min))),
    still_attributes={n: type(getattr(rlsd_min, n)).__name__ for n in rlsd_min.__all__
                      if inspect.ismodule(getattr(rlsd_min, n))},
)))
"""


def test_public_names_survive_importing_every_submodule():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = _run([sys.executable, "-c", _EVERY_SUBMODULE], env=env, cwd=REPO, timeout=300)
    got = json.loads(proc.stdout.splitlines()[-1])
    assert {"rlsd_min.lab.experiment", "rlsd_min.loop", "rlsd_min.lab.cli", "rlsd_min.__main__"} <= set(got["imported"])
    assert got["verify_is_the_verifier"]
    assert got["functions"] == [True, True, True]
    assert got["homes"] == ["rlsd_min.tasks", "rlsd_min.loop", "rlsd_min.evaluation"]
    assert got["unresolved"] == [] and got["in_dir"] == [] and got["still_attributes"] == {}


def test_every_public_name_resolves_from_its_home_module():
    for name in rlsd_min.__all__:
        home = importlib.import_module(f"rlsd_min.{rlsd_min._HOME[name]}")
        assert getattr(rlsd_min, name) is getattr(home, name), name
    with pytest.raises(AttributeError, match="no_such_name"):
        rlsd_min.no_such_name  # noqa: B018


def test_import_rlsd_min_loads_no_heavy_library():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = _run([sys.executable, "-c", "import json, sys, rlsd_min; print(json.dumps(sorted(sys.modules)))"],
                env=env, cwd=REPO, timeout=120)
    loaded = {m.split(".")[0] for m in json.loads(proc.stdout.splitlines()[-1])}
    assert loaded & {"torch", "transformers", "datasets", "tokenizers", "matplotlib", "numpy"} == set()
    assert {m for m in json.loads(proc.stdout.splitlines()[-1]) if m.startswith("rlsd_min.")} == set()


def test_a_submodule_is_an_attribute_of_the_package_after_a_bare_import():
    """`import rlsd_min; rlsd_min.config.default_profile()` works as a user expects, whatever
    was imported before, and never shadows a public name (rlsd_min.verify stays the verifier)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    code = ("import json, rlsd_min; print(json.dumps([rlsd_min.config.__name__, rlsd_min.lab.experiment.__name__ "
            "if hasattr(rlsd_min.lab, 'experiment') else rlsd_min.lab.__name__, rlsd_min.verify.__module__]))")
    proc = _run([sys.executable, "-c", code], env=env, cwd=REPO, timeout=120)
    assert json.loads(proc.stdout.splitlines()[-1]) == ["rlsd_min.config", "rlsd_min.lab", "rlsd_min.tasks"]


# --- one record per method -----------------------------------------------------------------------

def _method_name_lists() -> list:
    """(file, line, names) of every tuple, list, set or dict literal outside rlsd_min/methods.py
    that spells two or more method names: a second list of methods."""
    from rlsd_min.methods import METHODS

    found = []
    for path in sorted(PKG.rglob("*.py")):
        if path.name == "methods.py" and path.parent == PKG:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None) \
                if isinstance(node, (ast.Tuple, ast.List, ast.Set)) else None
            names = [i.value for i in items or () if isinstance(i, ast.Constant) and i.value in METHODS]
            if len(set(names)) >= 2:
                found.append((str(path.relative_to(REPO)), node.lineno, names))
    return found


def test_no_second_list_of_methods_in_the_package():
    assert _method_name_lists() == []


def test_the_records_drive_labels_the_demo_and_the_trl_names(monkeypatch, tmp_path):
    import dataclasses

    from rlsd_min.lab import cli, report
    from rlsd_min.methods import METHODS

    assert report.LABELS == {name: m.label for name, m in METHODS.items()}
    trained = []
    monkeypatch.setattr("rlsd_min.loop.train", lambda cfg, out: trained.append(cfg.method) or [{"step": 0, "eval_acc": 0.0}])
    monkeypatch.setattr("rlsd_min.tasks.ensure_data", lambda *a: None)
    monkeypatch.setattr(cli.os.path, "exists", lambda p: True)
    monkeypatch.setitem(METHODS, "grpo_opsd", dataclasses.replace(METHODS["grpo_opsd"], demo=True))
    monkeypatch.setitem(METHODS, "rlsd", dataclasses.replace(METHODS["rlsd"], demo=False))
    cli.cmd_demo(cli.argparse.Namespace(profile="ci", out=str(tmp_path)))
    assert trained == [m.name for m in METHODS.values() if m.demo] == ["grpo", "grpo_opsd", "sdpg"]
