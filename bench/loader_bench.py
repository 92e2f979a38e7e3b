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
TABLES = {"tabular": "bench.tabular", "images": "bench.images", "images_list": "bench.images_list"}


# ---------------------------------------------------------------- building the tables


def build_tables(warehouse: Path, rows: int) -> None:
    """tabular: rows x 32 float32 + label + id in 16 appends; images: rows/20 28x28 uint8 in 8 appends, two layouts."""
    import pyarrow as pa

    from pipeline.ingest import append_arrow
    from pipeline.tensors import image_properties

    catalog = _catalog(warehouse)
    rng = np.random.default_rng(0)
    layout = {"write.parquet.row-group-limit": str(ROW_GROUP_ROWS)}
    per_append = rows // 16
    for part in range(16):
        features = rng.standard_normal((per_append, 32), dtype=np.float32)
        columns = {name: features[:, i] for i, name in enumerate(FEATURES)}
        columns["label"] = np.argmax(features[:, :10], axis=1).astype(np.int64)
        columns["id"] = np.arange(part * per_append, (part + 1) * per_append, dtype=np.int64)
        append_arrow(catalog, TABLES["tabular"], pa.table(columns), source="bench", table_properties=layout, identifier_fields=())
    images = max(rows // 20, 8)
    per_image_append = images // 8
    for part in range(8):
        pixels = rng.integers(0, 256, (per_image_append, 784), dtype=np.uint8)
        labels = pa.array(rng.integers(0, 10, per_image_append), pa.int64())
        raw = pa.FixedSizeBinaryArray.from_buffers(pa.binary(784), per_image_append, [None, pa.py_buffer(pixels.tobytes())])
        as_list = pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), 784)
        properties = {**layout, **image_properties("pixels", shape=(1, 28, 28), max_value=255)}
        append_arrow(catalog, TABLES["images"], pa.table({"pixels": raw, "label": labels}), source="bench", table_properties=properties)
        append_arrow(catalog, TABLES["images_list"], pa.table({"pixels": as_list, "label": labels}), source="bench", table_properties=properties)


def _catalog(warehouse: Path):
    from pyiceberg.catalog.sql import SqlCatalog

    return SqlCatalog("bench", uri=f"sqlite:///{warehouse / 'catalog.db'}", warehouse=(warehouse / "wh").as_uri())


def _table(warehouse: Path, kind: str):
    return _catalog(warehouse).load_table(TABLES[kind])


# ---------------------------------------------------------------- the readers


def _pinned(table):
    from pipeline.specs import SnapshotRequest
    from pipeline.snapshots import resolve_snapshot

    return resolve_snapshot(table, SnapshotRequest(".".join(table.name())), "bench")


def _spec(kind: str, **extra):
    from pipeline.specs import ReadSpec

    return ReadSpec(features=tuple(FEATURES) if kind == "tabular" else ("pixels",), **extra)


def _files(table) -> list[str]:
    return sorted(task.file.file_path.removeprefix("file://") for task in table.scan().plan_files())


def _to_features(batch, kind: str):
    """What every baseline does per decoded chunk: float32 features and int64 labels as tensors."""
    import torch

    from pipeline.tensors import TensorLayout, features_to_tensor

    if kind == "tabular":
        layout = TensorLayout(label="label", features=tuple(FEATURES))
    else:
        layout = TensorLayout(label="label", features=("pixels",), image_shape=(1, 28, 28), image_scale=255.0)
    return features_to_tensor(batch, layout), torch.from_numpy(batch.column("label").to_numpy())


def _slices(features, labels) -> Iterator:
    for start in range(0, len(labels), BATCH):
        yield features[start : start + BATCH], labels[start : start + BATCH]


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
    from pipeline.specs import LoaderConfig

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


def icetrain(table, kind: str, shuffle: bool, workers: int = 0, sql: str | None = None, row_filter: str | None = None) -> Iterator:
    from pipeline.specs import LoaderConfig
    from pipeline.reading import open_loader

    spec = _spec(kind, sql=sql, row_filter=row_filter)
    config = LoaderConfig(batch_size=BATCH, shuffle=shuffle, num_workers=workers, block_rows=BLOCK_ROWS if kind == "tabular" else None)
    yield from open_loader(table, _pinned(table), spec, config)


SQL = "select " + ", ".join(FEATURES) + ", label from snapshot where id % 10 <> 0"

# Each reader gets the loaded table: connecting to the catalog is not the reader's cost.
ROWS: dict[str, tuple[str, Callable[..., Iterator]]] = {
    "limit": ("tabular", lambda w: limit(w, "tabular")),
    "limit_shuffled": ("tabular", lambda w: limit(w, "tabular", shuffle=True)),
    "naive": ("tabular", lambda w: naive(w, "tabular")),
    "batch_reader": ("tabular", lambda w: batch_reader(w, "tabular")),
    "icetrain": ("tabular", lambda w: icetrain(w, "tabular", shuffle=False)),
    "icetrain_shuffled_w0": ("tabular", lambda w: icetrain(w, "tabular", shuffle=True)),
    "icetrain_shuffled_w2": ("tabular", lambda w: icetrain(w, "tabular", shuffle=True, workers=2)),
    "icetrain_sql": ("tabular", lambda w: icetrain(w, "tabular", shuffle=False, sql=SQL)),
    "icetrain_filtered": ("tabular", lambda w: icetrain(w, "tabular", shuffle=False, row_filter="id < {quarter}")),
    "limit_images": ("images", lambda w: limit(w, "images")),
    "limit_shuffled_images": ("images", lambda w: limit(w, "images", shuffle=True)),
    "icetrain_images": ("images", lambda w: icetrain(w, "images", shuffle=False)),
    "icetrain_shuffled_w0_images": ("images", lambda w: icetrain(w, "images", shuffle=True)),
    "limit_images_list": ("images_list", lambda w: limit(w, "images_list")),
    "icetrain_images_list": ("images_list", lambda w: icetrain(w, "images_list", shuffle=False)),
}


# ---------------------------------------------------------------- measuring one row (child process)


def measure(name: str, warehouse: Path, rows: int) -> dict:
    """Run one reader over a full epoch in this process and report its speed and memory."""
    import pyarrow  # noqa: F401 - imports count towards the baseline RSS, not the reader
    import torch  # noqa: F401

    import pipeline.reading  # noqa: F401

    kind, make = ROWS[name]
    if name == "icetrain_filtered":
        quarter = rows // 4
        make = lambda w: icetrain(w, "tabular", shuffle=False, row_filter=f"id < {quarter}")  # noqa: E731
    table = _table(warehouse, kind)
    rss_after_imports = _rss_mb()
    start = time.perf_counter()
    ttfb = None
    count = 0
    for features, labels in make(table):
        if ttfb is None:
            ttfb = time.perf_counter() - start
        count += len(labels)
        del features, labels
    elapsed = time.perf_counter() - start
    result = {
        "name": name,
        "table": kind,
        "rows": count,
        "rows_per_s": count / elapsed,
        "ttfb_s": ttfb,
        "peak_rss_mb": _peak_rss_mb(),
        "rss_after_imports_mb": rss_after_imports,
        "seconds": elapsed,
    }
    if name == "icetrain_filtered" or name == "icetrain":
        result["bytes_planned"] = _bytes_planned(warehouse, "id < {}".format(rows // 4) if name == "icetrain_filtered" else None)
    return result


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
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    parser.add_argument("--only", nargs="*", help="measure only these rows")
    parser.add_argument("--repeat", type=int, default=2, help="runs per row; the fastest is reported (this machine is noisy)")
    parser.add_argument("--row", help=argparse.SUPPRESS)
    parser.add_argument("--reprint", type=Path, help="print the table of a saved results.json again")
    parser.add_argument("--warehouse", type=Path, help="keep (or reuse) the benchmark tables in this folder")
    args = parser.parse_args()
    if args.reprint:
        report(json.loads(args.reprint.read_text()), args.out)
        return
    if args.row:
        print(json.dumps(measure(args.row, args.warehouse, args.rows)))
        return
    with tempfile.TemporaryDirectory(prefix="icetrain-bench-") as folder:
        warehouse = args.warehouse or Path(folder)
        if not (warehouse / "catalog.db").exists():
            started = time.perf_counter()
            warehouse.mkdir(parents=True, exist_ok=True)
            build_tables(warehouse, args.rows)
            print(f"built tables ({args.rows:,} tabular rows, {max(args.rows // 20, 8):,} images) in {time.perf_counter() - started:.0f}s", flush=True)
        results = []
        for name in args.only or ROWS:
            runs = []
            for _ in range(args.repeat):
                child = subprocess.run(
                    [sys.executable, __file__, "--row", name, "--warehouse", str(warehouse), "--rows", str(args.rows)],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                if child.returncode != 0:
                    print(f"{name}: failed\n{child.stderr[-2000:]}", file=sys.stderr)
                    break
                runs.append(json.loads(child.stdout.strip().splitlines()[-1]))
            if runs:
                best = max(runs, key=lambda r: r["rows_per_s"])
                best["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
                results.append(best)
                print(f"  measured {name}", flush=True)
    report(results, args.out)


def report(results: list[dict], out: Path) -> None:
    limits = {r["table"]: r["rows_per_s"] for r in results if r["name"].startswith("limit") and "shuffled" not in r["name"]}
    for r in results:
        r["ratio_to_limit"] = r["rows_per_s"] / limits[r["table"]] if r["table"] in limits else None
    by_name = {r["name"]: r for r in results}
    header = f"{'name':<30}{'table':<13}{'rows/s':>12}{'ratio':>8}{'ttfb s':>9}{'peak RSS MB':>13}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        ratio = f"{r['ratio_to_limit']:.2f}" if r["ratio_to_limit"] is not None else "-"
        print(f"{r['name']:<30}{r['table']:<13}{r['rows_per_s'] / 1e6:>10.3f} M{ratio:>8}{r['ttfb_s']:>9.3f}{r['peak_rss_mb']:>13.0f}")
    print()
    checks = []
    if {"icetrain", "limit"} <= set(by_name):
        checks.append(("icetrain unshuffled >= 0.9 x limit", by_name["icetrain"]["rows_per_s"] / by_name["limit"]["rows_per_s"], 0.9))
    if {"icetrain_shuffled_w0", "limit_shuffled"} <= set(by_name):
        best = max(by_name[n]["rows_per_s"] for n in ("icetrain_shuffled_w0", "icetrain_shuffled_w2") if n in by_name)
        checks.append(("icetrain shuffled (best) >= 0.9 x shuffled limit", best / by_name["limit_shuffled"]["rows_per_s"], 0.9))
    if {"icetrain_shuffled_w0", "naive"} <= set(by_name):
        checks.append(("icetrain shuffled >= 10 x naive shuffled", by_name["icetrain_shuffled_w0"]["rows_per_s"] / by_name["naive"]["rows_per_s"], 10))
    for label, value, target in checks:
        print(f"{label:<52} {value:6.2f}  {'ok' if value >= target else 'MISSED'}")
    if "icetrain_shuffled_w0" in by_name:
        r = by_name["icetrain_shuffled_w0"]
        buffer_mb = BLOCK_ROWS * (32 * 4 + 8) / 2**20
        bound = r["rss_after_imports_mb"] + buffer_mb + 300
        verdict = "ok" if r["peak_rss_mb"] <= bound else "MISSED"
        print(f"{'icetrain shuffled peak RSS <= imports + buffer + 300 MB':<52} {r['peak_rss_mb']:6.0f} <= {bound:.0f} MB  {verdict}")
        ttfb = max(by_name[n]["ttfb_s"] for n in by_name if n.startswith("icetrain") and n != "icetrain_sql")
        print(f"{'icetrain time to first batch (worst, no SQL) < 0.5 s':<52} {ttfb:6.3f}  {'ok' if ttfb < 0.5 else 'MISSED'}")
        if "icetrain_sql" in by_name:
            sql_ttfb = by_name["icetrain_sql"]["ttfb_s"]
            print(f"{'icetrain_sql time to first batch < 0.5 s (counts first)':<52} {sql_ttfb:6.3f}  {'ok' if sql_ttfb < 0.5 else 'MISSED'}")
    if {"icetrain", "icetrain_filtered"} <= set(by_name):
        full, pruned = by_name["icetrain"]["bytes_planned"], by_name["icetrain_filtered"]["bytes_planned"]
        print(f"{'filter id < rows/4 prunes files: bytes planned':<52} {pruned / 2**20:6.0f} of {full / 2**20:.0f} MB")
    out.write_text(json.dumps([{k: r.get(k) for k in ("name", "rows_per_s", "ratio_to_limit", "ttfb_s", "peak_rss_mb", "table", "rows", "rss_after_imports_mb", "bytes_planned")} for r in results], indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    main()
