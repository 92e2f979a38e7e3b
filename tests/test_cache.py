"""The decoded cache: later epochs read what the first decoded, bit for bit, within a size bound."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.data.cache import DecodedCache
from pipeline.data.loading import open_loader
from pipeline.data.snapshots import resolve_snapshot
from pipeline.data.specs import LoaderConfig, ReadSpec, SnapshotRequest
from tests.loader_tables import shapes_catalog, table_of_shape

SPEC = ReadSpec(features=("x1", "x2"))


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    return shapes_catalog(tmp_path_factory.mktemp("cache"))


def loader_for(table, cache: Path | None, spec: ReadSpec = SPEC, **config):
    pinned = resolve_snapshot(table, SnapshotRequest(".".join(table.name())), "icetrain")
    options = {"cache_dir": str(cache), "cache_mb": 64} if cache is not None else {"cache_mb": 0}
    return open_loader(table, pinned, spec, LoaderConfig(**options, **config))


def epochs(loader, count: int = 2) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    result = []
    for epoch in range(count):
        loader.set_epoch(epoch)
        result.append([(features.clone(), labels.clone()) for features, labels in loader])
    return result


def same(a, b) -> bool:
    return len(a) == len(b) and all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))


def unit_files(cache: Path) -> list[Path]:
    return sorted(cache.glob("*/unit-*.arrow"))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("shuffle", [True, False])
def test_cached_epochs_are_bit_identical_to_decoded_ones(catalog, tmp_path, workers, shuffle) -> None:
    table = table_of_shape(catalog, [40, 31, 25], 9)
    options = dict(batch_size=7, block_rows=20, seed=11, shuffle=shuffle, num_workers=workers)
    decoded = epochs(loader_for(table, None, **options), 3)
    cached_loader = loader_for(table, tmp_path, **options)
    first = epochs(cached_loader, 1)
    assert len(unit_files(tmp_path)) == len(cached_loader.source.plan.row_groups)
    later = [first[0], *epochs(loader_for(table, tmp_path, **options), 3)[1:]]
    assert all(same(a, b) for a, b in zip(decoded, later))


def test_a_filled_cache_serves_later_epochs_without_decoding(catalog, tmp_path, monkeypatch) -> None:
    table = table_of_shape(catalog, [30, 30], 10)
    expected = epochs(loader_for(table, tmp_path, batch_size=8), 2)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a row group the cache holds")

    monkeypatch.setattr("pipeline.data.loader.piece_tensors", no_decoding)
    assert all(same(a, b) for a, b in zip(expected, epochs(loader_for(table, tmp_path, batch_size=8), 2)))
    with pytest.raises(AssertionError, match="decoded a row group"):
        list(loader_for(table, None, batch_size=8))


def test_batches_from_the_cache_may_be_changed_in_place_without_touching_it(catalog, tmp_path) -> None:
    table = table_of_shape(catalog, [20], 10)
    epochs(loader_for(table, tmp_path, batch_size=5, shuffle=False), 1)
    for features, _ in loader_for(table, tmp_path, batch_size=5, shuffle=False):
        features *= 0  # a user's in-place normalisation: private pages, never the file
    again = torch.cat([f for f, _ in loader_for(table, tmp_path, batch_size=5, shuffle=False)])
    assert again.abs().sum() > 0


def test_each_selection_has_its_own_entry(catalog, tmp_path) -> None:
    table = table_of_shape(catalog, [24], 6)
    epochs(loader_for(table, tmp_path), 1)
    epochs(loader_for(table, tmp_path, spec=ReadSpec(features=("x1",))), 1)
    epochs(loader_for(table, tmp_path, spec=ReadSpec(features=("x1", "x2"), row_filter="id < 10")), 1)
    epochs(loader_for(table, tmp_path, split="train", val_fraction=0.25), 1)
    assert len([entry for entry in tmp_path.iterdir() if entry.is_dir()]) == 4


def test_damaged_and_half_written_files_are_decoded_again(catalog, tmp_path) -> None:
    table = table_of_shape(catalog, [30], 10)
    expected = epochs(loader_for(table, tmp_path, batch_size=4), 2)
    files = unit_files(tmp_path)
    files[0].write_bytes(files[0].read_bytes()[:50])  # damaged
    (files[1].parent / ".tmp-0123-unit-000001.arrow").write_bytes(b"half")  # a writer killed mid-file
    files[1].unlink()
    assert all(same(a, b) for a, b in zip(expected, epochs(loader_for(table, tmp_path, batch_size=4), 2)))
    assert len(unit_files(tmp_path)) == len(files)


def test_a_key_that_does_not_match_its_folder_is_not_trusted(tmp_path) -> None:
    cache = DecodedCache(tmp_path, {"snapshot_id": "1", "data": "a"}, 64).open()
    cache.put(0, torch.ones(3, 2), torch.arange(3))
    other = DecodedCache(tmp_path, {"snapshot_id": "2", "data": "b"}, 64)
    (other.folder).mkdir()
    (other.folder / "key.json").write_text((cache.folder / "key.json").read_text())  # a foreign folder under this name
    (other.folder / "unit-000000.arrow").write_bytes((cache.folder / "unit-000000.arrow").read_bytes())
    assert other.open().get(0, (2,)) is None
    assert cache.get(0, (2,))[1].tolist() == [0, 1, 2]


def test_least_recently_used_selections_are_evicted_first(tmp_path) -> None:
    def fill(name: str) -> DecodedCache:
        cache = DecodedCache(tmp_path, {"name": name}, 3).open()
        cache.put(
            0, torch.zeros(100_000, 1), torch.zeros(100_000, dtype=torch.int64)
        )  # 1.2 MB with its targets: two fit in 3 MB
        time.sleep(0.02)
        return cache

    first, second = fill("first"), fill("second")
    first.open()  # used again: now the most recent of the two
    time.sleep(0.02)
    third = fill("third")
    assert first.get(0, (1,)) is not None and third.get(0, (1,)) is not None
    assert not second.folder.exists()
    huge = DecodedCache(tmp_path, {"name": "huge"}, 3).open()
    huge.put(0, torch.zeros(400_000, 1), torch.zeros(400_000, dtype=torch.int64))  # over the limit alone: not kept
    assert huge.get(0, (1,)) is None and first.get(0, (1,)) is not None


def test_it_can_be_turned_off(catalog, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ICETRAIN_CACHE_DIR", str(tmp_path))
    table = table_of_shape(catalog, [20], 10)
    pinned = resolve_snapshot(table, SnapshotRequest(".".join(table.name())), "icetrain")
    list(open_loader(table, pinned, SPEC, LoaderConfig(cache_mb=0)))
    assert not unit_files(tmp_path)
    list(open_loader(table, pinned, SPEC, LoaderConfig()))
    assert unit_files(tmp_path)


def test_concurrent_processes_share_one_cache(catalog, tmp_path) -> None:
    table = table_of_shape(catalog, [50, 50, 50], 10)
    catalog_uri = catalog.properties["uri"]
    warehouse = catalog.properties["warehouse"]
    script = textwrap.dedent(
        f"""
        import hashlib, sys
        from pyiceberg.catalog.sql import SqlCatalog
        from pipeline.data.loading import open_loader
        from pipeline.data.snapshots import resolve_snapshot
        from pipeline.data.specs import LoaderConfig, ReadSpec, SnapshotRequest
        table = SqlCatalog("icetrain", uri={catalog_uri!r}, warehouse={warehouse!r}).load_table({".".join(table.name())!r})
        pinned = resolve_snapshot(table, SnapshotRequest({".".join(table.name())!r}), "icetrain")
        loader = open_loader(table, pinned, ReadSpec(features=("x1", "x2")), LoaderConfig(batch_size=9, seed=2, cache_dir={str(tmp_path)!r}, cache_mb=64))
        digest = hashlib.sha256()
        for epoch in range(3):
            loader.set_epoch(epoch)
            for features, labels in loader:
                digest.update(features.numpy().tobytes()); digest.update(labels.numpy().tobytes())
        print(digest.hexdigest())
        """
    )
    root = Path(__file__).resolve().parents[1]
    runs = [
        subprocess.Popen([sys.executable, "-c", script], cwd=root, stdout=subprocess.PIPE, text=True) for _ in range(3)
    ]
    digests = {run.communicate(timeout=300)[0].strip() for run in runs}
    assert all(run.returncode == 0 for run in runs)
    expected = epochs(loader_for(table, None, batch_size=9, seed=2), 3)
    digest = __import__("hashlib").sha256()
    for epoch in expected:
        for features, labels in epoch:
            digest.update(features.numpy().tobytes())
            digest.update(labels.numpy().tobytes())
    assert digests == {digest.hexdigest()}
    assert np.all([path.stat().st_size > 0 for path in unit_files(tmp_path)])
