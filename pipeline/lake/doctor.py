"""Files a table's folder holds that no snapshot or metadata file references: found, and removed on request.

A writer killed between writing its Parquet files and committing them, or a commit that lost
a race, leaves data, manifest and metadata files nobody points at. They are invisible to
readers (a snapshot only sees what its manifests list) but use space. A file is an orphan
when it lies under the table's location, is referenced by none of: the current and logged
metadata files, any snapshot's manifest list, manifests and data/delete files, statistics
files; and is older than a safety window, so a writer that is still working keeps its files.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pyarrow import fs
from pyiceberg.io.pyarrow import PyArrowFileIO
from pyiceberg.table import Table

from pipeline.errors import IngestError


@dataclass(frozen=True)
class StrayFile:
    """A file under the table's location that nothing references."""

    path: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class Checkup:
    """What ``inspect_files`` found: orphans old enough to remove, and young ones it kept."""

    orphans: tuple[StrayFile, ...]
    too_young: tuple[StrayFile, ...]
    referenced: int


def referenced_files(table: Table) -> set[str]:
    """Every file the table's metadata points at, as full URIs."""
    metadata = table.metadata
    refs = {table.metadata_location, *(entry.metadata_file for entry in metadata.metadata_log)}
    refs.update(stat.statistics_path for stat in getattr(metadata, "statistics", []) or [])
    for snapshot in table.snapshots():
        refs.add(snapshot.manifest_list)
        refs.update(manifest.manifest_path for manifest in snapshot.manifests(table.io))
    if table.snapshots():
        refs.update(table.inspect.all_files().column("file_path").to_pylist())
    return refs


def inspect_files(table: Table, older_than: timedelta, now: datetime | None = None) -> Checkup:
    """Files under the table's location that nothing references, split by the safety window.

    Raises:
        IngestError: the table's location cannot be listed.
    """
    now = now or datetime.now(UTC)
    filesystem, root, prefix = _filesystem(table)
    refs = {_normal(path) for path in referenced_files(table)}
    try:
        infos = filesystem.get_file_info(fs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError as exc:
        raise IngestError(f"cannot list {table.location()}: {exc}") from exc
    orphans, young = [], []
    for info in infos:
        if info.type != fs.FileType.File:
            continue
        uri = prefix + info.path
        if _normal(uri) in refs:
            continue
        modified = info.mtime if info.mtime is not None else now
        if modified.tzinfo is None:
            modified = modified.replace(tzinfo=UTC)
        stray = StrayFile(uri, info.size or 0, modified)
        (orphans if now - modified >= older_than else young).append(stray)
    return Checkup(tuple(sorted(orphans, key=lambda f: f.path)), tuple(sorted(young, key=lambda f: f.path)), len(refs))


def remove_files(table: Table, files: tuple[StrayFile, ...]) -> int:
    """Delete the given stray files through the table's FileIO; returns how many were deleted."""
    for stray in files:
        table.io.delete(stray.path)
    return len(files)


def _filesystem(table: Table) -> tuple[fs.FileSystem, str, str]:
    """The table's filesystem as its FileIO configures it (endpoint, keys), the path to list, and
    the prefix that turns listed paths back into URIs."""
    location = table.location()
    io = table.io if isinstance(table.io, PyArrowFileIO) else PyArrowFileIO(table.io.properties)
    scheme, netloc, path = PyArrowFileIO.parse_location(location, io.properties)
    filesystem = io.fs_by_scheme(scheme, netloc)
    return filesystem, path, "file://" if scheme == "file" else f"{scheme}://"


def _normal(uri: str) -> str:
    """``file:///a`` and ``/a`` name the same file."""
    return uri.removeprefix("file://") if uri.startswith("file://") else uri
