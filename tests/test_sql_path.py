"""The SQL path is fast without giving up exactness.

DuckDB computes only what the query computes (plain columns are moved by Arrow), counting
runs the query reduced to its WHERE and label, and with declared classes a first epoch
streams without counting first, in exactly the order a counted epoch has.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.data.loading import open_loader
from pipeline.data.snapshots import resolve_snapshot
from pipeline.data.specs import LoaderConfig, ReadSpec, SnapshotRequest
from pipeline.data.tensors import features_to_tensor
from pipeline.data.transform import row_local_query, sandboxed_connection, transform_batch
from pipeline.errors import EmptyDataError, LabelError
from tests.loader_tables import shapes_catalog, table_of_shape

EXAMPLES = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CLASSES = ("0", "1", "2")

ROWS = pa.table(
    {
        "id": pa.array(range(40), pa.int64()),
        "Score": pa.array([i / 7 for i in range(40)], pa.float64()),
        "small": pa.array([i % 5 for i in range(40)], pa.int32()),
        "flag": pa.array([i % 3 == 0 for i in range(40)]),
        "name": pa.array([f"n{i % 4}" for i in range(40)]),
        "label": pa.array([i % 3 for i in range(40)], pa.int64()),
    }
)

QUERIES = [
    "select id, label from snapshot",
    "select id, Score, label from snapshot where id % 3 <> 0",
    "select score as s, id * 2 as twice, label from snapshot where small < 3 and flag",
    "select snapshot.id, label + 1 as label, upper(name) as loud from snapshot where name <> 'n1'",
    "select id, cast(small as double) as small, label from snapshot where id between 5 and 30;",
    "select label, id from snapshot where id > 100",
    "select id, label, id as again from snapshot where score > 2 -- a trailing comment",
]


@pytest.mark.parametrize("sql", QUERIES)
def test_the_split_query_returns_what_the_whole_query_returns(sql) -> None:
    split = row_local_query(sql, ROWS.schema)
    assert split is not None
    whole = transform_batch(sandboxed_connection(), ROWS, sql)
    assert split.run(sandboxed_connection(), ROWS).equals(whole)


def test_plain_columns_bypass_duckdb_and_only_computed_ones_go_in() -> None:
    split = row_local_query("select score as s, id * 2 as twice, label from snapshot where small < 3", ROWS.schema)
    assert split.outputs == (("s", "Score"), ("twice", None), ("label", "label"))
    assert split.columns == ("id", "small")
    assert set(split.sources) == {"id", "Score", "small", "label"}


def test_counting_needs_only_the_where_and_the_label() -> None:
    split = row_local_query(
        "select score, id * 2 as twice, name, label from snapshot where small < 3", ROWS.schema, only="label"
    )
    assert split.outputs == (("label", "label"),)
    assert set(split.sources) == {"small", "label"}


@pytest.mark.parametrize(
    "sql",
    [
        "select * from snapshot",
        "select id * 2 as twice, twice + 1 as more, label from snapshot",
        "select id, label from snapshot where nonsense > 1",
    ],
)
def test_queries_it_cannot_split_safely_run_whole(sql) -> None:
    assert row_local_query(sql, ROWS.schema) is None


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return shapes_catalog(tmp_path_factory.mktemp("sqlpath"))


def open_sql_loader(table, sql: str, classes=CLASSES, **config):
    pinned = resolve_snapshot(table, SnapshotRequest(".".join(table.name())), "icetrain")
    spec = ReadSpec(features=("id",), sql=sql, classes=classes)
    return open_loader(table, pinned, spec, LoaderConfig(**config))


def batches(loader) -> list[tuple[list[int], list[int]]]:
    return [(features[:, 0].long().tolist(), labels.tolist()) for features, labels in loader]


@EXAMPLES
@given(
    files=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    group=st.integers(2, 16),
    batch=st.integers(1, 13),
    block=st.integers(1, 50),
    seed=st.integers(0, 2**31),
    shuffle=st.booleans(),
    modulus=st.integers(2, 5),
    drop_last=st.booleans(),
)
def test_a_first_epoch_streams_without_counting_in_the_counted_order(
    catalog, files, group, batch, block, seed, shuffle, modulus, drop_last
) -> None:
    table = table_of_shape(catalog, files, group)
    sql = f"select id, label from snapshot where id % {modulus} <> 1"
    options = dict(batch_size=batch, block_rows=block, seed=seed, shuffle=shuffle, drop_last=drop_last)
    streamed = open_sql_loader(table, sql, **options)
    counted = open_sql_loader(table, sql, **options)
    assert len(counted) >= 0 and counted.counted  # len() counts first
    assert not streamed.counted
    for epoch in range(2):
        streamed.set_epoch(epoch)
        counted.set_epoch(epoch)
        assert batches(streamed) == batches(counted)
    assert streamed.counted and len(streamed) == len(counted)
    kept = [i for i in range(sum(files)) if i % modulus != 1]
    seen = sorted(i for ids, _ in batches(counted) for i in ids)
    if drop_last:
        assert set(seen) <= set(kept) and len(kept) - len(seen) == len(kept) % batch
    else:
        assert seen == kept


def test_a_position_saved_while_streaming_resumes_exactly(catalog) -> None:
    table = table_of_shape(catalog, [30, 25, 17], 6)
    sql = "select id, label from snapshot where id % 4 <> 0"
    streamed = open_sql_loader(table, sql, batch_size=5, block_rows=12, seed=3)
    iterator = iter(streamed)
    first = [next(iterator) for _ in range(4)]
    state = streamed.state_dict()  # counts now, mid-epoch
    rest = [(f[:, 0].long().tolist(), labels.tolist()) for f, labels in iterator]
    resumed = open_sql_loader(table, sql, batch_size=5, block_rows=12, seed=3)
    resumed.load_state_dict(state)
    assert batches(resumed) == rest
    assert len(first) + len(rest) == len(resumed)


def test_streamed_batches_are_bit_identical_to_the_whole_query_path(catalog) -> None:
    table = table_of_shape(catalog, [50, 20], 8)
    sql = "select x1, x2 * 3 as x3, label from snapshot where id % 5 <> 2"
    pinned = resolve_snapshot(table, SnapshotRequest(".".join(table.name())), "icetrain")
    spec = ReadSpec(features=("x1", "x3"), sql=sql, classes=CLASSES)
    fast = open_loader(table, pinned, spec, LoaderConfig(batch_size=7, seed=1))
    rows = table.scan().to_arrow()
    whole = transform_batch(sandboxed_connection(), rows, sql)
    expected = features_to_tensor(whole, fast.layout)
    features = torch.cat([f for f, _ in fast])
    assert features.dtype == torch.float32 and len(features) == whole.num_rows
    assert sorted(map(tuple, features.tolist())) == sorted(map(tuple, expected.tolist()))


def test_without_declared_classes_it_counts_first(catalog) -> None:
    table = table_of_shape(catalog, [12], 4)
    loader = open_sql_loader(table, "select id, label from snapshot", classes=None)
    assert loader.counted and loader.vocabulary.classes == (0, 1, 2)


def test_streaming_still_refuses_bad_rows(catalog) -> None:
    table = table_of_shape(catalog, [20], 5)
    queries = {
        "select id, label from snapshot where id < 0": (EmptyDataError, "no rows after the SQL transform"),
        "select id, label + 5 as label from snapshot": (LabelError, "label value 5 is not one of the"),
        "select id, case when id = 7 then null else label end as label from snapshot": (LabelError, "null"),
    }
    for sql, (error, message) in queries.items():
        loader = open_sql_loader(table, sql)
        with pytest.raises(error, match=message):
            [batch for batch in loader]
        assert not loader.counted
        with pytest.raises(error, match=message):
            list(open_sql_loader(table, sql))  # counts first, and the gate says the same


def test_counting_with_the_reduced_query_matches_the_whole_query(catalog) -> None:
    table = table_of_shape(catalog, [33, 21], 5)
    sql = "select x1, x2, id, label from snapshot where x2 > 0 or id % 3 = 0"
    loader = open_sql_loader(table, sql, classes=None)
    whole = transform_batch(sandboxed_connection(), table.scan().to_arrow(), sql)
    assert loader.profile.total_rows == whole.num_rows
    values, counts = np.unique(whole.column("label").to_numpy(), return_counts=True)
    assert loader.profile.class_counts == dict(zip(values.tolist(), counts.tolist()))
