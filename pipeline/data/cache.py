"""A local cache of decoded row groups, so epochs after the first run at memory speed.

A pinned snapshot never changes, so what the loader decoded from it for one selection
(snapshot, columns, filter, SQL, split, label classes) stays right. Each row group's tensors
are kept as one uncompressed Arrow IPC file (a ``fixed_size_list<float32>`` column holding
the row-major feature tensor, and the target column), read back through a private
memory map: the rows are used in place, with no decoding and no copy.

Safety:
- Keyed and validated: a selection's folder is named by a digest of everything that decides
  its rows, and holds ``key.json``, compared on every open; a unit file that does not parse,
  or whose shape differs, is dropped and decoded again.
- Concurrent readers and writers: files are written under a unique temporary name and
  renamed into place (atomic), so readers see whole files or none; two processes writing the
  same row group write the same bytes. A process killed while writing leaves only a
  temporary file, which nothing reads and eviction removes.
- Size-bounded: after each write the cache is trimmed to ``limit_mb``, least recently used
  selections first (a selection is used when it is opened); a selection larger than the
  limit alone is not cached at all.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
CACHE_DIR_ENV = "ICETRAIN_CACHE_DIR"
_TEMPORARY = ".tmp-"
_STALE_TEMPORARY_S = 3600
_MIN_FREE_BYTES = 1 << 30

Batch = tuple[torch.Tensor, torch.Tensor]
_WRITTEN: dict[tuple[int, str], int] = {}


def default_cache_dir() -> Path:
    """``$ICETRAIN_CACHE_DIR``, else ``$XDG_CACHE_HOME/icetrain/decoded`` (``~/.cache/icetrain/decoded``)."""
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "icetrain" / "decoded"


@dataclass(frozen=True)
class DecodedCache:
    """The cached row groups of one selection (see the module docstring)."""

    root: Path
    key: dict[str, Any]
    limit_mb: int

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.key, sort_keys=True).encode()).hexdigest()[:32]

    @property
    def folder(self) -> Path:
        return self.root / self.digest

    def open(self) -> DecodedCache:
        """Make (or check) the selection's folder and mark it used; a folder whose key differs is emptied."""
        folder = self.folder
        key_file = folder / "key.json"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if key_file.exists():
                if json.loads(key_file.read_text()) != self.key:
                    log.warning("decoded cache %s holds another selection; clearing it", folder)
                    shutil.rmtree(folder, ignore_errors=True)
                    folder.mkdir(parents=True, exist_ok=True)
                else:
                    os.utime(key_file)
            if not key_file.exists():
                _write_atomically(key_file, json.dumps(self.key, sort_keys=True, indent=1).encode())
        except (OSError, ValueError) as exc:
            log.warning("decoded cache %s unusable (%s); reading without it", folder, exc)
        return self

    def get(self, unit: int, feature_shape: tuple[int, ...]) -> Batch | None:
        """Row group ``unit``'s tensors, mapped from its file (writable, private to this process), or None."""
        path = self._path(unit)
        try:
            with open(path, "rb") as file:
                mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_COPY)
        except (OSError, ValueError):  # not cached yet, evicted meanwhile, or empty
            return None
        try:
            return _tensors(mapped, feature_shape)
        except (pa.ArrowInvalid, ValueError, IndexError, KeyError) as exc:
            log.warning("dropping damaged decoded-cache file %s: %s", path, exc)
            path.unlink(missing_ok=True)
            return None

    def put(self, unit: int, features: torch.Tensor, targets: torch.Tensor) -> None:
        """Keep row group ``unit``'s tensors (best effort: a full disk or a race only skips caching)."""
        size = features.numel() * features.element_size() + targets.numel() * targets.element_size()
        try:
            if (
                self.limit_mb <= 0
                or size > self.limit_mb * 2**20
                or not self.folder.is_dir()
                or shutil.disk_usage(self.root).free < size + _MIN_FREE_BYTES
            ):
                return
            batch = _record_batch(features, targets)
            _write_atomically(self._path(unit), lambda sink: _write_batch(sink, batch))
            if self._written(size) >= self.limit_mb * 2**20 // 20:  # trimming lists the cache: do it every 5 % of it
                self._written(-self._written(0))
                trim(self.root, self.limit_mb, keep=self.digest)
        except OSError as exc:
            log.warning("cannot write decoded cache %s: %s", self.folder, exc)

    def _written(self, more: int) -> int:
        """Bytes written since the last trim (per process), after adding ``more``."""
        key = (os.getpid(), self.digest)
        _WRITTEN[key] = _WRITTEN.get(key, self.limit_mb * 2**20) + more  # the first write trims
        return _WRITTEN[key]

    def _path(self, unit: int) -> Path:
        return self.folder / f"unit-{unit:06d}.arrow"


def trim(root: Path, limit_mb: int, keep: str | None = None) -> None:
    """Delete least recently used selections (and stale temporary files) until the cache fits ``limit_mb``.

    ``keep`` (the selection being written) goes last: if it alone is over the limit, it is
    emptied too, so a selection larger than the cache is not cached.
    """
    try:
        folders = [entry for entry in root.iterdir() if entry.is_dir()]
    except OSError:
        return
    sizes: dict[Path, int] = {}
    used: dict[Path, float] = {}
    now = time.time()
    for folder in folders:
        total = 0
        for entry in _entries(folder):
            try:
                stat = entry.stat()
            except OSError:
                continue
            if entry.name.startswith(_TEMPORARY) and now - stat.st_mtime > _STALE_TEMPORARY_S:
                entry.unlink(missing_ok=True)  # left by a process killed while writing
                continue
            total += stat.st_size
        sizes[folder] = total
        try:
            used[folder] = (folder / "key.json").stat().st_mtime
        except OSError:
            used[folder] = 0.0
    limit = limit_mb * 2**20
    order = sorted(folders, key=lambda folder: (folder.name == keep, used[folder]))
    total = sum(sizes.values())
    for folder in order:
        if total <= limit:
            break
        shutil.rmtree(folder, ignore_errors=True)
        total -= sizes[folder]


def _entries(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError:
        return []


def _record_batch(features: torch.Tensor, targets: torch.Tensor) -> pa.RecordBatch:
    width = int(np.prod(features.shape[1:]))
    values = pa.array(np.ascontiguousarray(features.numpy()).reshape(-1), pa.float32())
    return pa.RecordBatch.from_arrays(
        [pa.FixedSizeListArray.from_arrays(values, width), pa.array(targets.numpy())], names=["features", "target"]
    )


def _tensors(mapped: mmap.mmap, feature_shape: tuple[int, ...]) -> Batch:
    """The features and targets of a unit file, as arrays over the private mapping (no copy)."""
    batch = pa.ipc.open_file(pa.py_buffer(mapped)).get_batch(0)
    features, targets = batch.column(0), batch.column(1)
    width = int(np.prod(feature_shape))
    if features.type.list_size != width or features.null_count or targets.null_count:
        raise ValueError(f"expected {width} features per row, found {features.type.list_size}")
    target_type = np.dtype(targets.type.to_pandas_dtype())
    if not len(batch):
        return torch.empty((0, *feature_shape), dtype=torch.float32), torch.from_numpy(np.empty(0, dtype=target_type))
    base = np.frombuffer(mapped, dtype=np.uint8)
    feature_values = _view(base, mapped, features.values, np.float32).reshape(len(batch), *feature_shape)
    target_values = _view(base, mapped, targets, target_type)
    return torch.from_numpy(feature_values), torch.from_numpy(target_values)


def _view(base: np.ndarray, mapped: mmap.mmap, array: pa.Array, dtype: Any) -> np.ndarray:
    """A writable NumPy view of a primitive Arrow array that lives inside ``mapped``."""
    dtype = np.dtype(dtype)
    start = array.buffers()[1].address - base.ctypes.data + array.offset * dtype.itemsize
    return np.frombuffer(mapped, dtype=dtype, count=len(array), offset=start)


def _write_batch(sink: pa.NativeFile, batch: pa.RecordBatch) -> None:
    with pa.ipc.new_file(sink, batch.schema) as writer:
        writer.write_batch(batch)


def _write_atomically(path: Path, write: bytes | Callable[[pa.NativeFile], None]) -> None:
    """Write to a unique temporary name next to ``path``, then rename it into place."""
    temporary = path.with_name(f"{_TEMPORARY}{uuid.uuid4().hex}-{path.name}")
    try:
        with pa.OSFile(str(temporary), "wb") as sink:
            if callable(write):
                write(sink)
            else:
                sink.write(write)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
