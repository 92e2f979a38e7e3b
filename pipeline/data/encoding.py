"""The encoding of categorical columns: one recorded value, applied the same way wherever a model runs.

A categorical column (text, or a boolean or integer column named in ``data.categorical``)
becomes int64 indices through its ``Vocabulary``: index 0 is *missing* (null), 1 is
*unknown* (a category the vocabulary does not hold: rare ones left out, and every one first
seen after the vocabulary was learned), and 2.. are the kept categories in sorted order.
Values are compared as text (``true``/``false`` for booleans, decimal digits for integers).

The ``Encoding`` (every column's vocabulary, in the tensor's column order) is learned once
from the training split of the pinned snapshot (``pipeline.data.vocabulary``), carried by the
prepared run, recorded with the MLflow run (an artifact plus its size and digest as params)
and replayed from there, never learned again for the same run.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MISSING = 0
UNKNOWN = 1
FIRST = 2
DEFAULT_LIMIT = 1000
ARTIFACT_PATH = "encoding/encoding.json"


def as_text(column: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """A categorical column's values as text (dictionaries decoded), the form vocabularies hold."""
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode() if isinstance(column, pa.Array) else column.cast(column.type.value_type)
    if pa.types.is_large_string(column.type):
        return column
    return pc.cast(column, pa.large_string())


def count_categories(column: pa.Array | pa.ChunkedArray) -> Counter[str]:
    """How often each category occurs (nulls left out), counting a dictionary column by its indices."""
    counts: Counter[str] = Counter()
    for chunk in column.chunks if isinstance(column, pa.ChunkedArray) else [column]:
        if pa.types.is_dictionary(chunk.type):
            indices = chunk.indices.drop_null().to_numpy(zero_copy_only=False)
            if len(indices):
                per_value = np.bincount(indices, minlength=len(chunk.dictionary))
                for value, count in zip(as_text(chunk.dictionary).to_pylist(), per_value.tolist(), strict=True):
                    if count:
                        counts[value] += count
            continue
        values = as_text(chunk).drop_null()
        if len(values):
            for entry in pc.value_counts(values).to_pylist():
                counts[entry["values"]] += int(entry["counts"])
    return counts


def is_categorical_type(data_type: pa.DataType) -> bool:
    """Whether a column of this type can be categorical: text, booleans or integers."""
    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    return is_text(data_type) or pa.types.is_boolean(data_type) or pa.types.is_integer(data_type)


def is_text(data_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    return pa.types.is_string(data_type) or pa.types.is_large_string(data_type)


@dataclass(frozen=True)
class Vocabulary:
    """One categorical column's kept categories (sorted); everything else is unknown, null is missing."""

    column: str
    categories: tuple[str, ...]

    @property
    def cardinality(self) -> int:
        """How many indices the column takes: the categories plus missing and unknown."""
        return len(self.categories) + FIRST

    @functools.cached_property
    def _lookup(self) -> pc.SetLookupOptions:
        """The categories as Arrow's lookup set, built once per process (it does not pickle)."""
        return pc.SetLookupOptions(pa.array(self.categories, type=pa.large_string()))

    def __getstate__(self) -> dict[str, Any]:
        return {name: value for name, value in self.__dict__.items() if name != "_lookup"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def encode(self, column: pa.Array | pa.ChunkedArray) -> np.ndarray:
        """The column's indices as int64, in bulk (no per-row Python); a dictionary column's distinct values are looked up once."""
        if pa.types.is_dictionary(column.type):
            chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
            return (
                np.concatenate([self._encode_dictionary(chunk) for chunk in chunks])
                if chunks
                else np.empty(0, np.int64)
            )
        values = as_text(column)
        found = pc.index_in(values, options=self._lookup)
        index = found.fill_null(UNKNOWN - FIRST).to_numpy(zero_copy_only=False).astype(np.int64) + FIRST
        if values.null_count:
            index[values.is_null().to_numpy(zero_copy_only=False)] = MISSING
        return index

    def _encode_dictionary(self, chunk: pa.DictionaryArray) -> np.ndarray:
        if not len(chunk.dictionary):
            return np.full(len(chunk), MISSING, dtype=np.int64)
        mapped = self.encode(chunk.dictionary)
        index = mapped[chunk.indices.fill_null(0).to_numpy(zero_copy_only=False)]
        if chunk.null_count:
            index[chunk.is_null().to_numpy(zero_copy_only=False)] = MISSING
        return index


TIME_PARTS = ("year", "month", "day", "dow", "hour", "minute")
_PER_DAY = {"s": 86_400, "ms": 86_400_000, "us": 86_400_000_000, "ns": 86_400_000_000_000}


def is_time(data_type: pa.DataType) -> bool:
    """Dates and timestamps: encoded as days since the training rows' earliest, plus calendar parts."""
    return pa.types.is_date(data_type) or pa.types.is_timestamp(data_type)


def days(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A date or timestamp column as float64 days since 1970-01-01 (nulls as NaN), in bulk."""
    data_type = column.type
    if pa.types.is_date32(data_type):
        raw, per_day = pc.cast(column, pa.int32()), 1
    elif pa.types.is_date64(data_type):
        raw, per_day = pc.cast(column, pa.int64()), _PER_DAY["ms"]
    else:
        raw, per_day = pc.cast(column, pa.int64()), _PER_DAY[data_type.unit]
    values = raw.to_numpy(zero_copy_only=False).astype(np.float64)
    if column.null_count:
        values[column.is_null().to_numpy(zero_copy_only=False)] = np.nan
    return values / per_day


def time_part(column: pa.Array | pa.ChunkedArray, part: str) -> np.ndarray:
    """One calendar part of a date or timestamp column (``dow``: 0 Monday .. 6 Sunday), as float64."""
    function = {
        "year": pc.year,
        "month": pc.month,
        "day": pc.day,
        "dow": pc.day_of_week,
        "hour": pc.hour,
        "minute": pc.minute,
    }
    return function[part](column).to_numpy(zero_copy_only=False).astype(np.float64)


@dataclass(frozen=True)
class Origin:
    """A time column's zero: the training rows' earliest day, so its values stay small and exact in float32."""

    column: str
    day: float


@dataclass(frozen=True)
class Fill:
    """How a numeric column's nulls are filled: the strategy, the value it gave on the training rows, and an indicator feature."""

    column: str
    strategy: str
    value: float
    indicator: bool = False


@dataclass(frozen=True)
class Encoding:
    """Every categorical column's vocabulary (in the categories tensor's column order) and every imputed column's fill."""

    vocabularies: tuple[Vocabulary, ...]
    fills: tuple[Fill, ...] = ()
    origins: tuple[Origin, ...] = ()

    def origin(self, column: str) -> float:
        return next(o.day for o in self.origins if o.column == column)

    @property
    def filled(self) -> tuple[str, ...]:
        return tuple(f.column for f in self.fills)

    def fill(self, column: str) -> Fill | None:
        return next((f for f in self.fills if f.column == column), None)

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(v.column for v in self.vocabularies)

    @property
    def cardinalities(self) -> dict[str, int]:
        """Indices per column (categories + missing + unknown), what embeddings are sized by."""
        return {v.column: v.cardinality for v in self.vocabularies}

    @property
    def size(self) -> int:
        """The number of kept categories over all columns."""
        return sum(len(v.categories) for v in self.vocabularies)

    @property
    def digest(self) -> str:
        """A short hash of the whole encoding (recorded as a param; equal digests encode equally)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def vocabulary(self, column: str) -> Vocabulary:
        return next(v for v in self.vocabularies if v.column == column)

    def changes_since(self, before: Encoding) -> list[str]:
        """How this encoding differs from an earlier one: categories added or dropped, per column."""
        changes = []
        for vocabulary in self.vocabularies:
            if vocabulary.column not in before.columns:
                changes.append(f"{vocabulary.column}: new column ({len(vocabulary.categories)} categories)")
                continue
            old, new = set(before.vocabulary(vocabulary.column).categories), set(vocabulary.categories)
            added, dropped = sorted(new - old), sorted(old - new)
            if added or dropped:
                parts = [
                    f"+{len(added)} ({_few(added)})" if added else "",
                    f"-{len(dropped)} ({_few(dropped)})" if dropped else "",
                ]
                changes.append(f"{vocabulary.column}: " + ", ".join(p for p in parts if p))
        return changes

    def __repr__(self) -> str:  # short, for logs and the decoded cache's key
        parts = [f"{v.column}:{v.cardinality}" for v in self.vocabularies] + [
            f"{f.column}={f.value!r}" for f in self.fills
        ]
        return f"Encoding({', '.join(parts)}; {self.digest})"

    def to_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {
            "columns": [{"column": v.column, "categories": list(v.categories)} for v in self.vocabularies]
        }
        if self.origins:
            values["origins"] = [{"column": o.column, "day": o.day} for o in self.origins]
        if self.fills:
            values["fills"] = [
                {"column": f.column, "strategy": f.strategy, "value": f.value, "indicator": f.indicator}
                for f in self.fills
            ]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Encoding:
        """Raises KeyError, TypeError or ValueError for what is not an encoding."""
        vocabularies = []
        for entry in values["columns"]:
            categories = entry["categories"]
            if not isinstance(entry["column"], str) or not all(isinstance(c, str) for c in categories):
                raise ValueError("columns and categories must be text")
            if list(categories) != sorted(set(categories)):
                raise ValueError(f"categories of {entry['column']!r} are not sorted and distinct")
            vocabularies.append(Vocabulary(entry["column"], tuple(categories)))
        fills = tuple(
            Fill(str(f["column"]), str(f["strategy"]), float(f["value"]), bool(f["indicator"]))
            for f in values.get("fills", [])
        )
        origins = tuple(Origin(str(o["column"]), float(o["day"])) for o in values.get("origins", []))
        return cls(tuple(vocabularies), fills, origins)


def _few(values: list[str], shown: int = 3) -> str:
    return ", ".join(repr(v) for v in values[:shown]) + (
        f", ... {len(values) - shown} more" if len(values) > shown else ""
    )


__all__ = [
    "ARTIFACT_PATH",
    "DEFAULT_LIMIT",
    "FIRST",
    "MISSING",
    "TIME_PARTS",
    "UNKNOWN",
    "Encoding",
    "Fill",
    "Origin",
    "Vocabulary",
    "as_text",
    "count_categories",
    "days",
    "is_categorical_type",
    "is_text",
    "is_time",
    "time_part",
]
