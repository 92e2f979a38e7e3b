"""Naming snapshots: tags, so a dataset version can be asked for by name and outlives expiry."""

from __future__ import annotations

from pyiceberg.exceptions import CommitFailedException
from pyiceberg.table import Table

from pipeline.errors import IngestError, SnapshotNotFoundError
from pipeline.names import check_ref_name


def create_tag(table: Table, name: str, snapshot_id: int | None = None) -> int:
    """Tag a snapshot (the current one by default) and return its id.

    Raises:
        SnapshotNotFoundError: the snapshot does not exist, or the table has none.
        IngestError: the name is already a ref, or the commit conflicted; nothing was written.
    """
    check_ref_name(name)
    target = snapshot_id if snapshot_id is not None else getattr(table.current_snapshot(), "snapshot_id", None)
    if target is None or table.snapshot_by_id(target) is None:
        raise SnapshotNotFoundError(f"cannot tag {'.'.join(table.name())}: snapshot {target} does not exist")
    if name in table.metadata.refs:
        raise IngestError(f"cannot tag {'.'.join(table.name())}: a ref named {name!r} already exists")
    try:
        table.manage_snapshots().create_tag(snapshot_id=target, tag_name=name).commit()
    except CommitFailedException as exc:
        raise IngestError(
            f"tagging {'.'.join(table.name())} conflicted with a concurrent commit; retry: {exc}"
        ) from exc
    return target
