"""Decode workers hand blocks over in shared memory: in order, failing loudly, leaving nothing behind."""

from __future__ import annotations

import multiprocessing
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.loading import open_loader
from pipeline.data.snapshots import resolve_snapshot
from pipeline.data.specs import LoaderConfig, ReadSpec, SnapshotRequest
from pipeline.data.workers import SlotLayout, WorkerError, decode_in_workers
from pipeline.errors import DataFileError, LabelError
from tests.loader_tables import data_file_paths, shapes_catalog, table_of_shape

LAYOUT = SlotLayout(rows=8, feature_shape=(2,), feature_dtype=np.dtype(np.float32), target_dtype=np.dtype(np.int64))


def shared_segments() -> set[str]:
    return {name for name in os.listdir("/dev/shm") if name.startswith("psm_")}


def decode_workers() -> list[multiprocessing.Process]:
    """This process's decode workers still running (``active_children`` also reaps finished ones)."""
    return [child for child in multiprocessing.active_children() if child.name.startswith("icetrain-decode")]


def block_of(position: int):
    """Block ``position``: rows [10p, 10p + 1 + p % 4) as features (value, -value) and targets value."""
    values = np.arange(10 * position, 10 * position + 1 + position % 4)
    features = np.stack([values, -values], axis=1).astype(np.float32)

    def write(into_features, into_targets):
        into_features[...], into_targets[...] = features, values

    return len(values), write


def test_blocks_come_back_in_order_as_tensors_that_outlive_the_slots() -> None:
    before = shared_segments()
    blocks = list(decode_in_workers(3, 11, LAYOUT, block_of))
    assert [targets.tolist() for _, targets in blocks] == [list(range(10 * p, 10 * p + 1 + p % 4)) for p in range(11)]
    assert all(torch.equal(features[:, 1], -targets.float()) for features, targets in blocks)
    assert shared_segments() == before


def test_an_error_in_a_worker_is_raised_in_the_trainer_as_itself() -> None:
    def failing(position: int):
        if position == 5:
            raise LabelError("label value 7 is not one of the classes 0..2")
        return block_of(position)

    before = shared_segments()
    seen = []
    with pytest.raises(LabelError, match="label value 7"):
        for block in decode_in_workers(2, 9, LAYOUT, failing):
            seen.append(block)
    assert len(seen) == 5
    assert shared_segments() == before


def test_a_killed_worker_is_reported_and_the_rest_are_stopped() -> None:
    def dying(position: int):
        if position == 3:
            os.kill(os.getpid(), signal.SIGKILL)
        return block_of(position)

    before = shared_segments()
    with pytest.raises(WorkerError, match="exit code -9"):
        list(decode_in_workers(2, 8, LAYOUT, dying))
    assert shared_segments() == before
    assert not decode_workers()


def test_leaving_early_stops_the_workers_and_frees_the_memory() -> None:
    def interrupt(signum, frame):  # as `icetrain train` installs it; forked workers must not keep it
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        stop_early()
    finally:
        signal.signal(signal.SIGTERM, previous)


def stop_early() -> None:
    before = shared_segments()
    blocks = decode_in_workers(2, 50, LAYOUT, block_of)
    next(blocks)
    assert len(decode_workers()) == 2
    blocks.close()
    assert shared_segments() == before
    assert not decode_workers()


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return shapes_catalog(tmp_path_factory.mktemp("workers"))


def loader_for(table, spec: ReadSpec, **config):
    pinned = resolve_snapshot(table, SnapshotRequest(".".join(table.name())), "icetrain")
    return open_loader(table, pinned, spec, LoaderConfig(**config))


@pytest.mark.parametrize("shuffle", [True, False])
def test_worker_batches_are_bit_identical_to_in_process_batches(catalog, shuffle) -> None:
    table = table_of_shape(catalog, [40, 33, 27], 9)
    spec = ReadSpec(features=("x1", "x2"))
    options = dict(batch_size=6, block_rows=20, seed=5, shuffle=shuffle)
    threads = list(loader_for(table, spec, **options))
    workers = list(loader_for(table, spec, num_workers=3, **options))
    assert len(threads) == len(workers)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(threads, workers))


def test_a_regression_target_travels_as_float32(catalog) -> None:
    table = table_of_shape(catalog, [25], 7)
    spec = ReadSpec(label="x2", features=("x1",), task="regression")
    threads = torch.cat([t for _, t in loader_for(table, spec, batch_size=4, block_rows=8)])
    workers = torch.cat([t for _, t in loader_for(table, spec, batch_size=4, block_rows=8, num_workers=2)])
    assert workers.dtype == torch.float32 and torch.equal(threads, workers)


def test_a_damaged_data_file_read_by_a_worker_names_the_file(catalog) -> None:
    table = table_of_shape(catalog, [30, 30], 10)
    loader = loader_for(table, ReadSpec(features=("x1",)), num_workers=2, block_rows=10)
    damaged = data_file_paths(table)[1].removeprefix("file://")
    Path(damaged).write_bytes(b"not parquet")
    with pytest.raises(DataFileError, match=Path(damaged).name):
        list(loader)
