"""constraints.txt is the lock: it pins every package the project asks for, `make install` and
both images install through it, and the environment the tests run in is exactly the lock."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _name(raw: str) -> str:
    return re.sub(r"[-_.]+", "-", raw).lower()


def locked() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[_name(name)] = version
    return pins


def test_every_dependency_of_the_project_is_pinned() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        wanted += [req for req in extra if not req.startswith("squash[")]
    pins = locked()
    missing = [req for req in wanted if _name(Requirement(req).name) not in pins]
    assert not missing, f"run `make lock`: {missing} are not in constraints.txt"
    # Each pin satisfies the range pyproject.toml asks for.
    for req in map(Requirement, wanted):
        assert req.specifier.contains(pins[_name(req.name)], prereleases=True), req


def test_the_tested_environment_is_the_lock() -> None:
    drift = {}
    for name, version in locked().items():
        try:
            installed = metadata.version(name).split("+")[0]  # torch's local label: +cpu
        except metadata.PackageNotFoundError:
            installed = None
        if installed != version:
            drift[name] = (version, installed)
    assert not drift, f"installed differs from constraints.txt (locked, installed): {drift}"


def test_make_and_the_images_install_through_the_lock() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert '-c constraints.txt -e ".[dev]"' in makefile
    for name in ("api.Dockerfile", "worker.Dockerfile"):
        text = (ROOT / "docker" / name).read_text()
        assert "constraints.txt" in re.search(r"^COPY pyproject.*$", text, re.M)[0], name  # type: ignore[index]
        assert "pip install -c constraints.txt" in text, name
