"""Row filters mean what the pinned snapshot's schema says, at every step: renames, swapped names, NaN.

Each test compares the rows a filtered read returns with the rows themselves, filtered in
plain Python over an unfiltered read of the same snapshot.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from pipeline.data.reading import parse_filter, snapshot_schema
from pipeline.data.scan import plan_scan, read_row_group
from pipeline.data.snapshots import resolve_snapshot
from pipeline.data.specs import SnapshotRequest
from pipeline.errors import FilterError
from pipeline.lake.catalog import load_table
from pipeline.lake.ingest import append_arrow

TABLE = "demo.swapped"


def rows_of(catalog, snapshot_id: int, text: str | None) -> list[dict]:
    """Every row of the snapshot that the filter keeps, through icetrain's planner and reader, sorted by id."""
    table = load_table(catalog, TABLE)
    pinned = resolve_snapshot(table, SnapshotRequest(TABLE, snapshot_id=snapshot_id), "icetrain")
    schema = snapshot_schema(table, pinned)
    plan = plan_scan(table, pinned, schema, parse_filter(text, schema, pinned), tuple(f.name for f in schema.fields))
    read = [read_row_group(plan, group)[0] for group in plan.row_groups]
    return sorted(pa.concat_tables(read).to_pylist() if read else [], key=lambda row: row["id"])


def chunk(start: int, count: int, a: int, b: int, f: float) -> pa.Table:
    schema = pa.schema(
        [pa.field("id", pa.int64(), nullable=False), ("a", pa.int64()), ("b", pa.int64()), ("f", pa.float64())]
    )
    return pa.table(
        {"id": np.arange(start, start + count), "a": np.full(count, a), "b": np.full(count, b), "f": np.full(count, f)},
        schema=schema,
    )


@pytest.fixture
def swapped(catalog) -> tuple[int, int]:
    """Two files (a=10, b=0 and a=0, b=10), then ``a`` and ``b`` swap names, then a third file.

    Returns the snapshot ids before and after the swap.
    """
    append_arrow(catalog, TABLE, chunk(0, 10_000, a=10, b=0, f=0.0), source="test", identifier_fields=("id",))
    before = append_arrow(catalog, TABLE, chunk(10_000, 10_000, a=0, b=10, f=1.0), source="test")
    table = load_table(catalog, TABLE)
    with table.update_schema() as update:
        update.rename_column("a", "tmp")
    with table.update_schema() as update:
        update.rename_column("b", "a")
    with table.update_schema() as update:
        update.rename_column("tmp", "b")
    after = append_arrow(catalog, TABLE, chunk(20_000, 100, a=7, b=3, f=2.0), source="test", check=False)
    return before, after


@pytest.mark.parametrize(
    "text",
    [
        "a > 4 or id < 100",
        "a > 4",
        "b > 4",
        "a > 4 and id < 15000",
        "not (a <= 4)",
        "a in (10) or b = 10",
        "id < 100 or b > 4",
    ],
)
def test_a_filter_at_a_snapshot_before_two_columns_swapped_names_keeps_exactly_the_rows_it_names(
    catalog, swapped, text: str
) -> None:
    before, after = swapped
    everything = rows_of(catalog, before, None)
    assert len(everything) == 20_000
    for snapshot_id, rows in ((before, everything), (after, rows_of(catalog, after, None))):
        expected = [row for row in rows if _holds(text, row)]
        assert rows_of(catalog, snapshot_id, text) == expected, (snapshot_id, text)
    assert len(rows_of(catalog, before, "a > 4")) == 10_000  # the first file; PyIceberg alone prunes it away


def test_a_filter_on_a_column_renamed_since_reads_the_old_snapshot_by_its_old_name(catalog) -> None:
    first = append_arrow(catalog, TABLE, chunk(0, 1_000, a=1, b=2, f=0.5), source="test", identifier_fields=("id",))
    table = load_table(catalog, TABLE)
    with table.update_schema() as update:
        update.rename_column("b", "renamed")
    renamed = chunk(1_000, 10, a=1, b=2, f=0.5).rename_columns(["id", "a", "renamed", "f"])
    current = append_arrow(catalog, TABLE, renamed, source="test")
    assert len(rows_of(catalog, first, "b = 2 and id < 10")) == 10
    assert len(rows_of(catalog, current, "renamed = 2 and id < 10")) == 10
    assert len(rows_of(catalog, current, "renamed = 2")) == 1_010
    with pytest.raises(FilterError, match="renamed"):
        rows_of(catalog, first, "renamed = 2")


def test_nan_sorts_above_every_number_as_in_icebergs_reference_evaluator(catalog) -> None:
    values = [0.1, 0.6, math.nan, None, 1.5, math.nan, -math.inf, math.inf]
    schema = pa.schema([pa.field("id", pa.int64(), nullable=False), ("f", pa.float64())])
    append_arrow(
        catalog,
        TABLE,
        pa.table({"id": range(len(values)), "f": values}, schema=schema),
        source="test",
        identifier_fields=("id",),
        check=False,
    )
    only_nan = append_arrow(
        catalog,
        TABLE,
        pa.table({"id": [100, 101], "f": [math.nan, math.nan]}, schema=schema),
        source="test",
        check=False,
    )

    def ids(text: str) -> list[int]:
        return [row["id"] for row in rows_of(catalog, only_nan, text)]

    assert ids("f > 0.5") == [1, 2, 4, 5, 7, 100, 101]  # NaN > 0.5, in a mixed file and in a file of NaN only
    assert ids("f >= 1.5") == [2, 4, 5, 7, 100, 101]
    assert ids("f < 0.5") == [0, 6]
    assert ids("f <= 0.6") == [0, 1, 6]
    assert ids("not (f > 0.5)") == [0, 6]
    assert ids("f = 0.6") == [1]
    assert ids("f != 0.6") == [0, 2, 4, 5, 6, 7, 100, 101]
    assert ids("f is nan") == [2, 5, 100, 101]
    assert ids("f is not nan and f > 0.5") == [1, 4, 7]


def _holds(text: str, row: dict) -> bool:
    """The filter, evaluated row by row in Python with the snapshot's names (the ground truth)."""
    python = text.replace(" = ", " == ").replace(" in (10)", " in (10,)")
    return bool(eval(python, {}, dict(row)))
