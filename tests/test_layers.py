"""The floor plan holds: which layer may import what, and no import circle (docs/architecture.md, "Layers").

Every import counts, at module level or inside a function, read from the source with ``ast``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "training", "assets")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, absolute names, wherever the import statement stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


SOURCES = {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}
IMPORTS = {name: imports_of(path) for name, path in SOURCES.items()}


def offenders(prefix: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {}
    for name, imported in IMPORTS.items():
        if name == prefix or name.startswith(prefix + "."):
            bad = sorted(i for i in imported if i.split(".")[0] in forbidden)
            if bad:
                found[name] = bad
    return found


def test_the_reader_imports_neither_mlflow_nor_dagster() -> None:
    assert offenders("pipeline.data", ("mlflow", "dagster", "dagster_shared")) == {}


@pytest.mark.parametrize("layer", ["pipeline", "training"])
def test_the_library_and_the_train_script_never_import_dagster(layer: str) -> None:
    assert offenders(layer, ("dagster", "dagster_shared", "dagster_postgres", "dagster_webserver")) == {}


def test_the_lake_imports_no_mlflow() -> None:
    assert offenders("pipeline.lake", ("mlflow", "dagster")) == {}


def test_no_private_dagster_import_outside_the_tests() -> None:
    private = {name: sorted(i for i in imported if i.startswith("dagster._")) for name, imported in IMPORTS.items()}
    assert {name: found for name, found in private.items() if found} == {}


def test_one_place_builds_the_mlflow_client() -> None:
    """``pipeline.tracking.client.tracking_client``; everyone else is handed one or asks it."""
    builders = sorted(
        str(path.relative_to(ROOT))
        for package in (*PACKAGES, "icetrain")
        for path in (ROOT / package).rglob("*.py")
        if "MlflowClient(" in path.read_text()
    )
    assert builders == ["pipeline/tracking/client.py"]


def test_the_import_graph_of_pipeline_training_and_assets_has_no_circle() -> None:
    graph = {name: {target for target in _local(imported)} - {name} for name, imported in IMPORTS.items()}
    circle = _find_circle(graph)
    assert circle is None, " -> ".join(circle or [])


def test_the_reader_is_the_floor_the_lake_and_tracking_build_on() -> None:
    """``pipeline.data`` imports nothing of the lake, tracking, config or demo layers."""
    upward = {
        name: sorted(
            i
            for i in imported
            if i.startswith(("pipeline.lake", "pipeline.tracking", "pipeline.config", "pipeline.demo"))
        )
        for name, imported in IMPORTS.items()
        if name.startswith("pipeline.data")
    }
    assert {name: found for name, found in upward.items() if found} == {}


def _local(imported: set[str]) -> set[str]:
    """The modules of this house among the imported names (``pipeline.data.scan.plan_scan`` is ``pipeline.data.scan``)."""
    local = set()
    for name in imported:
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in SOURCES:
                local.add(candidate)
                break
    return local


def _find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as a path of modules, or None (depth-first search with colours)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None
