"""The loader's promises, checked over many table shapes, worker counts, world sizes, batch sizes and seeds."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyiceberg.types import DoubleType, LongType

from pipeline.data.loading import open_loader
from pipeline.data.snapshots import resolve_snapshot
from pipeline.data.specs import LoaderConfig, ReadSpec, SnapshotRequest
from pipeline.errors import ColumnError, ResumeError
from tests.conftest import tabular_rows
from tests.loader_tables import add_position_deletes, data_file_paths, shapes_catalog, table_of_shape

IDS = ReadSpec(features=("id",))
EXAMPLES = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

file_rows = st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=4)
row_group_rows = st.integers(min_value=2, max_value=16)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return shapes_catalog(tmp_path_factory.mktemp("loader"))


def loader_for(table, spec=IDS, **config):
    pinned = resolve_snapshot(table, SnapshotRequest(".".join(table.name())), "icetrain")
    return open_loader(table, pinned, spec, LoaderConfig(**config))


def ids(loader) -> list[int]:
    return [int(v) for features, _ in loader for v in features[:, 0].tolist()]


def batch_sizes(loader) -> list[int]:
    return [len(labels) for _, labels in loader]


@EXAMPLES
@given(
    files=file_rows,
    group=row_group_rows,
    world=st.integers(1, 3),
    batch=st.integers(1, 13),
    seed=st.integers(0, 2**31),
    block=st.integers(1, 50),
    shuffle=st.booleans(),
    low=st.one_of(st.none(), st.integers(0, 60)),
)
def test_every_row_once_per_epoch_across_ranks_with_equal_batches(
    catalog, files, group, world, batch, seed, block, shuffle, low
) -> None:
    table = table_of_shape(catalog, files, group)
    spec = ReadSpec(features=("id",), row_filter=f"id >= {low}" if low is not None else None)
    total = sum(files) - min(low or 0, sum(files))
    if total == 0:
        return
    per_rank = []
    for rank in range(world):
        loader = loader_for(
            table, spec, rank=rank, world_size=world, batch_size=batch, seed=seed, block_rows=block, shuffle=shuffle
        )
        sizes = batch_sizes(loader)
        assert len(sizes) == len(loader)
        assert all(size == batch for size in sizes[:-1])
        assert not sizes or 0 < sizes[-1] <= batch
        loader.set_epoch(0)
        per_rank.append(ids(loader))
        assert loader.dropped_rows == total % world
    assert len({len(rows) for rows in per_rank}) == 1
    seen = Counter(row for rows in per_rank for row in rows)
    assert all(count == 1 for count in seen.values())
    assert len(seen) == total - total % world
    assert set(seen) <= set(range(low or 0, sum(files)))
    if not shuffle and world == 1:
        runs = 1 + sum(1 for a, b in zip(per_rank[0], per_rank[0][1:]) if b != a + 1)
        assert runs <= len(files)  # unshuffled: whole data files, in their canonical (path) order


@EXAMPLES
@given(
    files=file_rows,
    group=row_group_rows,
    batch=st.integers(1, 13),
    seed=st.integers(0, 2**31),
    block=st.integers(1, 50),
)
def test_same_seed_and_epoch_give_the_same_order_and_epochs_differ(catalog, files, group, batch, seed, block) -> None:
    table = table_of_shape(catalog, files, group)
    first = loader_for(table, batch_size=batch, seed=seed, block_rows=block)
    second = loader_for(table, batch_size=batch, seed=seed, block_rows=block)
    epoch0 = ids(first)
    assert ids(second) == epoch0
    first.set_epoch(1)
    epoch1 = ids(first)
    assert sorted(epoch1) == sorted(epoch0)
    if len(epoch0) >= 20:
        assert epoch1 != epoch0


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    files=file_rows,
    group=row_group_rows,
    workers=st.integers(1, 3),
    batch=st.integers(1, 13),
    block=st.integers(1, 30),
    world=st.integers(1, 2),
)
def test_the_order_does_not_depend_on_the_number_of_workers(
    catalog, files, group, workers, batch, block, world
) -> None:
    table = table_of_shape(catalog, files, group)
    for rank in range(world):
        common = dict(batch_size=batch, block_rows=block, seed=7, rank=rank, world_size=world)
        assert ids(loader_for(table, num_workers=workers, **common)) == ids(loader_for(table, num_workers=0, **common))


@EXAMPLES
@given(files=file_rows, group=row_group_rows, batch=st.integers(1, 13), block=st.integers(1, 50), data=st.data())
def test_resuming_after_any_batch_continues_with_the_next_one(catalog, files, group, batch, block, data) -> None:
    table = table_of_shape(catalog, files, group)
    config = dict(batch_size=batch, block_rows=block, seed=3)
    full = [f[:, 0].tolist() for f, _ in loader_for(table, **config)]
    k = data.draw(st.integers(0, len(full)), label="stop after")
    first = loader_for(table, **config)
    taken = []
    for features, _ in first if k else ():
        taken.append(features[:, 0].tolist())
        if len(taken) == k:
            break
    state = first.state_dict()
    resumed = loader_for(table, **config)
    resumed.load_state_dict(state)
    rest = [f[:, 0].tolist() for f, _ in resumed]
    assert taken + rest == full


def test_resume_in_a_new_process_through_statefuldataloader(catalog, tmp_path) -> None:
    table = table_of_shape(catalog, [37, 50, 13], 9)
    script = textwrap.dedent(
        f"""
        import sys, torch
        from pyiceberg.catalog.sql import SqlCatalog
        from torchdata.stateful_dataloader import StatefulDataLoader
        from pipeline.data.specs import LoaderConfig, ReadSpec, SnapshotRequest
        from pipeline.data.loading import open_loader
        from pipeline.data.snapshots import resolve_snapshot

        catalog = SqlCatalog("icetrain", **{dict(catalog.properties)!r})
        table = catalog.load_table("{".".join(table.name())}")
        pinned = resolve_snapshot(table, SnapshotRequest("{".".join(table.name())}"), "icetrain")
        loader = open_loader(table, pinned, ReadSpec(features=("id",)), LoaderConfig(batch_size=8, block_rows=20, seed=5))
        outer = StatefulDataLoader(loader, batch_size=None, num_workers=0)
        mode, path = sys.argv[1], sys.argv[2]
        if mode == "stop":
            batches = []
            for i, (features, _) in enumerate(outer):
                batches.append(features[:, 0].tolist())
                if i == 4:
                    break
            torch.save({{"state": outer.state_dict(), "seen": batches}}, path)
        else:
            saved = torch.load(path, weights_only=False)
            outer.load_state_dict(saved["state"])
            torch.save({{"rest": [features[:, 0].tolist() for features, _ in outer]}}, path + ".rest")
        """
    )
    runner = tmp_path / "resume.py"
    runner.write_text(script)
    saved = tmp_path / "state.pt"
    root = Path(__file__).resolve().parents[1]
    for mode in ("stop", "resume"):
        subprocess.run([sys.executable, str(runner), mode, str(saved)], check=True, cwd=root, capture_output=True)
    seen = torch.load(saved, weights_only=False)["seen"]
    rest = torch.load(str(saved) + ".rest", weights_only=False)["rest"]
    full = [features[:, 0].tolist() for features, _ in loader_for(table, batch_size=8, block_rows=20, seed=5)]
    assert len(seen) == 5
    assert seen + rest == full


def test_restoring_onto_another_seed_world_size_or_snapshot_is_refused(catalog) -> None:
    table = table_of_shape(catalog, [30, 30], 8)
    state = loader_for(table, seed=1, batch_size=4).state_dict()
    with pytest.raises(ResumeError, match="seed"):
        loader_for(table, seed=2, batch_size=4).load_state_dict(state)
    with pytest.raises(ResumeError, match="data-parallel degree"):
        loader_for(table, seed=1, batch_size=4, rank=0, world_size=2).load_state_dict(state)
    table_of_shape(catalog, [5], 8)
    other = table_of_shape(catalog, [30, 30], 8)
    with pytest.raises(ResumeError, match="snapshot"):
        loader_for(other, seed=1, batch_size=4).load_state_dict(state)
    with pytest.raises(ResumeError, match="version"):
        loader_for(table, seed=1, batch_size=4).load_state_dict({**state, "version": 99})


def test_positional_deletes_are_applied(catalog, tmp_path) -> None:
    table = table_of_shape(catalog, [20, 15], 6)
    first_file, second_file = data_file_paths(table)
    ids_in = {path: pq.read_table(path.removeprefix("file://"))["id"].to_pylist() for path in (first_file, second_file)}
    table = add_position_deletes(table, {first_file: [0, 3, 14], second_file: [5]}, tmp_path)
    deleted = {ids_in[first_file][p] for p in (0, 3, 14)} | {ids_in[second_file][5]}
    expected = sorted(set(range(35)) - deleted)
    assert sorted(table.scan().to_arrow()["id"].to_pylist()) == expected
    assert sorted(ids(loader_for(table, shuffle=False))) == expected
    for rank in range(2):
        assert len(ids(loader_for(table, rank=rank, world_size=2))) == len(expected) // 2


def test_renamed_widened_and_added_columns_are_matched_by_field_id(catalog) -> None:
    table = table_of_shape(catalog, [10], 4)
    old_snapshot = table.current_snapshot().snapshot_id
    with table.update_schema() as update:
        update.update_column("x1", field_type=DoubleType())
    with table.update_schema() as update:
        update.rename_column("x1", "signal")
    with table.update_schema() as update:
        update.add_column("extra", LongType())
    table = table.refresh()
    later = tabular_rows(10, 5).rename_columns(["id", "signal", "x2", "label"])
    later = later.append_column("extra", pa.array(range(5), pa.int64())).cast(table.schema().as_arrow())
    table.append(later)
    table = table.refresh()

    rows = torch.cat([f for f, _ in loader_for(table, ReadSpec(features=("id", "signal")), shuffle=False)])
    by_id = dict(zip(rows[:, 0].tolist(), rows[:, 1].tolist()))
    written = tabular_rows(0, 10)["x1"].to_pylist() + later["signal"].to_pylist()
    assert sorted(by_id) == list(range(15))
    assert [by_id[i] for i in range(15)] == pytest.approx(written)

    with pytest.raises(ColumnError, match=r"'extra' has \d+ null values"):
        list(loader_for(table, ReadSpec(features=("extra",))))

    old = resolve_snapshot(table, SnapshotRequest(".".join(table.name()), snapshot_id=old_snapshot), "icetrain")
    old_rows = torch.cat(
        [f for f, _ in open_loader(table, old, ReadSpec(features=("id", "x1")), LoaderConfig(shuffle=False))]
    )
    assert sorted(old_rows[:, 0].tolist()) == list(range(10))


def test_the_sql_transform_runs_per_row_group_in_the_sandbox(catalog) -> None:
    table = table_of_shape(catalog, [20, 20], 7)
    spec = ReadSpec(features=("twice",), sql="select id * 2 as twice, label from snapshot where id % 4 = 0")
    rows = sorted(
        int(v) for features, _ in loader_for(table, spec, shuffle=False, num_workers=0) for v in features[:, 0]
    )
    assert rows == [i * 2 for i in range(40) if i % 4 == 0]
    assert sum(len(labels) for _, labels in loader_for(table, spec, rank=1, world_size=2)) == 5


def test_a_filter_prunes_row_groups_by_their_parquet_statistics(catalog) -> None:
    table = table_of_shape(catalog, [100], 10)
    loader = loader_for(table, ReadSpec(features=("id",), row_filter="id >= 42 and id < 57"), shuffle=False)
    assert len(loader.source.plan.row_groups) == 2
    assert sorted(ids(loader)) == list(range(42, 57))


def test_string_labels_map_through_a_sorted_vocabulary(catalog) -> None:
    from pipeline.lake.ingest import append_arrow

    names = ["owl", "cat", "emu"]
    rows = tabular_rows(0, 30)
    rows = rows.set_column(
        3, "label", pa.array([names[i % 3] for i in range(30)]).dictionary_encode().cast(pa.string())
    )
    append_arrow(catalog, "shapes.strings", rows, source="test")
    loader = loader_for(catalog.load_table("shapes.strings"), shuffle=False)
    assert loader.vocabulary.classes == ("cat", "emu", "owl")
    labels = torch.cat([batch_labels for _, batch_labels in loader])
    assert Counter(labels.tolist()) == {0: 10, 1: 10, 2: 10}
