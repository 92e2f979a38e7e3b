"""What changed between two snapshots of a table: rows, files, and the schema by field id.

Rows come from the snapshots' data files: when the newer snapshot only added files (appends),
the added files' record counts say it exactly. When files were removed or rewritten (a
delete, an overwrite, compaction), the rows are compared by the table's identifier fields,
read from both snapshots; without identifier fields only the net change is known.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from pyiceberg.expressions import AlwaysTrue
from pyiceberg.schema import Schema, index_by_id
from pyiceberg.table import Table

from pipeline.data.scan import plan_scan, read_row_group
from pipeline.data.snapshots import PinnedSnapshot, schema_at, total_rows
from pipeline.data.split import identifier_keys
from pipeline.errors import SnapshotNotFoundError


@dataclass(frozen=True)
class SnapshotDiff:
    """Rows added and deleted, data files added and removed, and schema changes from one snapshot to another."""

    table: str
    from_id: int
    to_id: int
    rows_added: int
    rows_deleted: int
    files_added: int
    files_removed: int
    rows_from: int
    rows_to: int
    method: str
    schema_changes: tuple[str, ...] = field(default=())

    def describe(self) -> list[str]:
        return [
            f"{self.table}: snapshot {self.from_id} ({self.rows_from} rows) -> {self.to_id} ({self.rows_to} rows)",
            f"  rows: +{self.rows_added} added, -{self.rows_deleted} deleted ({self.method})",
            f"  data files: +{self.files_added} added, -{self.files_removed} removed",
            "  schema: " + ("; ".join(self.schema_changes) or "unchanged"),
        ]


def resolve_point(table: Table, text: str, table_name: str) -> int:
    """A snapshot id given as a number, or the snapshot a tag or branch points at.

    Raises:
        SnapshotNotFoundError: neither names a snapshot of the table.
    """
    if text in table.metadata.refs:
        return table.metadata.refs[text].snapshot_id
    try:
        snapshot_id = int(text)
    except ValueError:
        snapshot_id = None
    if snapshot_id is None or table.snapshot_by_id(snapshot_id) is None:
        refs = ", ".join(sorted(table.metadata.refs)) or "none"
        raise SnapshotNotFoundError(f"{text!r} is neither a snapshot id nor a ref of {table_name!r}; refs: {refs}")
    return snapshot_id


def diff_snapshots(table: Table, table_name: str, from_id: int, to_id: int) -> SnapshotDiff:
    """Compare two snapshots of ``table`` (either may be the older one)."""
    before, after = _files(table, from_id), _files(table, to_id)
    added, removed = set(after) - set(before), set(before) - set(after)
    rows_from, rows_to = _rows_at(table, from_id), _rows_at(table, to_id)
    schema_from, schema_to = schema_at(table, from_id), schema_at(table, to_id)
    if not removed:
        rows_added, rows_deleted, method = sum(after[p] for p in added), 0, "added files' record counts"
    elif schema_to.identifier_field_ids and set(schema_to.identifier_field_ids) <= set(
        schema_from.identifier_field_ids
    ):
        keys_from = _identifier_keys(table, table_name, from_id, schema_to)
        keys_to = _identifier_keys(table, table_name, to_id, schema_to)
        rows_added, rows_deleted = (
            len(np.setdiff1d(keys_to, keys_from)),
            len(np.setdiff1d(keys_from, keys_to)),
        )
        names = ", ".join(schema_to.find_column_name(i) for i in schema_to.identifier_field_ids)
        method = f"read by identifier field(s) {names}"
    else:
        net = rows_to - rows_from
        rows_added, rows_deleted = max(net, 0), max(-net, 0)
        method = "net change only: files were rewritten and the table has no identifier fields"
    return SnapshotDiff(
        table_name,
        from_id,
        to_id,
        rows_added,
        rows_deleted,
        len(added),
        len(removed),
        rows_from,
        rows_to,
        method,
        schema_changes(schema_from, schema_to),
    )


def schema_changes(before: Schema, after: Schema) -> tuple[str, ...]:
    """Columns added, dropped, renamed and retyped between two schemas, matched by field id."""
    old, new = index_by_id(before), index_by_id(after)
    changes = []
    for field_id in sorted(set(old) | set(new)):
        if field_id not in new:
            changes.append(f"dropped {before.find_column_name(field_id)} (field {field_id})")
        elif field_id not in old:
            changes.append(f"added {after.find_column_name(field_id)} {new[field_id].field_type} (field {field_id})")
        else:
            old_name, new_name = before.find_column_name(field_id), after.find_column_name(field_id)
            if old_name != new_name:
                changes.append(f"renamed {old_name} -> {new_name} (field {field_id})")
            if old[field_id].field_type != new[field_id].field_type and old[field_id].field_type.is_primitive:
                changes.append(
                    f"{new_name} {old[field_id].field_type} -> {new[field_id].field_type} (field {field_id})"
                )
    return tuple(changes)


def _files(table: Table, snapshot_id: int) -> dict[str, int]:
    return {task.file.file_path: task.file.record_count for task in table.scan(snapshot_id=snapshot_id).plan_files()}


def _rows_at(table: Table, snapshot_id: int) -> int:
    snapshot = table.snapshot_by_id(snapshot_id)
    return total_rows(snapshot) if snapshot is not None else 0


def _identifier_keys(table: Table, table_name: str, snapshot_id: int, schema: Schema) -> np.ndarray:
    """Sorted unique identity hashes of a snapshot's rows, reading only the identifier columns (deletes applied)."""
    snapshot = table.snapshot_by_id(snapshot_id)
    if snapshot is None:
        raise SnapshotNotFoundError(f"snapshot {snapshot_id} not found in {table_name!r}")
    names = tuple(schema.find_column_name(i) for i in schema.identifier_field_ids)
    pinned = PinnedSnapshot("", table_name, snapshot_id, "id", str(snapshot_id), snapshot.timestamp_ms)
    plan = plan_scan(table, pinned, schema_at(table, snapshot_id), AlwaysTrue(), names)
    keys = [identifier_keys(read_row_group(plan, group)[0], names) for group in plan.row_groups]
    return np.unique(np.concatenate(keys)) if keys else np.empty(0, np.uint64)


__all__ = ["SnapshotDiff", "diff_snapshots", "resolve_point", "schema_changes"]
