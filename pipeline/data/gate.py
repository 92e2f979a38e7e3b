"""Is this data trainable? One set of rules, for Dagster's blocking check and for ``icetrain train``.

The rules judge a ``RowProfile`` (row counts and what is known of the label) of the rows a
run would read. Errors stop training before anything is recorded; warnings (a declared class
with no rows) are reported and let training go on, since a filter may leave classes out on
purpose.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipeline import errors
from pipeline.data.reading import PreparedRead, count_rows, declared_label_classes, integer_run
from pipeline.data.rows import RowProfile
from pipeline.data.specs import LoaderConfig
from pipeline.errors import EmptyDataError, IcetrainError, LabelError

_ERROR_TYPES = {
    name: kind for name, kind in vars(errors).items() if isinstance(kind, type) and issubclass(kind, IcetrainError)
}


@dataclass(frozen=True)
class Problem:
    """One reason not to train, with the error type the CLI and API raise for it."""

    kind: type[IcetrainError]
    message: str

    def error(self) -> IcetrainError:
        return self.kind(self.message)


@dataclass(frozen=True)
class DataReport:
    """What the gate saw in the selected rows of a pinned snapshot, and its verdict."""

    table: str
    snapshot_id: int
    row_count: int
    null_labels: int
    nan_labels: int
    class_counts: dict[str, int] | None
    declared_classes: tuple[str, ...] | None
    errors: tuple[Problem, ...] = ()
    warnings: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return not self.errors

    def describe(self) -> str:
        """The errors, else the warnings, else 'trainable', as one line."""
        return "; ".join(p.message for p in self.errors) or "; ".join(self.warnings) or "trainable"

    def raise_if_failed(self) -> None:
        """Raise the first error, if any (its own type: EmptyDataError, LabelError, ...)."""
        if self.errors:
            raise self.errors[0].error()

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready values (the snapshot id as text, each problem's error type by name)."""
        return {
            **asdict(self),
            "snapshot_id": str(self.snapshot_id),
            "errors": [{"kind": p.kind.__name__, "message": p.message} for p in self.errors],
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DataReport:
        declared = values["declared_classes"]
        return cls(
            **{
                **values,
                "snapshot_id": int(values["snapshot_id"]),
                "declared_classes": tuple(declared) if declared is not None else None,
                "errors": tuple(Problem(_ERROR_TYPES[p["kind"]], p["message"]) for p in values["errors"]),
                "warnings": tuple(values["warnings"]),
            }
        )


def inspect_data(
    read: PreparedRead, *, min_rows: int = 1, count_classes: bool = False
) -> tuple[DataReport, RowProfile]:
    """Profile every selected row (all splits) of the pinned snapshot and judge it.

    Reads nothing when the table's metadata answers the rules (an integer label, no filter
    or SQL) unless ``count_classes``; otherwise one pass over the label and filter columns.

    Raises:
        FilterError, LabelError, ColumnError, TransformError: the read does not fit the snapshot.
    """
    profile = count_rows(read.source(LoaderConfig()), read, count_classes=count_classes)
    return judge(profile, read, min_rows=min_rows), profile


def judge(
    profile: RowProfile, read: PreparedRead, *, min_rows: int = 1, split: str = "all", training: bool = True
) -> DataReport:
    """Apply the rules to a profile of the rows ``read`` selects (of ``split``).

    ``training=False`` (a plain loader) leaves out what only a classifier needs: two classes.
    """
    pinned, spec, label = read.plan.pinned, read.spec, read.layout.label
    declared = declared_label_classes(read) if spec.task == "classification" else None
    errors: list[Problem] = []
    warnings: list[str] = []
    rows = profile.total_rows
    if rows == 0:
        asked = f" matching filter {spec.row_filter!r}" if spec.row_filter else ""
        via = " after the SQL transform" if spec.sql else ""
        in_split = f" in the {split!r} split" if split != "all" else ""
        errors.append(
            Problem(
                EmptyDataError, f"snapshot {pinned.snapshot_id} of {pinned.table!r} has no rows{asked}{via}{in_split}"
            )
        )
    elif rows < min_rows:
        errors.append(
            Problem(
                EmptyDataError,
                f"snapshot {pinned.snapshot_id} of {pinned.table!r} has {rows} selected rows, fewer than data.min_rows={min_rows}",
            )
        )
    if profile.null_labels:
        errors.append(
            Problem(
                LabelError,
                f"label column {label!r} has {profile.null_labels} null values in snapshot {pinned.snapshot_id} of {pinned.table!r}",
            )
        )
    if profile.nan_labels:
        errors.append(
            Problem(
                LabelError,
                f"label column {label!r} has {profile.nan_labels} NaN values in snapshot {pinned.snapshot_id} of {pinned.table!r}",
            )
        )
    if spec.task == "classification" and rows:
        errors.extend(_class_problems(profile, declared, warnings, training))
    counts = None if profile.class_counts is None else {str(k): v for k, v in profile.class_counts.items()}
    return DataReport(
        table=pinned.table,
        snapshot_id=pinned.snapshot_id,
        row_count=rows,
        null_labels=profile.null_labels,
        nan_labels=profile.nan_labels,
        class_counts=counts,
        declared_classes=declared,
        errors=tuple(errors),
        warnings=tuple(warnings),
    )


def _class_problems(
    profile: RowProfile, declared: tuple[str, ...] | None, warnings: list[str], training: bool
) -> list[Problem]:
    found: list[Problem] = []
    if profile.class_counts is not None:
        present = [str(value) for value in profile.class_counts]
        if declared is not None:
            unknown = [value for value in present if not _is_declared(value, declared)]
            if unknown:
                found.append(
                    Problem(
                        LabelError, f"label value {unknown[0]} is not one of the declared classes {', '.join(declared)}"
                    )
                )
            missing = [c for c in declared if not any(_same_class(c, value) for value in present)]
            if missing:
                warnings.append(f"classes missing: {', '.join(missing)}")
        distinct = len(declared) if declared is not None else len(present)
    else:
        low, high = profile.label_range or (0, 0)
        if declared is not None:
            numbers = integer_run(declared)
            if numbers is None or low < min(numbers) or high > max(numbers):
                found.append(
                    Problem(
                        LabelError,
                        f"label values range over {low}..{high}, outside the declared classes {', '.join(declared)}",
                    )
                )
        distinct = len(declared) if declared is not None else high + 1
    if training and distinct < 2:
        found.append(
            Problem(LabelError, f"only {distinct} distinct label value(s); a classifier needs at least 2 classes")
        )
    return found


def _is_declared(value: str, declared: tuple[str, ...]) -> bool:
    return any(_same_class(c, value) for c in declared)


def _same_class(declared: str, value: str) -> bool:
    """Declared classes are text; a label of 3 (or 3.0) is the declared class '3'."""
    if declared == value:
        return True
    try:
        return float(declared) == float(value)
    except ValueError:
        return False


__all__ = ["DataReport", "Problem", "inspect_data", "judge"]
