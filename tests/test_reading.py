"""Reading a pinned snapshot: exact rows after later commits, filter, projection, SQL, tensors."""

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch
from pyiceberg.expressions import EqualTo
from pyiceberg.types import DoubleType

from pipeline.data.loading import open_loader
from pipeline.data.reading import prepare_read
from pipeline.data.snapshots import resolve_snapshot
from pipeline.data.specs import LoaderConfig, ReadSpec, SnapshotRequest
from pipeline.data.transform import sandboxed_connection
from pipeline.errors import ColumnError, EmptyDataError, FilterError, LabelError, TransformError
from pipeline.lake.catalog import load_table
from pipeline.lake.ingest import append_arrow
from tests.conftest import tabular_rows, write_appends


def pin(catalog, identifier="demo.rows", **asked):
    table = load_table(catalog, identifier)
    return table, resolve_snapshot(table, SnapshotRequest(identifier, **asked), "icetrain")


def read_all(table, pinned, spec):
    """Every row of the pinned snapshot, in the loader's unshuffled order, as (features, labels)."""
    batches = list(open_loader(table, pinned, spec, LoaderConfig(shuffle=False, batch_size=64)))
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])


def read_ids(catalog, snapshot_id, spec=ReadSpec(features=("id",))):
    table, pinned = pin(catalog, snapshot_id=snapshot_id)
    return sorted(int(v) for v in read_all(table, pinned, spec)[0][:, 0])


def test_each_snapshot_reads_exactly_its_own_rows_after_later_commits(catalog) -> None:
    ids = write_appends(catalog, "demo.rows", [10, 20, 30])
    load_table(catalog, "demo.rows").delete(EqualTo("id", 3))

    assert read_ids(catalog, ids[0]) == list(range(10))
    assert read_ids(catalog, ids[1]) == list(range(30))
    assert read_ids(catalog, ids[2]) == list(range(60))
    assert read_ids(catalog, load_table(catalog, "demo.rows").current_snapshot().snapshot_id) == [
        i for i in range(60) if i != 3
    ]


def test_old_snapshots_keep_their_schema_after_a_column_is_added(catalog) -> None:
    ids = write_appends(catalog, "demo.rows", [5])
    table = load_table(catalog, "demo.rows")
    with table.update_schema() as update:
        update.add_column("x3", DoubleType())
    _, pinned = pin(catalog, snapshot_id=ids[0])
    assert prepare_read(load_table(catalog, "demo.rows"), pinned, ReadSpec()).layout.features == ("x1", "x2")


def test_filter_and_projection_are_pushed_into_the_scan(catalog) -> None:
    write_appends(catalog, "demo.rows", [30])
    table, pinned = pin(catalog)
    read = prepare_read(table, pinned, ReadSpec(features=("x1",), row_filter="id >= 20 and label = 1"))
    assert sorted(f.name for f in read.plan.read_schema.fields) == ["id", "label", "x1"]
    features, labels = read_all(table, pinned, read.spec)
    assert features.shape == (len([i for i in range(20, 30) if i % 3 == 1]), 1)
    assert set(labels.tolist()) == {1}  # integer labels are their own class indices, whatever the filter keeps


def test_a_filter_never_changes_the_label_vocabulary(catalog) -> None:
    write_appends(catalog, "demo.rows", [30])
    table, pinned = pin(catalog)
    everything = open_loader(table, pinned, ReadSpec()).vocabulary
    without_one = open_loader(table, pinned, ReadSpec(row_filter="label != 1")).vocabulary
    assert everything.classes == without_one.classes == (0, 1, 2)


def test_a_filter_never_changes_a_text_label_vocabulary(catalog) -> None:
    rows = tabular_rows(0, 30)
    names = pa.array(["cat", "dog", "emu"])
    rows = rows.set_column(3, "label", pc.take(names, pa.array(rows["label"].to_numpy())))
    append_arrow(catalog, "demo.words", rows, source="test")
    table = load_table(catalog, "demo.words")
    pinned = resolve_snapshot(table, SnapshotRequest("demo.words"), "icetrain")
    assert open_loader(table, pinned, ReadSpec(row_filter="label != 'dog'")).vocabulary.classes == ("cat", "dog", "emu")


def test_tabular_features_become_float_matrices(catalog) -> None:
    write_appends(catalog, "demo.rows", [12])
    table, pinned = pin(catalog)
    assert prepare_read(table, pinned, ReadSpec()).layout.features == ("x1", "x2")  # id is the identifier field
    features, labels = read_all(table, pinned, ReadSpec())
    assert features.shape == (12, 2) and features.dtype == torch.float32
    assert sorted(labels.tolist()) == sorted(i % 3 for i in range(12))


def test_digit_images_become_b_1_8_8_tensors_matching_sklearn(catalog, digits) -> None:
    from sklearn.datasets import load_digits

    table, pinned = pin(catalog, "demo.digits")
    features, labels = read_all(table, pinned, ReadSpec(row_filter="id < 5"))
    assert features.shape == (5, 1, 8, 8)
    expected = torch.from_numpy(load_digits().images[:5]).float() / 16
    assert torch.allclose(features[:, 0], expected)
    assert labels.tolist() == load_digits().target[:5].tolist()


def test_sql_transform_runs_on_the_pinned_rows_only(catalog) -> None:
    ids = write_appends(catalog, "demo.rows", [10, 10])
    table, pinned = pin(catalog, snapshot_id=ids[0])
    spec = ReadSpec(features=("x2", "twice"), sql="select x2, id * 2 as twice, label from snapshot where id % 2 = 0")
    features, _ = read_all(table, pinned, spec)
    assert sorted(features[:, 1].tolist()) == [0, 4, 8, 12, 16]


def test_the_sql_sandbox_refuses_files_databases_extensions_and_settings() -> None:
    connection = sandboxed_connection()
    for forbidden in (
        "select * from read_csv('/etc/passwd')",
        "attach '/tmp/icetrain-forbidden.db'",
        "copy (select 1) to '/tmp/icetrain-forbidden.csv'",
        "install httpfs",
        "set enable_external_access = true",
    ):
        with pytest.raises(Exception, match="(?i)permission|cannot change|disabled"):
            connection.sql(forbidden)


@pytest.mark.parametrize(
    ("spec", "error", "message"),
    [
        (ReadSpec(row_filter="label >>> 3"), FilterError, "cannot parse row filter"),
        (ReadSpec(row_filter="nope > 3"), FilterError, "columns: id, x1, x2, label"),
        (ReadSpec(label="target"), LabelError, "label column 'target' not found"),
        (ReadSpec(features=("x9",)), ColumnError, "x9"),
        (ReadSpec(row_filter="id > 1000"), EmptyDataError, "no rows matching filter"),
        (ReadSpec(sql="select * from snapshot where nonsense > 1"), TransformError, "SQL transform failed"),
        (ReadSpec(sql="select * from read_csv('/etc/passwd')"), TransformError, "it must read FROM snapshot only"),
    ],
)
def test_bad_read_specs_fail_with_one_line_errors(catalog, spec, error, message) -> None:
    write_appends(catalog, "demo.rows", [9])
    table, pinned = pin(catalog)
    with pytest.raises(error, match=message) as raised:
        open_loader(table, pinned, spec)
    assert "\n" not in str(raised.value)


def test_null_labels_are_refused(catalog) -> None:
    rows = tabular_rows(0, 4).set_column(3, "label", pa.array([0, None, 1, 2], pa.int64()))
    append_arrow(catalog, "demo.rows", rows, source="test")
    table, pinned = pin(catalog)
    with pytest.raises(LabelError, match="1 null values"):
        open_loader(table, pinned, ReadSpec())


def test_a_feature_with_nulls_is_refused_with_the_count_of_the_whole_selection(catalog) -> None:
    from pipeline.errors import NullFeatureError

    for start, holes in ((0, [1, 4, 9]), (50, [51, 60, 70, 99])):
        rows = tabular_rows(start, 50)
        x1 = rows.column("x1").to_pylist()
        for hole in holes:
            x1[hole - start] = None
        append_arrow(
            catalog,
            "demo.rows",
            rows.set_column(1, "x1", pa.array(x1, pa.float32())),
            source="test",
            identifier_fields=("id",) if start == 0 else (),
            check=False,
        )
    table, pinned = pin(catalog)
    with pytest.raises(NullFeatureError) as raised:
        read_all(table, pinned, ReadSpec())
    assert (
        f"feature column 'x1' has 7 null values in the rows selected from snapshot {pinned.snapshot_id} of 'demo.rows'"
        in str(raised.value)
    )
    with pytest.raises(NullFeatureError, match="has 4 null values"):
        read_all(table, pinned, ReadSpec(row_filter="id >= 50"))
