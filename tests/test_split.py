"""A row keeps its train/validation side across snapshots, even when its file is rewritten."""

import numpy as np
import pyarrow as pa
import pytest
from pyiceberg.expressions import GreaterThan, In, Or

from pipeline.data.loading import open_loader
from pipeline.data.reading import prepare_read
from pipeline.data.snapshots import resolve_snapshot
from pipeline.data.specs import LoaderConfig, ReadSpec, SnapshotRequest
from pipeline.data.split import identifier_keys
from pipeline.errors import ConfigError
from pipeline.lake.catalog import load_table
from pipeline.lake.ingest import append_arrow
from tests.conftest import tabular_rows, write_appends


def side_of_each_row(catalog, table_name: str, snapshot_id: int, split_by: str = "auto") -> dict[str, set[int]]:
    """The ids in the train and in the validation split of one snapshot."""
    table = load_table(catalog, table_name)
    pinned = resolve_snapshot(table, SnapshotRequest(table_name, snapshot_id=snapshot_id), "icetrain")
    spec = ReadSpec(features=("id",), split_by=split_by)
    sides = {}
    for split in ("train", "val"):
        loader = open_loader(
            table, pinned, spec, LoaderConfig(split=split, val_fraction=0.3, shuffle=False, batch_size=512)
        )
        sides[split] = {int(v) for features, _ in loader for v in features[:, 0]}
    return sides


def test_the_split_of_every_surviving_row_is_unchanged_after_a_copy_on_write_delete(catalog) -> None:
    write_appends(catalog, "demo.rows", [700, 700, 600])
    before = load_table(catalog, "demo.rows").current_snapshot().snapshot_id
    load_table(catalog, "demo.rows").delete(Or(In("id", list(range(0, 2000, 7))), GreaterThan("id", 1900)))
    after = load_table(catalog, "demo.rows").current_snapshot().snapshot_id
    surviving = {i for i in range(2000) if i % 7 and i <= 1900}
    table = load_table(catalog, "demo.rows")
    files = [{task.file.file_path for task in table.scan(snapshot_id=s).plan_files()} for s in (before, after)]
    assert not files[0] & files[1], "the delete rewrote every data file"

    old, new = side_of_each_row(catalog, "demo.rows", before), side_of_each_row(catalog, "demo.rows", after)

    assert new["train"] | new["val"] == surviving
    assert new["val"] == old["val"] & surviving
    assert new["train"] == old["train"] & surviving
    assert 0.25 < len(new["val"]) / len(surviving) < 0.35


def test_without_identifier_fields_a_rewrite_redraws_rows_as_the_docs_warn(catalog) -> None:
    write_appends(catalog, "demo.rows", [700, 700, 600])
    before = load_table(catalog, "demo.rows").current_snapshot().snapshot_id
    load_table(catalog, "demo.rows").delete(In("id", list(range(0, 2000, 7))))
    after = load_table(catalog, "demo.rows").current_snapshot().snapshot_id

    old, new = (
        side_of_each_row(catalog, "demo.rows", before, "position"),
        side_of_each_row(catalog, "demo.rows", after, "position"),
    )

    assert new["val"] != old["val"] & (new["train"] | new["val"])


def test_asking_for_identifier_split_on_a_table_without_identifier_fields_is_refused(catalog) -> None:
    append_arrow(catalog, "demo.plain", tabular_rows(0, 20), source="test")
    table = load_table(catalog, "demo.plain")
    pinned = resolve_snapshot(table, SnapshotRequest("demo.plain"), "icetrain")
    with pytest.raises(ConfigError, match="data.split_by=identifier, but table 'demo.plain' has no identifier fields"):
        prepare_read(table, pinned, ReadSpec(split_by="identifier"))


@pytest.mark.parametrize(
    "array",
    [
        pa.array(["a", "", "bb", "a", "ccc" * 40]),
        pa.array([b"x", b"", b"yy", b"x", b"z" * 120], type=pa.large_binary()),
        pa.array([5, -1, 7, 5, 2**40], type=pa.int64()),
    ],
)
def test_identifier_hashes_depend_on_the_value_alone(array) -> None:
    keys = identifier_keys(pa.table({"k": array}), ("k",))
    assert keys[0] == keys[3] and len(set(keys.tolist())) == 4
    chunked = pa.table({"k": pa.chunked_array([array.slice(0, 2), array.slice(2)])})
    assert np.array_equal(identifier_keys(chunked, ("k",)), keys)
    assert np.array_equal(identifier_keys(pa.table({"k": array.slice(3)}), ("k",)), keys[3:])
