"""Loader benchmark: icetrain against the Parquet-decode limit and the usual ways to read Iceberg.

Builds the benchmark tables in a temporary warehouse, then measures each row in its own
process (so peak RSS is that row's alone) and prints one table, all from this run:

    python bench/loader_bench.py [--rows 4000000] [--out bench/results.json]

Rows/s is over one full epoch at batch size 1024; ``ratio`` is rows/s over the ``limit`` row
of the same table (PyArrow decoding the same Parquet files into float32 tensors, no Iceberg,
no shuffle); ttfb is the time from constructing the reader (the table already loaded from the
catalog) to the first batch.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BATCH = 1024
BLOCK_ROWS = 65536
ROW_GROUP_ROWS = 65536
FEATURES = [f"f{i}" for i in range(32)]
CATEGORIES = {"c10": 10, "c100": 100, "c1k": 1_000, "c10k": 10_000}
TABLES = {
    "tabular": "bench.tabular",
    "categorical": "bench.categorical",
    "whole_files": "bench.whole_files",
    "images": "bench.images",
    "images_list": "bench.images_list",
    "tabular_20m": "bench.tabular_20m",
}


# ---------------------------------------------------------------- building the tables


def build_tables(warehouse: Path, rows: int) -> None:
    """tabular: rows x 32 float32 + label + id in 16 appends; images: rows/20 28x28 uint8 in 8 appends, two layouts."""
    import pyarrow as pa

    from pipeline.data.tensors import image_properties
    from pipeline.lake.ingest import append_arrow

    catalog = _catalog(warehouse)
    build_tabular(catalog, TABLES["tabular"], rows, seed=0)
    build_tabular(catalog, TABLES["categorical"], rows, seed=0, categorical=True)
    build_tabular(catalog, TABLES["whole_files"], rows, seed=0, row_group_rows=rows // 16)
    rng = np.random.default_rng(0)
    layout = {"write.parquet.row-group-limit": str(ROW_GROUP_ROWS)}
    images = max(rows // 20, 8)
    per_image_append = images // 8
    for _ in range(8):
        pixels = rng.integers(0, 256, (per_image_append, 784), dtype=np.uint8)
        labels = pa.array(rng.integers(0, 10, per_image_append), pa.int64())
        raw = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(784), per_image_append, [None, pa.py_buffer(pixels.tobytes())]
        )
        as_list = pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), 784)
        properties = {**layout, **image_properties("pixels", shape=(1, 28, 28), max_value=255)}
        append_arrow(
            catalog,
            TABLES["images"],
            pa.table({"pixels": raw, "label": labels}),
            source="bench",
            table_properties=properties,
        )
        append_arrow(
            catalog,
            TABLES["images_list"],
            pa.table({"pixels": as_list, "label": labels}),
            source="bench",
            table_properties=properties,
        )


def build_tabular(
    catalog, identifier: str, rows: int, seed: int, categorical: bool = False, row_group_rows: int = ROW_GROUP_ROWS
) -> None:
    """rows x 32 float32 features + label + id (+ 4 text columns of 10 to 10,000 categories), in 16 appends
    of row groups of ROW_GROUP_ROWS."""
    import pyarrow as pa

    from pipeline.lake.ingest import append_arrow

    rng = np.random.default_rng(seed)
    per_append = rows // 16
    for part in range(16):
        features = rng.standard_normal((per_append, 32), dtype=np.float32)
        columns = {name: features[:, i] for i, name in enumerate(FEATURES)}
        if categorical:
            for name, count in CATEGORIES.items():
                dictionary = pa.array([f"{name}-{i}" for i in range(count)])
                indices = pa.array(rng.integers(0, count, per_append).astype(np.int32))
                columns[name] = pa.DictionaryArray.from_arrays(indices, dictionary).cast(pa.string())
        columns["label"] = np.argmax(features[:, :10], axis=1).astype(np.int64)
        columns["id"] = np.arange(part * per_append, (part + 1) * per_append, dtype=np.int64)
        layout = {"write.parquet.row-group-limit": str(row_group_rows)}
        append_arrow(
            catalog, identifier, pa.table(columns), source="bench", table_properties=layout, identifier_fields=()
        )


def _catalog(warehouse: Path):
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog("bench", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=(warehouse / "wh").as_uri())


def _table(warehouse: Path, kind: str):
    return _catalog(warehouse).load_table(TABLES[kind])


# ---------------------------------------------------------------- the readers


def _pinned(table):
    from pipeline.data.snapshots import resolve_snapshot
    from pipeline.data.specs import SnapshotRequest

    return resolve_snapshot(table, SnapshotRequest(".".join(table.name())), "bench")


def _spec(kind: str, **extra):
    from pipeline.data.specs import ReadSpec

    return ReadSpec(features=tuple(FEATURES) if kind == "tabular" else ("pixels",), **extra)


def _files(table) -> list[str]:
    return sorted(task.file.file_path.removeprefix("file://") for task in table.scan().plan_files())


def _to_features(batch, kind: str):
    """What every baseline does per decoded chunk: float32 features and int64 labels as tensors."""
    import torch

    from pipeline.data.tensors import TensorLayout, features_to_tensor

    if kind == "tabular":
        layout = TensorLayout(label="label", features=tuple(FEATURES))
    else:
        layout = TensorLayout(label="label", features=("pixels",), image_shape=(1, 28, 28), image_scale=255.0)
    return features_to_tensor(batch, layout), torch.from_numpy(batch.column("label").to_numpy())


def _slices(features, labels) -> Iterator:
    for start in range(0, len(labels), BATCH):
        yield features[start : start + BATCH], labels[start : start + BATCH]


def whole_files(table) -> Iterator:
    """PyArrow's default read of each data file (``pq.read_table``: every column, all cores, no Iceberg), then tensors."""
    import pyarrow.parquet as pq

    for path in _files(table):
        batch = pq.read_table(path, columns=[*FEATURES, "label"]).combine_chunks().to_batches()[0]
        yield from _slices(*_to_features(batch, "tabular"))


def limit(table, kind: str, shuffle: bool = False) -> Iterator:
    """PyArrow straight from the data files (whole files, multithreaded); optionally one permutation gather per buffer."""
    import pyarrow.parquet as pq
    import torch

    columns = FEATURES + ["label"] if kind == "tabular" else ["pixels", "label"]
    rng = np.random.default_rng(0)
    buffer: list = []
    block = BLOCK_ROWS if kind == "tabular" else _image_block_rows()
    for path in _files(table):
        for batch in pq.read_table(path, columns=columns, use_threads=True).to_batches(max_chunksize=ROW_GROUP_ROWS):
            features, labels = _to_features(batch, kind)
            if not shuffle:
                yield from _slices(features, labels)
                continue
            buffer.append((features, labels))
            if sum(len(b[1]) for b in buffer) >= block:
                yield from _gathered(buffer, rng, torch)
                buffer = []
    if buffer:
        yield from _gathered(buffer, rng, torch)


def _image_block_rows() -> int:
    from pipeline.data.specs import LoaderConfig

    return LoaderConfig().buffer_mb * 2**20 // (4 * 784 + 8)


def _gathered(buffer, rng, torch) -> Iterator:
    """One permutation gather over the buffer, done the fast way (NumPy take), as icetrain does."""
    features = np.concatenate([b[0].numpy() for b in buffer])
    labels = np.concatenate([b[1].numpy() for b in buffer])
    order = rng.permutation(len(labels))
    yield from _slices(torch.from_numpy(np.take(features, order, axis=0)), torch.from_numpy(np.take(labels, order)))


def naive(table, kind: str) -> Iterator:
    """What a newcomer writes: the whole scan to pandas, a TensorDataset, DataLoader(shuffle=True)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    frame = table.scan().to_arrow().to_pandas()
    features = torch.tensor(frame[FEATURES].to_numpy(dtype=np.float32))
    labels = torch.tensor(frame["label"].to_numpy())
    yield from DataLoader(TensorDataset(features, labels), batch_size=BATCH, shuffle=True)


def batch_reader(table, kind: str) -> Iterator:
    """PyIceberg's own streaming reader (each data file is read whole before its batches come)."""
    for batch in table.scan(selected_fields=(*FEATURES, "label")).to_arrow_batch_reader():
        yield from _slices(*_to_features(batch, kind))


def icetrain(
    table,
    kind: str,
    shuffle: bool,
    workers: int = 0,
    sql: str | None = None,
    row_filter: str | None = None,
    classes=None,
    threads: int = 2,
) -> Iterator:
    yield from _loader(table, kind, shuffle, workers, sql, row_filter, classes, threads)


def _loader(
    table,
    kind: str,
    shuffle: bool,
    workers: int = 0,
    sql: str | None = None,
    row_filter: str | None = None,
    classes=None,
    threads: int = 2,
    cache: str | None = None,
):
    from pipeline.data.loading import open_loader
    from pipeline.data.specs import LoaderConfig

    spec = _spec(kind, sql=sql, row_filter=row_filter, classes=classes)
    caching = (
        {"cache_dir": cache, "cache_mb": 16384} if cache else {"cache_mb": 0}
    )  # rows measure decoding unless they say
    config = LoaderConfig(
        batch_size=BATCH,
        shuffle=shuffle,
        num_workers=workers,
        decode_threads=threads,
        block_rows=BLOCK_ROWS if kind == "tabular" else None,
        **caching,
    )
    return open_loader(table, _pinned(table), spec, config)


def categorical(table, with_categories: bool) -> Iterator:
    """A shuffled epoch of the categorical table: the 32 numbers and the 4 text columns, or the numbers alone.

    With categories the vocabularies are learned first (one pass over the rows), outside the
    epoch's timing; the result's ``vocabulary_s`` is that pass.
    """
    from dataclasses import replace

    from pipeline.data.loading import open_loader
    from pipeline.data.reading import prepare_read
    from pipeline.data.specs import LoaderConfig, ReadSpec
    from pipeline.data.vocabulary import learn_encoding

    features = (*FEATURES, *CATEGORIES) if with_categories else tuple(FEATURES)
    pinned = _pinned(table)
    read = prepare_read(table, pinned, ReadSpec(features=features))
    config = LoaderConfig(batch_size=BATCH, shuffle=True, block_rows=BLOCK_ROWS, cache_mb=0)
    if with_categories:
        started = time.perf_counter()
        encoding = learn_encoding(read, config, max_categories=20_000)
        _EXTRA["vocabulary_s"] = time.perf_counter() - started
        read = replace(read, layout=read.layout.with_encoding(encoding))
        _timer_reset()
    for *_, labels in open_loader(table, pinned, read.spec, config, prepared=read):
        yield labels, labels


def cached(table, kind: str, fill_only: bool = False) -> Iterator:
    """A shuffled epoch from the decoded cache (filled by an untimed first epoch), or the filling epoch itself."""
    folder = tempfile.mkdtemp(prefix="icetrain-bench-cache-")
    try:
        loader = _loader(table, kind, shuffle=True, cache=folder)
        if fill_only:
            yield from loader
            return
        for _ in loader:
            pass
        _timer_reset()
        yield from loader  # epoch 1: every row group from the cache
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def decode_only(table, kind: str, threads: int) -> Iterator:
    """Row groups decoded into tensors by ``threads`` threads, nothing else (no shuffle, no batches)."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.data.rows import piece_tensors

    loader = _loader(table, kind, shuffle=False)
    groups = loader.source.plan.row_groups
    with ThreadPoolExecutor(threads) as pool:
        yield from pool.map(
            lambda unit: piece_tensors(loader.source, loader.layout, loader.vocabulary, unit, 0, groups[unit].num_rows),
            range(len(groups)),
        )


def training(table, kind: str, device: str = "cpu", model: str = "default", max_rows: int | None = None) -> Iterator:
    """Training steps (forward, backward, Adam step) on the loader's batches; yields each step's batch."""
    import torch

    from training.models import small_cnn, tabular_mlp

    loader = _loader(table, kind, shuffle=True)
    shape = loader.layout.feature_shape
    if model == "large":
        net = _large_cnn(shape[0], 10)
    else:
        net = small_cnn(shape, 10) if kind != "tabular" else tabular_mlp(shape, 10)
    net = net.to(device)
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
    loss_fn = torch.nn.CrossEntropyLoss()
    seen = 0
    for features, labels in loader:
        features, labels = features.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        loss_fn(net(features), labels).backward()
        optimizer.step()
        yield features, labels
        seen += len(labels)
        if max_rows is not None and seen >= max_rows:
            break
    if device == "cuda":
        torch.cuda.synchronize()


def predicting(table, model: str, device: str = "cpu") -> Iterator:
    """Score the whole table with an untrained model of the given kind and commit the predictions: icetrain predict's
    path without MLflow (read, model, predictions into data files, one commit). Yields the rows scored once, at the end."""
    import torch

    from pipeline.config.tree import DataConfig
    from pipeline.data.reading import snapshot_schema
    from pipeline.lake.predictions import Scorer, commit_predictions
    from training.compute import Compute
    from training.models import tabular_mlp
    from training.predict import plan_scoring, score_into
    from training.serving import ScoringSpec

    _timer_reset()  # importing MLflow (through training.predict) is not scoring
    torch.manual_seed(0)
    pinned = _pinned(table)
    data = DataConfig(table=pinned.table, label="label", features=tuple(FEATURES), classes=CLASSES, val_fraction=0)
    spec = ScoringSpec(data, snapshot_schema(table, pinned).select(*FEATURES))
    scorer = Scorer(run_id="0" * 32, name="bench", version="1", owner="bench", task="classification", classes=CLASSES)
    into = f"bench.predictions_{model}_{time.time_ns()}"
    job = plan_scoring(_catalog_of(table), table, pinned, spec, scorer, into, key=("id",))
    module = torch.nn.Linear(len(FEATURES), 10) if model == "linear" else tabular_mlp((len(FEATURES),), 10)
    compute = Compute(torch.device(device), "bf16" if device == "cuda" else "fp32")
    scored = score_into(job, module, compute, file_mb=PREDICT_FILE_MB)
    commit_predictions(_catalog_of(table), job.target, scored.paths, scorer, job.scored, scored.rows)
    _EXTRA["model_share"] = scored.model_seconds / (time.perf_counter() - _TIMER["start"])
    yield None, range(scored.rows)


def _catalog_of(table):
    from pyiceberg.catalog.sql import SqlCatalog

    location = Path(table.location().removeprefix("file://"))
    warehouse = next(parent for parent in location.parents if (parent / "catalog.db").exists())
    return SqlCatalog("bench", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=(warehouse / "wh").as_uri())


def gpu_feed(table, kind: str) -> Iterator:
    """Batches copied into GPU memory (pinned host memory, non_blocking), nothing else."""
    import torch

    for features, labels in _loader(table, kind, shuffle=True):
        yield features.to("cuda", non_blocking=True), labels.to("cuda", non_blocking=True)
    torch.cuda.synchronize()


def _large_cnn(channels: int, classes: int):
    """A ResNet-like image model, several times the demo CNN's compute per image."""
    from torch import nn

    def block(into: int, out: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(into, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True),
                             nn.Conv2d(out, out, 3, padding=1, bias=False), nn.BatchNorm2d(out), nn.ReLU(inplace=True))  # fmt: skip

    return nn.Sequential(
        block(channels, 64),
        nn.MaxPool2d(2),
        block(64, 128),
        nn.MaxPool2d(2),
        block(128, 256),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(256, classes),
    )


SQL = "select " + ", ".join(FEATURES) + ", label from snapshot where id % 10 <> 0"
CLASSES = tuple(str(c) for c in range(10))
TRAIN_ROWS = {
    "tabular": 1_000_000,
    "images": 20_000,
}  # rows per training row (a part of an epoch: rows/s is the measure)

# Each reader gets the loaded table: connecting to the catalog is not the reader's cost.
ROWS: dict[str, tuple[str, Callable[..., Iterator]]] = {
    "limit": ("tabular", lambda w: limit(w, "tabular")),
    "limit_shuffled": ("tabular", lambda w: limit(w, "tabular", shuffle=True)),
    "naive": ("tabular", lambda w: naive(w, "tabular")),
    "batch_reader": ("tabular", lambda w: batch_reader(w, "tabular")),
    "icetrain": ("tabular", lambda w: icetrain(w, "tabular", shuffle=False)),
    "icetrain_shuffled_w0": ("tabular", lambda w: icetrain(w, "tabular", shuffle=True)),
    "icetrain_shuffled_w2": ("tabular", lambda w: icetrain(w, "tabular", shuffle=True, workers=2)),
    "icetrain_shuffled_cache_fill": ("tabular", lambda w: cached(w, "tabular", fill_only=True)),
    "icetrain_shuffled_cached": ("tabular", lambda w: cached(w, "tabular")),
    "decode_t1": ("tabular", lambda w: decode_only(w, "tabular", threads=1)),
    "decode_t2": ("tabular", lambda w: decode_only(w, "tabular", threads=2)),
    "icetrain_sql": ("tabular", lambda w: icetrain(w, "tabular", shuffle=False, sql=SQL, classes=CLASSES)),
    "icetrain_sql_counted": ("tabular", lambda w: icetrain(w, "tabular", shuffle=False, sql=SQL)),
    "icetrain_filtered": ("tabular", lambda w: icetrain(w, "tabular", shuffle=False, row_filter="id < {quarter}")),
    "limit_images": ("images", lambda w: limit(w, "images")),
    "limit_shuffled_images": ("images", lambda w: limit(w, "images", shuffle=True)),
    "icetrain_images": ("images", lambda w: icetrain(w, "images", shuffle=False)),
    "icetrain_shuffled_w0_images": ("images", lambda w: icetrain(w, "images", shuffle=True)),
    "limit_images_list": ("images_list", lambda w: limit(w, "images_list")),
    "icetrain_images_list": ("images_list", lambda w: icetrain(w, "images_list", shuffle=False)),
    "limit_whole_files": ("whole_files", whole_files),
    "icetrain_whole_files": ("whole_files", lambda w: icetrain(w, "tabular", shuffle=False)),
    "icetrain_shuffled_whole_files": ("whole_files", lambda w: icetrain(w, "tabular", shuffle=True)),
    "icetrain_numeric_of_categorical": ("categorical", lambda w: categorical(w, with_categories=False)),
    "icetrain_categorical": ("categorical", lambda w: categorical(w, with_categories=True)),
    "predict_linear": ("tabular", lambda w: predicting(w, "linear")),
    "predict_mlp": ("tabular", lambda w: predicting(w, "mlp")),
    "train_mlp": ("tabular", lambda w: training(w, "tabular", max_rows=TRAIN_ROWS["tabular"])),
    "train_cnn": ("images", lambda w: training(w, "images", max_rows=TRAIN_ROWS["images"])),
}
# With --device cuda (skipped, with the reason, where CUDA is missing).
CUDA_ROWS: dict[str, tuple[str, Callable[..., Iterator]]] = {
    "gpu_feed_images": ("images", lambda w: gpu_feed(w, "images")),
    "train_cnn_cuda": ("images", lambda w: training(w, "images", device="cuda")),
    "train_large_cnn_cuda": ("images", lambda w: training(w, "images", device="cuda", model="large")),
    "predict_cuda": ("tabular", lambda w: predicting(w, "mlp", device="cuda")),
}
# Peak memory of the whole process tree (PSS: pages shared between processes counted once) for these.
TREE_ROWS = ("icetrain_shuffled_w0", "icetrain_shuffled_w2")
SCALE_ROW = "icetrain_20m"
PREDICT_SCALE_ROW = "predict_20m"
PREDICT_FILE_MB = 128  # predictions per data file (predict.file_mb's default); not held in memory
# What scoring holds: the row groups decoding ahead (decode threads + 1, each as Arrow columns and as a
# float32 tensor of 33 columns) and the prediction batches queued for the file writer (2 + the one
# being written, about 100 bytes a row).
PREDICT_BUFFER_MB = (3 * ROW_GROUP_ROWS * 33 * 4 * 2 + 3 * 65536 * 100) / 2**20


# ---------------------------------------------------------------- measuring one row (child process)


def measure(name: str, warehouse: Path, rows: int, sample_memory: bool = False) -> dict:
    """Run one reader over a full epoch in this process and report its speed and memory."""
    import pyarrow  # noqa: F401 - imports count towards the baseline RSS, not the reader
    import torch  # noqa: F401

    import pipeline.data.reading  # noqa: F401

    if name.startswith("predict"):
        import training.predict  # noqa: F401 - scoring's imports (MLflow among them) count towards the baseline too
    if name == SCALE_ROW:
        kind, make = "tabular_20m", lambda w: icetrain(w, "tabular", shuffle=True)
    elif name == PREDICT_SCALE_ROW:
        kind, make = "tabular_20m", lambda w: predicting(w, "linear")
    else:
        kind, make = {**ROWS, **CUDA_ROWS}[name]
    if name == "icetrain_filtered":
        quarter = rows // 4
        make = lambda w: icetrain(w, "tabular", shuffle=False, row_filter=f"id < {quarter}")  # noqa: E731
    table = _table(warehouse, kind)
    rss_after_imports = _rss_mb()
    sampler = _TreeMemory() if sample_memory else None
    gpu = _GpuUtilisation() if name in CUDA_ROWS else None
    _TIMER["start"] = time.perf_counter()
    ttfb = None
    count = 0
    for features, labels in make(table):
        if ttfb is None:
            ttfb = time.perf_counter() - _TIMER["start"]
        count += len(labels)
        del features, labels
    elapsed = time.perf_counter() - _TIMER["start"]
    result = {
        "name": name,
        "table": "tabular" if kind == "tabular_20m" else kind,
        "rows": count,
        "rows_per_s": count / elapsed,
        "ttfb_s": ttfb,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_imports_mb": rss_after_imports,
        "seconds": elapsed,
        **_EXTRA,
    }
    if sampler is not None:
        result["peak_tree_pss_mb"] = sampler.stop()
    if gpu is not None:
        result["gpu_utilisation"] = gpu.stop()
    if name == SCALE_ROW:
        result["rss_budget_mb"] = rss_after_imports + BLOCK_ROWS * (32 * 4 + 8) / 2**20 + 300
    if name == PREDICT_SCALE_ROW:
        result["rss_budget_mb"] = rss_after_imports + PREDICT_BUFFER_MB + 300
    if name == "icetrain_filtered" or name == "icetrain":
        result["bytes_planned"] = _bytes_planned(
            warehouse, f"id < {rows // 4}" if name == "icetrain_filtered" else None
        )
    return result


_TIMER: dict[str, float] = {}
_EXTRA: dict[str, float] = {}  # what a row measures besides its epoch (the vocabulary pass)


def _timer_reset() -> None:
    """Start timing now (a row whose first part is preparation, such as filling the cache)."""
    _TIMER["start"] = time.perf_counter()


class _TreeMemory:
    """Samples the PSS of this process and its children every 50 ms (PSS splits pages shared after fork)."""

    def __init__(self) -> None:
        import threading

        self.peak = _tree_pss_mb()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopped.wait(0.05):
            self.peak = max(self.peak, _tree_pss_mb())

    def stop(self) -> float:
        self._stopped.set()
        self._thread.join()
        return self.peak


def _tree_pss_mb() -> float:
    pids = [os.getpid()]
    try:
        pids += [int(pid) for pid in Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").read_text().split()]
    except OSError:
        pass
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as rollup:
                total += sum(int(line.split()[1]) for line in rollup if line.startswith("Pss:"))
        except OSError:
            continue
    return total / 1024


class _GpuUtilisation:
    """Mean GPU utilisation (%) from nvidia-smi sampled every 200 ms while the row runs (None without nvidia-smi)."""

    def __init__(self) -> None:
        import shutil

        command = ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"]
        self._process = (
            subprocess.Popen(command, stdout=subprocess.PIPE, text=True) if shutil.which("nvidia-smi") else None
        )

    def stop(self) -> float | None:
        if self._process is None:
            return None
        self._process.terminate()
        samples = [
            float(line) for line in self._process.communicate()[0].split() if line.strip().replace(".", "").isdigit()
        ]
        return sum(samples) / len(samples) if samples else None


def _bytes_planned(warehouse: Path, row_filter: str | None) -> int:
    table = _table(warehouse, "tabular")
    scan = table.scan(row_filter=row_filter) if row_filter else table.scan()
    return sum(task.file.file_size_in_bytes for task in scan.plan_files())


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM; ru_maxrss would carry the parent's peak across exec)."""
    return _status_mb("VmHWM")


# ---------------------------------------------------------------- the report (parent process)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=4_000_000, help="rows of the tabular table (images: rows / 20)")
    parser.add_argument(
        "--scale-rows",
        type=int,
        default=20_000_000,
        help=f"rows of the table for the {SCALE_ROW} row (0: leave the row out)",
    )
    parser.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="cuda adds the GPU rows (skipped with the reason where CUDA is missing)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--only", nargs="*", help="measure only these rows")
    parser.add_argument(
        "--repeat", type=int, default=2, help="runs per row; the fastest is reported (this machine is noisy)"
    )
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--sample-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reprint", type=Path, help="print the table of a saved results.json again")
    parser.add_argument("--warehouse", type=Path, help="keep (or reuse) the benchmark tables in this folder")
    args = parser.parse_args()
    if args.reprint:
        report(
            [row for row in json.loads(args.reprint.read_text()) if row.get("table")], None
        )  # planning rows have their own script
        return
    if args.row:
        print(json.dumps(measure(args.row, args.warehouse, args.rows, args.sample_memory)))
        return
    names = list(args.only or [*ROWS, *([SCALE_ROW, PREDICT_SCALE_ROW] if args.scale_rows else [])])
    if args.device == "cuda" and not args.only:
        import torch

        if torch.cuda.is_available():
            names += list(CUDA_ROWS)
        else:
            print(
                f"skipped {', '.join(CUDA_ROWS)}: no CUDA device here (torch {torch.__version__}, torch.cuda.is_available() is False)",
                flush=True,
            )
    with tempfile.TemporaryDirectory(prefix="icetrain-bench-") as folder:
        warehouse = args.warehouse or Path(folder)
        if not (warehouse / "catalog.db").exists():
            started = time.perf_counter()
            warehouse.mkdir(parents=True, exist_ok=True)
            build_tables(warehouse, args.rows)
            print(
                f"built tables ({args.rows:,} tabular rows, {max(args.rows // 20, 8):,} images) in {time.perf_counter() - started:.0f}s",
                flush=True,
            )
        if {SCALE_ROW, PREDICT_SCALE_ROW} & set(names) and not _catalog(warehouse).table_exists(TABLES["tabular_20m"]):
            started = time.perf_counter()
            build_tabular(_catalog(warehouse), TABLES["tabular_20m"], args.scale_rows, seed=1)
            print(f"built the {args.scale_rows:,}-row table in {time.perf_counter() - started:.0f}s", flush=True)
        results = []
        for name in names:
            runs = []
            for repeat in range(args.repeat + (1 if name in TREE_ROWS else 0)):  # the workers pair is compared closely
                sample = name in TREE_ROWS and repeat == 0  # the sampler costs a little: the other runs give the speed
                child = subprocess.run(
                    [sys.executable, __file__, "--row", name, "--warehouse", str(warehouse), "--rows", str(args.rows), *(["--sample-memory"] if sample else [])],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                if child.returncode != 0:
                    print(f"{name}: failed\n{child.stderr[-2000:]}", file=sys.stderr)
                    break
                runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
            if runs:
                best = max(runs, key=lambda r: r["rows_per_s"])
                best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
                sampled = [r["peak_tree_pss_mb"] for r in runs if "peak_tree_pss_mb" in r]
                if sampled:
                    best["peak_tree_pss_mb"] = max(sampled)
                results.append(best)
                print(f"  measured {name}", flush=True)
    report(results, args.out)


def report(results: list[dict], out: Path | None) -> None:
    limits = {
        r["table"]: r["rows_per_s"] for r in results if r["name"].startswith("limit") and "shuffled" not in r["name"]
    }
    for r in results:
        r["ratio_to_limit"] = r["rows_per_s"] / limits[r["table"]] if r["table"] in limits else None
    by_name = {r["name"]: r for r in results}
    header = f"{'name':<30}{'table':<13}{'rows/s':>12}{'ratio':>8}{'ttfb s':>9}{'peak RSS MB':>13}{'tree PSS MB':>13}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        ratio = f"{r['ratio_to_limit']:.2f}" if r["ratio_to_limit"] is not None else "-"
        tree = f"{r['peak_tree_pss_mb']:.0f}" if r.get("peak_tree_pss_mb") else "-"
        print(
            f"{r['name']:<30}{r['table']:<13}{r['rows_per_s'] / 1e6:>10.3f} M{ratio:>8}{r['ttfb_s']:>9.3f}{r['peak_rss_mb']:>13.0f}{tree:>13}"
        )
    print()
    checks = []

    def ratio(label: str, top: str, bottom: str, target: float, key: str = "rows_per_s") -> None:
        if {top, bottom} <= set(by_name) and by_name[top].get(key) and by_name[bottom].get(key):
            checks.append((label, by_name[top][key] / by_name[bottom][key], target))

    ratio("icetrain unshuffled >= 0.9 x limit", "icetrain", "limit", 0.9)
    if {"icetrain_shuffled_w0", "limit_shuffled"} <= set(by_name):
        best = max(by_name[n]["rows_per_s"] for n in ("icetrain_shuffled_w0", "icetrain_shuffled_w2") if n in by_name)
        checks.append(
            ("icetrain shuffled (best) >= 0.9 x shuffled limit", best / by_name["limit_shuffled"]["rows_per_s"], 0.9)
        )
    ratio("icetrain shuffled >= 10 x naive shuffled", "icetrain_shuffled_w0", "naive", 10)
    ratio("2 workers >= 0.95 x in-process (shuffled)", "icetrain_shuffled_w2", "icetrain_shuffled_w0", 0.95)
    ratio("decoding: 2 threads >= 1.6 x 1 thread", "decode_t2", "decode_t1", 1.6)
    ratio("cached epoch >= 3 x the decode limit", "icetrain_shuffled_cached", "limit", 3)
    ratio(
        "epoch that fills the cache >= 0.8 x one without", "icetrain_shuffled_cache_fill", "icetrain_shuffled_w0", 0.8
    )
    ratio("SQL transform (declared classes) >= 0.7 x plain", "icetrain_sql", "icetrain", 0.7)
    ratio(f"{SCALE_ROW} rows/s >= 0.9 x the 4 M-row table's", SCALE_ROW, "icetrain_shuffled_w0", 0.9)
    ratio(
        "16 files of one row group: icetrain >= 1.0 x PyArrow's own read",
        "icetrain_whole_files",
        "limit_whole_files",
        1.0,
    )
    ratio(
        "16 files of one row group: shuffled >= 1.0 x PyArrow's own read",
        "icetrain_shuffled_whole_files",
        "limit_whole_files",
        1.0,
    )
    ratio(
        "4 text columns (10..10,000 categories) >= 0.7 x numbers only",
        "icetrain_categorical",
        "icetrain_numeric_of_categorical",
        0.7,
    )
    ratio("predict_linear (score and write) >= 0.6 x the loader", "predict_linear", "icetrain", 0.6)
    for label, value, target in checks:
        print(f"{label:<56} {value:6.2f}  {'ok' if value >= target else 'MISSED'}")
    if "icetrain_shuffled_w0" in by_name:
        r = by_name["icetrain_shuffled_w0"]
        buffer_mb = BLOCK_ROWS * (32 * 4 + 8) / 2**20
        bound = r["rss_after_imports_mb"] + buffer_mb + 300
        verdict = "ok" if r["peak_rss_mb"] <= bound else "MISSED"
        print(
            f"{'icetrain shuffled peak RSS <= imports + buffer + 300 MB':<56} {r['peak_rss_mb']:6.0f} <= {bound:.0f} MB  {verdict}"
        )
        ttfb = max(by_name[n]["ttfb_s"] for n in by_name if n.startswith("icetrain") and "sql" not in n)
        print(
            f"{'icetrain time to first batch (worst, no SQL) < 0.5 s':<56} {ttfb:6.3f}  {'ok' if ttfb < 0.5 else 'MISSED'}"
        )
    if {"icetrain_sql_counted", "icetrain"} <= set(by_name):
        value = by_name["icetrain_sql_counted"]["rows_per_s"] / by_name["icetrain"]["rows_per_s"]
        print(f"{'SQL transform without declared classes (counts first)':<56} {value:6.2f}  (no target)")
    for name, note in (("icetrain_sql", "declared classes: streams at once"), ("icetrain_sql_counted", "counts first")):
        if name in by_name:
            value = by_name[name]["ttfb_s"]
            print(
                f"{f'{name} time to first batch < 0.5 s ({note})':<56} {value:6.3f}  {'ok' if value < 0.5 else 'MISSED'}"
            )
    if all(by_name.get(n, {}).get("peak_tree_pss_mb") for n in TREE_ROWS):
        w0, w2 = (by_name[n]["peak_tree_pss_mb"] for n in TREE_ROWS)
        print(
            f"{'2 workers: tree PSS <= 1.5 x in-process':<56} {w2:6.0f} <= {1.5 * w0:.0f} MB  {'ok' if w2 <= 1.5 * w0 else 'MISSED'}"
        )
    for name in (SCALE_ROW, PREDICT_SCALE_ROW):
        if name in by_name:
            r = by_name[name]
            print(
                f"{name + ' peak RSS <= imports + buffer + 300 MB':<56} {r['peak_rss_mb']:6.0f} <= {r['rss_budget_mb']:.0f} MB  {'ok' if r['peak_rss_mb'] <= r['rss_budget_mb'] else 'MISSED'}"
            )
    for name in ("predict_linear", "predict_mlp", "predict_cuda"):
        if by_name.get(name, {}).get("model_share") is not None:
            print(f"{f'{name}: the model takes this share of the time':<56} {by_name[name]['model_share']:6.1%}")
    for train, alone in (
        ("train_mlp", "icetrain_shuffled_w0"),
        ("train_cnn", "icetrain_shuffled_w0_images"),
        ("train_cnn_cuda", "gpu_feed_images"),
    ):
        if {train, alone} <= set(by_name):
            share = by_name[train]["rows_per_s"] / by_name[alone]["rows_per_s"]
            print(f"{f'{train}: the loader takes this share of a step':<56} {share:6.1%}")
    for name in CUDA_ROWS:
        if by_name.get(name, {}).get("gpu_utilisation") is not None:
            print(f"{f'{name}: mean GPU utilisation':<56} {by_name[name]['gpu_utilisation']:5.0f} %")
    if by_name.get("icetrain_categorical", {}).get("vocabulary_s") is not None:
        r = by_name["icetrain_categorical"]
        print(
            f"{'vocabulary pass, as a share of the first epoch':<56} {r['vocabulary_s'] / r['seconds']:6.1%}  (no target)"
        )
    if {"icetrain", "icetrain_filtered"} <= set(by_name):
        full, pruned = by_name["icetrain"]["bytes_planned"], by_name["icetrain_filtered"]["bytes_planned"]
        print(f"{'filter id < rows/4 prunes files: bytes planned':<56} {pruned / 2**20:6.0f} of {full / 2**20:.0f} MB")
    if out is not None:
        from planning_bench import merge_results

        keys = (
            "name",
            "rows_per_s",
            "ratio_to_limit",
            "ttfb_s",
            "peak_rss_mb",
            "table",
            "rows",
            "rss_after_imports_mb",
            "bytes_planned",
            "peak_tree_pss_mb",
            "rss_budget_mb",
            "gpu_utilisation",
            "vocabulary_s",
            "model_share",
            "seconds",
        )
        merge_results(
            out,
            [
                {k: r.get(k) for k in keys if k in r or k in ("name", "rows_per_s", "ttfb_s", "peak_rss_mb")}
                for r in results
            ],
        )
        print(f"\nwrote {out}")


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    main()
