"""Keeping a daily-appended table cheap to plan: merged manifests, compacted small files, expiry.

Every append adds a data file and (by default) a manifest, so planning a read of the current
snapshot grows with the table's history. ``maintain``:

1. turns on PyIceberg's manifest merging for later appends (``commit.manifest-merge.enabled``),
2. rewrites the current snapshot's small data files (without delete files) into files of about
   ``target_file_bytes``, in one ``overwrite`` commit whose manifests are merged too,
3. optionally expires snapshots older than a window, never a tagged one, a branch head or the
   current snapshot (``pipeline.lake.expiry.expire``): models keep their data.

Rows are unchanged; the rewrite gives them new files and positions, which is why splits key
on identifier fields. Older snapshots still read their own files until they are expired.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from pyiceberg.expressions import AlwaysTrue
from pyiceberg.io.pyarrow import ArrowScan, _dataframe_to_data_files
from pyiceberg.table import FileScanTask, Table

from pipeline.lake.expiry import Expiry, expire

MERGE_PROPERTIES = {"commit.manifest-merge.enabled": "true", "commit.manifest.min-count-to-merge": "16"}
TARGET_FILE_BYTES = 128 * 1024 * 1024
MAINTAINED_BY = "icetrain.maintain"


@dataclass(frozen=True)
class Maintenance:
    """What ``maintain`` did: data files and manifests of the current snapshot before and after."""

    files_before: int
    files_after: int
    manifests_before: int
    manifests_after: int
    rewritten_files: int
    snapshot_id: int | None
    expiry: Expiry | None


def maintain(
    table: Table, *, target_file_bytes: int = TARGET_FILE_BYTES, expire_older_than: timedelta | None = None
) -> Maintenance:
    """Merge manifests, compact small files and (optionally) expire old untagged snapshots."""
    current = table.current_snapshot()
    manifests_before = len(current.manifests(table.io)) if current else 0
    tasks = list(table.scan().plan_files()) if current else []
    missing = {key: value for key, value in MERGE_PROPERTIES.items() if table.properties.get(key) != value}
    if missing:
        with table.transaction() as tx:
            tx.set_properties(missing)
        table = table.refresh()
    bins = _bins(tasks, target_file_bytes)
    if bins:
        with table.transaction() as tx:
            overwrite = tx.update_snapshot(snapshot_properties={MAINTAINED_BY: "compact"}).overwrite()
            for group in bins:
                rows = ArrowScan(tx.table_metadata, table.io, tx.table_metadata.schema(), AlwaysTrue()).to_table(group)
                for data_file in _dataframe_to_data_files(tx.table_metadata, rows, table.io):
                    overwrite.append_data_file(data_file)
                for task in group:
                    overwrite.delete_data_file(task.file)
            overwrite.commit()
        table = table.refresh()
    expiry = expire(table, expire_older_than) if expire_older_than is not None else None
    table = table.refresh()
    now = table.current_snapshot()
    return Maintenance(
        files_before=len(tasks),
        files_after=len(list(table.scan().plan_files())) if now else 0,
        manifests_before=manifests_before,
        manifests_after=len(now.manifests(table.io)) if now else 0,
        rewritten_files=sum(len(group) for group in bins),
        snapshot_id=now.snapshot_id if now else None,
        expiry=expiry,
    )


def _bins(tasks: list[FileScanTask], target: int) -> list[list[FileScanTask]]:
    """Small files (under half the target, no delete files) packed greedily into groups of about ``target`` bytes; lone files stay."""
    small = sorted(
        (t for t in tasks if not t.delete_files and t.file.file_size_in_bytes < target // 2),
        key=lambda t: t.file.file_path,
    )
    bins: list[list[FileScanTask]] = []
    size = 0
    for task in small:
        if not bins or size + task.file.file_size_in_bytes > target:
            bins.append([])
            size = 0
        bins[-1].append(task)
        size += task.file.file_size_in_bytes
    return [group for group in bins if len(group) > 1]
