"""The same behaviour on every catalog icetrain is configured for: embedded SQLite and PostgreSQL."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.config.settings import Settings
from pipeline.data.loading import open_loader
from pipeline.data.snapshots import resolve_snapshot
from pipeline.data.specs import LoaderConfig, ReadSpec, SnapshotRequest
from pipeline.lake.catalog import load_table, open_catalog
from tests.conftest import all_runs, config_for, write_appends
from tests.postgres import postgres_cluster


@pytest.fixture(scope="module")
def postgres_uri() -> Iterator[str]:
    with postgres_cluster() as uri:
        yield uri


@pytest.fixture(params=["embedded-sqlite", "postgresql"])
def configured(request, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose catalog is the embedded default, or a PostgreSQL SQL catalog named by PyIceberg config."""
    if request.param == "embedded-sqlite":
        return settings
    uri = request.getfixturevalue("postgres_uri")
    monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__TYPE", "sql")
    monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__URI", uri)
    monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__WAREHOUSE", (tmp_path / "lake").as_uri())
    monkeypatch.setenv("ICETRAIN_CATALOG", "lake")
    return Settings.from_env()


def test_time_travel_and_lineage_work_on_every_catalog(configured: Settings, request) -> None:
    catalog = open_catalog(configured)
    backend = {"embedded-sqlite": "sqlite", "postgresql": "postgresql"}[request.node.callspec.id]
    assert catalog.engine.dialect.name == backend
    table_name = f"demo.rows_{request.node.callspec.id.replace('-', '_')}"
    ids = write_appends(catalog, table_name, [40, 25])
    table = load_table(catalog, table_name)

    first = resolve_snapshot(table, SnapshotRequest(table_name, snapshot_id=ids[0]), configured.catalog_name)
    assert sum(len(labels) for _, labels in open_loader(table, first, ReadSpec(), LoaderConfig(batch_size=16))) == 40

    from training.train import train

    result = train(
        configured, config_for(table_name, f"data.snapshot_id={ids[0]}", "optim.epochs=1"), progress_bar=False
    )
    (run,) = all_runs(configured)
    assert run.data.tags["icetrain.catalog"] == configured.catalog_name
    assert run.data.tags["icetrain.snapshot_id"] == str(ids[0])
    assert result.row_count == 40
