"""Appends create the table on first write and one snapshot per append, labelled with their source."""

from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from pipeline.errors import IngestError
from pipeline.lake.catalog import load_table
from pipeline.lake.ingest import RUN_ID_PROPERTY, SOURCE_PROPERTY, append_arrow, append_file, ensure_namespace
from tests.conftest import tabular_rows


def test_each_append_is_one_snapshot_recording_source_and_run_id(catalog) -> None:
    first = append_arrow(catalog, "demo.rows", tabular_rows(0, 10), source="unit-test", run_id="run-123")
    second = append_arrow(catalog, "demo.rows", tabular_rows(10, 4), source="unit-test")

    table = load_table(catalog, "demo.rows")
    assert [s.snapshot_id for s in table.snapshots()] == [first, second]
    summary = table.snapshot_by_id(first).summary.additional_properties
    assert summary[SOURCE_PROPERTY] == "unit-test"
    assert summary[RUN_ID_PROPERTY] == "run-123"
    assert summary["added-records"] == "10"
    assert table.snapshot_by_id(second).summary.additional_properties["total-records"] == "14"


def test_parquet_and_csv_files_append_with_their_path_as_source(catalog, tmp_path: Path) -> None:
    parquet_file, csv_file = tmp_path / "a.parquet", tmp_path / "b.csv"
    pq.write_table(tabular_rows(0, 6), parquet_file)
    pa_csv.write_csv(tabular_rows(6, 3).cast(tabular_rows(0, 1).schema), csv_file)

    append_file(catalog, "demo.files", parquet_file)
    append_file(catalog, "demo.files", csv_file)

    table = load_table(catalog, "demo.files")
    sources = [s.summary.additional_properties[SOURCE_PROPERTY] for s in table.snapshots()]
    assert sources == [str(parquet_file), str(csv_file)]
    assert sorted(table.scan().to_arrow()["id"].to_pylist()) == list(range(9))


def test_a_mismatched_schema_commits_nothing(catalog) -> None:
    append_arrow(catalog, "demo.rows", tabular_rows(0, 5), source="test")
    before = load_table(catalog, "demo.rows").metadata_location

    with pytest.raises(IngestError, match="demo.rows"):
        append_arrow(catalog, "demo.rows", pa.table({"other": ["a", "b"]}), source="test")

    assert load_table(catalog, "demo.rows").metadata_location == before


def test_a_failed_first_append_leaves_no_table(catalog) -> None:
    unsupported = pa.table({"span": pa.array([(1, 2, 3)], pa.month_day_nano_interval())})
    with pytest.raises(IngestError):
        append_arrow(catalog, "demo.bad", unsupported, source="test")
    assert not catalog.table_exists("demo.bad")


def test_empty_data_and_missing_files_are_refused(catalog, tmp_path: Path) -> None:
    with pytest.raises(IngestError, match="no rows"):
        append_arrow(catalog, "demo.rows", tabular_rows(0, 0), source="test")
    with pytest.raises(IngestError, match="no such file"):
        append_file(catalog, "demo.rows", tmp_path / "missing.csv")
    assert not catalog.table_exists("demo.rows")


def test_the_first_file_can_declare_identifier_fields(settings, catalog, tmp_path) -> None:
    import pyarrow.parquet as pq

    from pipeline.lake.ingest import append_file
    from tests.conftest import tabular_rows

    nullable = tabular_rows(0, 10).cast(pa.schema([pa.field(f.name, f.type) for f in tabular_rows(0, 1).schema]))
    pq.write_table(nullable, tmp_path / "rows.parquet")
    append_file(catalog, "demo.keyed", tmp_path / "rows.parquet", identifier_fields=("id",))
    schema = catalog.load_table("demo.keyed").schema()
    assert [schema.find_column_name(i) for i in schema.identifier_field_ids] == ["id"]

    with pytest.raises(IngestError, match="identifier column 'key' is not in the data"):
        append_file(catalog, "demo.other", tmp_path / "rows.parquet", identifier_fields=("key",))
    assert not catalog.table_exists("demo.other")


@pytest.fixture
def contracted(catalog) -> str:
    """A table whose first append declares an identifier and the classes 0, 1, 2."""
    from pipeline.data.tensors import label_classes_property

    append_arrow(
        catalog,
        "demo.contract",
        tabular_rows(0, 30),
        source="test",
        identifier_fields=("id",),
        table_properties=label_classes_property([0, 1, 2]),
    )
    return "demo.contract"


def broken(change: str) -> pa.Table:
    rows = tabular_rows(100, 10).to_pydict()
    if change == "missing":
        del rows["x2"]
    elif change == "nan":
        rows["x2"][3] = float("nan")
        rows["x1"][4] = float("inf")
    elif change == "outside":
        rows["label"][:4] = [7, 7, 9, 3]
    elif change == "null-id":
        rows["id"][0] = None
    elif change == "null-label":
        rows["label"][2] = rows["label"][5] = None
    elif change == "missing-two":
        del rows["x1"], rows["x2"]
    schema = pa.schema([field.with_nullable(True) for field in tabular_rows(0, 1).schema if field.name in rows])
    return pa.table(rows, schema=schema)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("missing", "column 'x2' is missing from the data; nothing"),
        ("missing-two", "column 'x1' is missing from the data (and 1 more: 'x2')"),
        ("null-label", "label column 'label' has 2 null values"),
        ("nan", "column 'x1' has 0 NaN and 1 infinite values"),
        ("outside", "label column 'label' has 4 values outside the declared classes (0, 1, 2)"),
        ("null-id", "column 'id' is required and has 1 null values"),
    ],
)
def test_data_that_breaks_the_table_contract_is_refused_naming_the_column_and_count(
    catalog, contracted, change: str, message: str
) -> None:
    with pytest.raises(IngestError) as raised:
        append_arrow(catalog, contracted, broken(change), source="test")
    assert message in str(raised.value) and "nothing was written" in str(raised.value)
    assert len(load_table(catalog, contracted).snapshots()) == 1


def test_unchecked_appends_commit_what_they_are_given(catalog, contracted) -> None:
    append_arrow(catalog, contracted, broken("nan"), source="test", check=False)
    assert load_table(catalog, contracted).scan().to_arrow().num_rows == 40


def test_several_files_commit_as_one_snapshot_or_not_at_all(catalog, contracted, tmp_path: Path) -> None:
    from pipeline.lake.ingest import append_files

    good, bad, more = tmp_path / "good.parquet", tmp_path / "bad.parquet", tmp_path / "more.parquet"
    pq.write_table(tabular_rows(100, 5), good)
    pq.write_table(broken("outside"), bad)
    pq.write_table(tabular_rows(200, 5), more)

    with pytest.raises(IngestError, match="outside the declared classes"):
        append_files(catalog, contracted, [good, bad, more])
    assert len(load_table(catalog, contracted).snapshots()) == 1, "the good file is not committed without the others"

    snapshot_id = append_files(catalog, contracted, [good, more])
    table = load_table(catalog, contracted)
    assert [s.snapshot_id for s in table.snapshots()][-1] == snapshot_id and len(table.snapshots()) == 2
    assert table.snapshot_by_id(snapshot_id).summary.additional_properties[SOURCE_PROPERTY] == f"{good}, {more}"


def test_losing_the_race_to_create_a_namespace_is_not_an_error(catalog, monkeypatch) -> None:
    catalog.create_namespace("raced")
    real = catalog.namespace_exists
    checks = []

    def first_check_misses(namespace):  # the loser checked before the winner's insert landed
        checks.append(namespace)
        return False if len(checks) == 1 else real(namespace)

    monkeypatch.setattr(catalog, "namespace_exists", first_check_misses)
    ensure_namespace(catalog, "raced")
    assert len(checks) == 2 and real("raced")
