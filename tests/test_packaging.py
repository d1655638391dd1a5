"""environment.yml and pyproject.toml declare the same dependencies."""

import pathlib
import tomllib

import yaml

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
