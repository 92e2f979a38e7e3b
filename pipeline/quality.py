"""Label checks on a pinned snapshot, run before any training (Dagster's blocking check)."""

from __future__ import annotations

from dataclasses import dataclass, field

from pyiceberg.table import Table

from pipeline.config import LoaderConfig, ReadSpec
from pipeline.reading import prepare_read
from pipeline.rows import profile_rows
from pipeline.snapshots import PinnedSnapshot
from pipeline.tensors import declared_classes


@dataclass(frozen=True)
class LabelProfile:
    """Row count, null labels and per-class counts of the rows a run would train on."""

    row_count: int
    null_labels: int
    class_counts: dict[str, int] = field(default_factory=dict)
    declared_classes: tuple[str, ...] | None = None

    def problems(self) -> list[str]:
        """Why this data should not be trained on; empty when it is fine."""
        found = []
        if self.row_count == 0:
            found.append("no rows")
        if self.null_labels:
            found.append(f"{self.null_labels} null labels")
        if self.declared_classes is not None:
            missing = [c for c in self.declared_classes if c not in self.class_counts]
            if missing:
                found.append(f"classes missing: {', '.join(missing)}")
        elif self.row_count and len(self.class_counts) < 2:
            found.append(f"only {len(self.class_counts)} distinct label value(s)")
        return found


def profile_labels(table: Table, pinned: PinnedSnapshot, spec: ReadSpec) -> LabelProfile:
    """Count rows, null labels and classes in the rows ``spec`` selects from the snapshot.

    Reads only the label and filter columns (or runs the SQL transform).

    Raises:
        FilterError, LabelError, ColumnError, TransformError: the spec does not fit the snapshot.
    """
    read = prepare_read(table, pinned, spec)
    profile = profile_rows(read.source(LoaderConfig()), read.layout.label)
    return LabelProfile(
        row_count=profile.total_rows,
        null_labels=profile.null_labels,
        class_counts={str(value): count for value, count in profile.class_counts.items()},
        declared_classes=declared_classes(table.properties),
    )


__all__ = ["LabelProfile", "profile_labels"]
