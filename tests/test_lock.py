"""Installs are reproducible: the environment is exactly requirements.lock, and the main dependencies have upper bounds."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]


def locked() -> dict[str, str]:
    lines = (ROOT / "requirements.lock").read_text().splitlines()
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    return {canonicalize_name(name): version for name, version in pins}


def test_every_installed_dependency_is_the_locked_version() -> None:
    wrong = {}
    for name, version in locked().items():
        installed = metadata.version(name)
        if installed.split("+")[0] != version:
            wrong[name] = (installed, version)
    assert not wrong, (
        f"installed versions differ from requirements.lock (run make install, or make lock to move): {wrong}"
    )


def test_the_lock_covers_every_requirement_of_icetrain_and_its_extras() -> None:
    requirements = [Requirement(text) for text in metadata.requires("icetrain") or []]
    missing = {canonicalize_name(r.name) for r in requirements} - set(locked())
    assert not missing, f"requirements.lock lacks {sorted(missing)}: run make lock"


def test_the_main_dependencies_have_upper_bounds() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [Requirement(text) for text in [*project["dependencies"], *project["optional-dependencies"]["postgres"]]]
    main = {"pyiceberg", "duckdb", "mlflow", "dagster", "dagster-webserver", "dagster-postgres", "pyarrow"}
    unbounded = [
        str(r)
        for r in declared
        if canonicalize_name(r.name) in main and not any(re.match("<", s.operator) for s in r.specifier)
    ]
    assert not unbounded, f"give these an upper bound: {unbounded}"
