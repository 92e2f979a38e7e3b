"""Whatever is asked (id, tag, branch, as-of, latest), one snapshot id is resolved."""

from datetime import UTC, datetime, timedelta

import pytest

from pipeline.data.snapshots import list_snapshots, resolve_snapshot
from pipeline.data.specs import SnapshotRequest
from pipeline.errors import ConfigError, EmptyDataError, SnapshotNotFoundError
from pipeline.lake.catalog import load_table
from pipeline.lake.refs import create_tag
from tests.conftest import write_appends


@pytest.fixture
def rows_table(catalog):
    ids = write_appends(catalog, "demo.rows", [10, 20, 30])
    return load_table(catalog, "demo.rows"), ids


def resolve(table, **asked):
    return resolve_snapshot(table, SnapshotRequest("demo.rows", **asked), "icetrain")


def test_latest_is_the_current_snapshot(rows_table) -> None:
    table, ids = rows_table
    pinned = resolve(table)
    assert (pinned.snapshot_id, pinned.asked_by, pinned.catalog) == (ids[-1], "latest", "icetrain")


def test_an_explicit_id_resolves_to_itself(rows_table) -> None:
    table, ids = rows_table
    pinned = resolve(table, snapshot_id=ids[0])
    assert (pinned.snapshot_id, pinned.asked_by, pinned.asked_value) == (ids[0], "id", str(ids[0]))


def test_tags_and_branches_resolve_to_the_snapshot_they_point_at(rows_table) -> None:
    table, ids = rows_table
    create_tag(table, "v1", ids[1])
    table.manage_snapshots().create_branch(snapshot_id=ids[0], branch_name="dev").commit()
    table = table.refresh()

    tagged, branched = resolve(table, ref="v1"), resolve(table, ref="dev")
    assert (tagged.snapshot_id, tagged.asked_by) == (ids[1], "tag")
    assert (branched.snapshot_id, branched.asked_by) == (ids[0], "branch")


def test_as_of_picks_the_snapshot_current_at_that_time(rows_table) -> None:
    table, ids = rows_table
    second = table.snapshot_by_id(ids[1])
    at_second = datetime.fromtimestamp(second.timestamp_ms / 1000, tz=UTC)
    assert resolve(table, as_of=at_second).snapshot_id == ids[1]
    assert resolve(table, as_of=at_second + timedelta(days=1)).snapshot_id == ids[2]


def test_unknown_ids_refs_and_early_times_list_what_exists(rows_table) -> None:
    table, ids = rows_table
    with pytest.raises(SnapshotNotFoundError, match=str(ids[-1])):
        resolve(table, snapshot_id=12345)
    with pytest.raises(SnapshotNotFoundError, match="refs: main"):
        resolve(table, ref="nope")
    with pytest.raises(SnapshotNotFoundError, match=f"first snapshot {ids[0]}"):
        resolve(table, as_of=datetime(2000, 1, 1, tzinfo=UTC))


def test_asking_two_ways_at_once_is_refused() -> None:
    with pytest.raises(ConfigError, match="at most one"):
        SnapshotRequest("demo.rows", snapshot_id=1, ref="v1")


def test_a_table_without_snapshots_is_empty(catalog) -> None:
    catalog.create_namespace_if_not_exists("demo")
    table = catalog.create_table("demo.rows", schema=write_schema())
    with pytest.raises(EmptyDataError, match="no snapshots"):
        resolve(table)


def test_history_lists_rows_refs_and_sources(rows_table) -> None:
    table, ids = rows_table
    create_tag(table, "v1", ids[0])
    history = list_snapshots(table.refresh())
    assert [s.snapshot_id for s in history] == ids
    assert [(s.added_rows, s.total_rows) for s in history] == [(10, 10), (20, 30), (30, 60)]
    assert history[0].refs == ("v1",) and history[-1].refs == ("main",)
    assert {s.source for s in history} == {"test"}


def write_schema():
    from tests.conftest import tabular_rows

    return tabular_rows(0, 1).schema
