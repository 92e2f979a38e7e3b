"""Writers race: 8 processes append to one table through SQLite and PostgreSQL catalogs, and every append lands once."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path

import pytest
from pyiceberg.catalog import load_catalog

from pipeline.lake.ingest import APPEND_ID_PROPERTY, append_arrow
from tests.postgres import postgres_cluster
from tests.writers import ROWS_PER_APPEND, rows, write

WRITERS, APPENDS = 8, 12


@pytest.fixture(params=["sqlite", "postgresql"])
def catalog_properties(request, tmp_path: Path):
    warehouse = (tmp_path / "warehouse").as_uri()
    if request.param == "sqlite":
        yield {"type": "sql", "uri": f"sqlite:///{tmp_path / 'catalog.db'}", "warehouse": warehouse}
    else:
        with postgres_cluster() as uri:
            yield {"type": "sql", "uri": uri, "warehouse": warehouse}


def test_eight_writers_racing_to_create_and_append_lose_nothing_and_duplicate_nothing(catalog_properties) -> None:
    with multiprocessing.get_context("spawn").Pool(WRITERS) as pool:
        results = pool.starmap(
            write, [(catalog_properties, "race.events", writer, APPENDS) for writer in range(WRITERS)]
        )

    table = load_catalog("race", **catalog_properties).load_table("race.events")
    append_ids = Counter(s.summary.additional_properties[APPEND_ID_PROPERTY] for s in table.snapshots())
    assert append_ids == Counter({f"w{w}-{n}": 1 for w in range(WRITERS) for n in range(APPENDS)})
    assert sorted(sid for snapshot_ids in results for sid in snapshot_ids) == sorted(
        s.snapshot_id for s in table.snapshots()
    )
    ids = table.scan().to_arrow().column("id").to_pylist()
    assert sorted(ids) == sorted(
        i for w in range(WRITERS) for n in range(APPENDS) for i in rows(w, n).column("id").to_pylist()
    )
    assert len(ids) == WRITERS * APPENDS * ROWS_PER_APPEND


def test_an_append_retried_with_its_append_id_is_not_written_twice(tmp_path: Path) -> None:
    catalog = load_catalog(
        "retry", type="sql", uri=f"sqlite:///{tmp_path / 'catalog.db'}", warehouse=(tmp_path / "warehouse").as_uri()
    )
    first = append_arrow(catalog, "race.events", rows(0, 0), source="test", append_id="nightly-2026-11-24")
    again = append_arrow(catalog, "race.events", rows(0, 0), source="test", append_id="nightly-2026-11-24")

    table = catalog.load_table("race.events")
    assert again == first and len(table.snapshots()) == 1
    assert table.scan().to_arrow().num_rows == ROWS_PER_APPEND
