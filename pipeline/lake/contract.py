"""What new data must satisfy before it is appended to an existing table.

Bad rows found at ingest cost one line; found at training time they cost a failed run on a
snapshot that can never be un-committed. So an append to an existing table is checked
against what the table promises its readers: every column present, values in required
columns and in the label column, finite floats, and labels within ``icetrain.label.classes``
when the table declares them (a table without declared classes may hold a regression target). The first problem is
reported with the column and how many rows break it; ``check=False`` (``--no-check``) skips it.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.table import Table

from pipeline.data.tensors import declared_classes
from pipeline.errors import IngestError

LABEL_COLUMN_KEY = "icetrain.label.column"
DEFAULT_LABEL = "label"


def check_contract(table: Table, data: pa.Table, identifier: str) -> None:
    """Refuse data that breaks the table's contract, naming the column and the count.

    Raises:
        IngestError: a missing column, nulls in a required column, NaN or infinite floats,
            or labels outside the declared classes.
    """
    problem = _missing(table, data) or _nulls(table, data) or _not_finite(data) or _bad_labels(table, data)
    if problem:
        raise IngestError(
            f"cannot append to {identifier!r}: {problem}; nothing was written (--no-check appends anyway)"
        )


def _missing(table: Table, data: pa.Table) -> str:
    absent = [field.name for field in table.schema().fields if field.name not in data.column_names]
    if not absent:
        return ""
    also = (
        f" (and {len(absent) - 1} more: {', '.join(repr(a) for a in absent[1:4])}{', ...' if len(absent) > 4 else ''})"
        if len(absent) > 1
        else ""
    )
    return f"column {absent[0]!r} is missing from the data{also}"


def _nulls(table: Table, data: pa.Table) -> str:
    for field in table.schema().fields:
        if field.required and field.name in data.column_names and data.column(field.name).null_count:
            return f"column {field.name!r} is required and has {data.column(field.name).null_count} null values"
    return ""


def _not_finite(data: pa.Table) -> str:
    for name in data.column_names:
        column = data.column(name)
        if not pa.types.is_floating(column.type):
            continue
        nans = pc.sum(pc.is_nan(column)).as_py() or 0
        infinite = pc.sum(pc.is_inf(column)).as_py() or 0
        if nans or infinite:
            return f"column {name!r} has {nans} NaN and {infinite} infinite values"
    return ""


def _bad_labels(table: Table, data: pa.Table) -> str:
    label = table.properties.get(LABEL_COLUMN_KEY, DEFAULT_LABEL)
    if label not in data.column_names:
        return ""
    column = data.column(label)
    if column.null_count:
        return (
            f"label column {label!r} has {column.null_count} null values (a row without a label cannot be trained on)"
        )
    classes = declared_classes(table.properties)
    if classes is not None:
        values = pc.cast(column, pa.string()) if not pa.types.is_string(column.type) else column
        outside = pc.sum(pc.invert(pc.fill_null(pc.is_in(values, value_set=pa.array(classes)), True))).as_py() or 0
        return (
            f"label column {label!r} has {outside} values outside the declared classes ({', '.join(classes)})"
            if outside
            else ""
        )
    return ""  # without declared classes the label may be a regression target: any value goes
