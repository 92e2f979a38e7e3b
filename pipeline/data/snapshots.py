"""Resolving a snapshot request to one snapshot id, and listing a table's history.

Resolution happens once, at the top of a pipeline; everything downstream receives the
``PinnedSnapshot`` and never asks the catalog for "latest" again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.table.refs import SnapshotRefType
from pyiceberg.table.snapshots import Snapshot

from pipeline.data.specs import SnapshotRequest
from pipeline.errors import EmptyDataError, SnapshotNotFoundError


@dataclass(frozen=True)
class PinnedSnapshot:
    """One resolved snapshot of one table, and how it was asked for.

    Attributes:
        catalog: the catalog name the table was loaded from.
        table: the table identifier, 'namespace.table'.
        snapshot_id: the resolved snapshot id (exceeds 2^53: keep it a string in JSON).
        asked_by: 'id', 'tag', 'branch', 'as_of' or 'latest'.
        asked_value: what was given (the id, ref name or ISO time); empty for 'latest'.
        committed_at_ms: when the snapshot was committed, epoch milliseconds.
    """

    catalog: str
    table: str
    snapshot_id: int
    asked_by: str
    asked_value: str
    committed_at_ms: int

    @property
    def committed_at(self) -> datetime:
        """The commit time as an aware UTC datetime."""
        return datetime.fromtimestamp(self.committed_at_ms / 1000, tz=UTC)

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready values, the snapshot id as text (ids exceed 2^53, JSON's exact integers)."""
        return {**asdict(self), "snapshot_id": str(self.snapshot_id)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PinnedSnapshot:
        return cls(**{**values, "snapshot_id": int(values["snapshot_id"])})


@dataclass(frozen=True)
class SnapshotInfo:
    """A row of a table's snapshot history."""

    snapshot_id: int
    committed_at_ms: int
    operation: str
    added_rows: int
    total_rows: int
    refs: tuple[str, ...]
    source: str

    @property
    def committed_at(self) -> datetime:
        return datetime.fromtimestamp(self.committed_at_ms / 1000, tz=UTC)


def resolve_snapshot(table: Table, request: SnapshotRequest, catalog_name: str) -> PinnedSnapshot:
    """Resolve a request (id, tag/branch, as-of time or latest) to exactly one snapshot.

    Raises:
        EmptyDataError: the table has no snapshots at all.
        SnapshotNotFoundError: the id, ref or time names no snapshot; the message lists what exists.
    """
    if not table.snapshots():
        raise EmptyDataError(f"table {request.table!r} has no snapshots yet; append data to it first")
    kind = request.kind
    if kind == "id":
        snapshot = table.snapshot_by_id(request.snapshot_id)  # type: ignore[arg-type]
        if snapshot is None:
            raise SnapshotNotFoundError(
                f"snapshot {request.snapshot_id} not found in table {request.table!r}; available: {_describe_recent(table)}"
            )
        return _pin(snapshot, request, catalog_name, "id", str(request.snapshot_id))
    if kind == "ref":
        ref = table.metadata.refs.get(request.ref)  # type: ignore[arg-type]
        if ref is None:
            refs = ", ".join(sorted(table.metadata.refs)) or "none"
            raise SnapshotNotFoundError(f"no tag or branch {request.ref!r} in table {request.table!r}; refs: {refs}")
        snapshot = table.snapshot_by_id(ref.snapshot_id)
        asked_by = "tag" if ref.snapshot_ref_type == SnapshotRefType.TAG else "branch"
        return _pin(snapshot, request, catalog_name, asked_by, request.ref)  # type: ignore[arg-type]
    if kind == "as_of":
        as_of_ms = int(request.as_of.timestamp() * 1000)  # type: ignore[union-attr]
        snapshot = table.snapshot_as_of_timestamp(as_of_ms)
        if snapshot is None:
            first = min(table.snapshots(), key=lambda s: s.timestamp_ms)
            raise SnapshotNotFoundError(
                f"table {request.table!r} has no snapshot at or before {request.as_of.isoformat()}; "  # type: ignore[union-attr]
                f"its first snapshot {first.snapshot_id} was committed at {_iso(first.timestamp_ms)}"
            )
        return _pin(snapshot, request, catalog_name, "as_of", request.as_of.isoformat())  # type: ignore[union-attr]
    current = table.current_snapshot()
    if current is None:
        raise EmptyDataError(f"table {request.table!r} has no current snapshot on its main branch")
    return _pin(current, request, catalog_name, "latest", "")


def list_snapshots(table: Table) -> list[SnapshotInfo]:
    """The table's snapshots, oldest first, with row counts, refs and who produced each."""
    refs_by_snapshot: dict[int, list[str]] = {}
    for name, ref in table.metadata.refs.items():
        refs_by_snapshot.setdefault(ref.snapshot_id, []).append(name)
    rows = []
    for snapshot in sorted(table.snapshots(), key=lambda s: (s.timestamp_ms, s.sequence_number or 0)):
        summary = snapshot.summary
        props = summary.additional_properties if summary else {}
        rows.append(
            SnapshotInfo(
                snapshot_id=snapshot.snapshot_id,
                committed_at_ms=snapshot.timestamp_ms,
                operation=summary.operation.value if summary else "unknown",
                added_rows=int(props.get("added-records", 0)),
                total_rows=total_rows(snapshot),
                refs=tuple(sorted(refs_by_snapshot.get(snapshot.snapshot_id, []))),
                source=props.get("icetrain.source", ""),
            )
        )
    return rows


def schema_at(table: Table, snapshot_id: int) -> Schema:
    """The schema a snapshot was written with (columns may have changed since)."""
    snapshot = table.snapshot_by_id(snapshot_id)
    schema_id = snapshot.schema_id if snapshot is not None else None
    return table.schemas().get(schema_id, table.schema()) if schema_id is not None else table.schema()


def total_rows(snapshot: Snapshot) -> int:
    """Rows in the table at ``snapshot``, from its summary (0 when the summary does not say)."""
    props = snapshot.summary.additional_properties if snapshot.summary else {}
    return int(props.get("total-records", 0))


def ancestors(table: Table, snapshot_id: int) -> list[Snapshot]:
    """The snapshot and its parents, newest first (stops where history was expired)."""
    found: list[Snapshot] = []
    current = table.snapshot_by_id(snapshot_id)
    while current is not None:
        found.append(current)
        current = table.snapshot_by_id(current.parent_snapshot_id) if current.parent_snapshot_id is not None else None
    return found


def _pin(
    snapshot: Snapshot, request: SnapshotRequest, catalog_name: str, asked_by: str, asked_value: str
) -> PinnedSnapshot:
    return PinnedSnapshot(
        catalog=catalog_name,
        table=request.table,
        snapshot_id=snapshot.snapshot_id,
        asked_by=asked_by,
        asked_value=asked_value,
        committed_at_ms=snapshot.timestamp_ms,
    )


def _describe_recent(table: Table, limit: int = 5) -> str:
    recent = list_snapshots(table)[-limit:]
    described = ", ".join(f"{s.snapshot_id} ({_iso(s.committed_at_ms)}, {s.total_rows} rows)" for s in recent)
    more = len(table.snapshots()) - len(recent)
    return described + (f" and {more} older" if more > 0 else "")


def _iso(timestamp_ms: int) -> str:
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC).isoformat(timespec="milliseconds")
