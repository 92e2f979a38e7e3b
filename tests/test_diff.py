"""icetrain diff: rows, files and schema changes between snapshots, against hand-counted changes."""

from pyiceberg.expressions import In
from pyiceberg.types import DoubleType

from pipeline.lake.catalog import load_table
from pipeline.lake.diff import diff_snapshots
from pipeline.lake.ingest import append_arrow
from tests.conftest import tabular_rows, write_appends
from tests.test_cli import icetrain


def current(catalog, name: str = "demo.rows") -> int:
    return load_table(catalog, name).current_snapshot().snapshot_id


def test_appends_deletes_and_a_rename_are_counted(catalog) -> None:
    first, second = write_appends(catalog, "demo.rows", [100, 50])
    table = load_table(catalog, "demo.rows")
    table.delete(In("id", [3, 17, 120, 149]))
    deleted = current(catalog)
    with load_table(catalog, "demo.rows").update_schema() as update:
        update.rename_column("x1", "feature_1")
        update.add_column("x3", DoubleType())
    renamed_rows = tabular_rows(150, 30).rename_columns(["id", "feature_1", "x2", "label"])
    append_arrow(catalog, "demo.rows", renamed_rows.append_column("x3", renamed_rows["x2"]), source="test")
    last = current(catalog)
    table = load_table(catalog, "demo.rows")

    appended = diff_snapshots(table, "demo.rows", first, second)
    assert (appended.rows_added, appended.rows_deleted, appended.files_added, appended.files_removed) == (50, 0, 1, 0)
    assert appended.schema_changes == ()

    removed = diff_snapshots(table, "demo.rows", second, deleted)
    assert (removed.rows_added, removed.rows_deleted, removed.rows_to) == (0, 4, 146)
    assert removed.files_removed == 2 and removed.method == "read by identifier field(s) id"

    everything = diff_snapshots(table, "demo.rows", first, last)
    assert (everything.rows_added, everything.rows_deleted) == (50 - 2 + 30, 2)
    assert everything.schema_changes == ("renamed x1 -> feature_1 (field 2)", "added x3 double (field 5)")


def test_the_diff_command_takes_ids_or_tags_and_says_which_exist(catalog) -> None:
    first, second = write_appends(catalog, "demo.rows", [40, 20])
    load_table(catalog, "demo.rows").manage_snapshots().create_tag(first, "v1").commit()

    out = icetrain("diff", "demo.rows", "v1", str(second))
    assert out.returncode == 0, out.stderr
    assert "rows: +20 added, -0 deleted" in out.stdout and "schema: unchanged" in out.stdout

    bad = icetrain("diff", "demo.rows", "v9", str(second))
    assert (
        bad.returncode == 1
        and bad.stderr.strip()
        == "icetrain: error: 'v9' is neither a snapshot id nor a ref of 'demo.rows'; refs: main, v1"
    )


def test_incremental_training_reads_only_the_rows_appended_since_a_snapshot_and_replays(settings, catalog) -> None:
    from pipeline.tracking.lineage import replay_config
    from tests.conftest import config_for
    from training.train import train

    first, _, last = write_appends(catalog, "demo.rows", [90, 60, 30])

    result = train(settings, config_for("demo.rows", f"data.since_snapshot_id={first}"), progress_bar=False)
    assert result.row_count == 90
    replayed = replay_config(settings, result.run_id)
    assert (replayed.data.since_snapshot_id, replayed.data.snapshot_id) == (first, last)
    again = train(settings, replayed, progress_bar=False)
    assert (again.digest, again.history) == (result.digest, result.history)
    everything = train(settings, config_for("demo.rows"), progress_bar=False)
    assert everything.digest != result.digest

    out = icetrain(
        "train", "--table", "demo.rows", "--snapshot-id", str(first), "--set", f"data.since_snapshot_id={last}"
    )
    assert out.returncode == 1 and f"data.since_snapshot_id {last} is not an ancestor of snapshot {first}" in out.stderr
