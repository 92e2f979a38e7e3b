"""Row filters bound to the pinned snapshot's schema, at every step of a read.

A filter names columns as the pinned snapshot knows them. PyIceberg's ``table.scan(snapshot_id=...,
row_filter=...)`` binds a filter to the table's *current* schema and prunes manifests and
files with it: after a rename, or two columns swapping names, it prunes on another column's
statistics and returns the wrong rows without a word (apache/iceberg#16510 is the same bug in
Spark). So icetrain binds the filter to the snapshot's schema once, and hands the scan
planner the same predicate renamed, by field id, to the names the current schema gives
those fields.

NaN follows Iceberg's reference ordering (Java's evaluator, Spark): NaN sorts above every
number, so ``x > 0.5`` and ``x >= 0.5`` keep rows whose ``x`` is NaN, and ``x < 0.5``,
``x <= 0.5`` and ``x = 0.5`` do not. PyArrow alone would drop NaN from the first two; the
bound filter says ``x > 0.5 or is_nan(x)`` instead, which every step (manifest, file and row
group pruning, and the rows themselves) evaluates the same way.
"""

from __future__ import annotations

from pyiceberg.expressions import (
    AlwaysFalse,
    AlwaysTrue,
    And,
    BooleanExpression,
    BoundGreaterThan,
    BoundGreaterThanOrEqual,
    BoundIsNaN,
    BoundLiteralPredicate,
    BoundPredicate,
    BoundSetPredicate,
    BoundUnaryPredicate,
    Not,
    Or,
    Reference,
)
from pyiceberg.expressions.visitors import bind, rewrite_not
from pyiceberg.schema import Schema
from pyiceberg.types import DoubleType, FloatType


def bind_to_snapshot(schema: Schema, row_filter: BooleanExpression) -> BooleanExpression:
    """``row_filter`` bound to the snapshot's ``schema``, NOTs pushed down, NaN ordered above numbers.

    Raises:
        ValueError: a column the schema lacks, or a literal of the wrong type (PyIceberg's own).
    """
    if row_filter == AlwaysTrue():
        return AlwaysTrue()
    return _nan_above_numbers(bind(schema, rewrite_not(row_filter), case_sensitive=True))


def for_planning(bound_filter: BooleanExpression, current: Schema) -> BooleanExpression:
    """The bound filter as an unbound one over ``current``'s names, matched by field id.

    A predicate on a field the current schema no longer has becomes ``AlwaysTrue``: planning
    then keeps more files, never fewer, because NOTs were pushed down first; the rows are
    still filtered exactly against the snapshot's schema.
    """
    if isinstance(bound_filter, And):
        return And(for_planning(bound_filter.left, current), for_planning(bound_filter.right, current))
    if isinstance(bound_filter, Or):
        return Or(for_planning(bound_filter.left, current), for_planning(bound_filter.right, current))
    if isinstance(bound_filter, (AlwaysTrue, AlwaysFalse)):
        return bound_filter
    if isinstance(bound_filter, Not):  # bind_to_snapshot pushed every NOT down; an unexpected one prunes nothing
        return AlwaysTrue()
    if not isinstance(bound_filter, BoundPredicate):
        raise TypeError(f"not a bound filter: {bound_filter!r}")
    field_id = bound_filter.term.ref().field.field_id
    if field_id not in current.field_ids:
        return AlwaysTrue()
    term = Reference(current.find_column_name(field_id))
    if isinstance(bound_filter, BoundUnaryPredicate):
        return bound_filter.as_unbound(term)
    if isinstance(bound_filter, BoundSetPredicate):
        return bound_filter.as_unbound(term, bound_filter.literals)
    if isinstance(bound_filter, BoundLiteralPredicate):
        return bound_filter.as_unbound(term, bound_filter.literal)
    raise TypeError(f"unknown predicate: {bound_filter!r}")


def _nan_above_numbers(bound: BooleanExpression) -> BooleanExpression:
    if isinstance(bound, And):
        return And(_nan_above_numbers(bound.left), _nan_above_numbers(bound.right))
    if isinstance(bound, Or):
        return Or(_nan_above_numbers(bound.left), _nan_above_numbers(bound.right))
    if isinstance(bound, (BoundGreaterThan, BoundGreaterThanOrEqual)) and isinstance(
        bound.term.ref().field.field_type, (FloatType, DoubleType)
    ):
        return Or(bound, BoundIsNaN(bound.term))
    return bound
