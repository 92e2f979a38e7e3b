"""Learning a read's encoding from the training split of a pinned snapshot: vocabularies, fill values, time origins.

Each row group of the training split (after filter, deletes, split and SQL: exactly the rows
the loader will train on) is read once by a few threads; the categories of every categorical
column are counted with Arrow's ``value_counts``, and every imputed column's count, sum and
range are taken. A median needs a second pass, a histogram of 2^16 bins over that range: the
median is interpolated within its bin (to 1/65536 of the column's range). What is kept is a
function of those counts alone, so the same snapshot and config always give the same encoding.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from pipeline.data.encoding import DEFAULT_LIMIT, Encoding, Fill, Origin, Vocabulary, count_categories, days
from pipeline.data.reading import PreparedRead
from pipeline.data.rows import RowSource, narrowed_schema
from pipeline.data.specs import LoaderConfig
from pipeline.errors import ColumnError

MEDIAN_BINS = 1 << 16


def learn_encoding(
    read: PreparedRead,
    split: LoaderConfig,
    *,
    min_frequency: int = 1,
    max_categories: int | None = None,
    threads: int = 2,
) -> Encoding | None:
    """The encoding of ``read``'s categorical and imputed columns over the rows of ``split`` (None without any).

    A categorical column keeps its categories seen at least ``min_frequency`` times, the
    ``max_categories`` most frequent of them when set (ties by value), in sorted order. An
    imputed column's fill is its non-null values' mean or median, or zero.

    Raises:
        ColumnError: a column has more than 1000 distinct kept values and ``max_categories`` is
            not set, or an imputed column holds no value to learn from.
    """
    layout = read.layout
    if not layout.needs_encoding:
        return None
    source = read.source(split)
    columns, imputed = layout.categorical, [name for name, _ in layout.imputed]
    times = [name for name, _ in layout.times]
    needed = narrowed_schema(read.plan, (*columns, *imputed, *times))  # only these columns are decoded (no SQL)

    def count(unit: int) -> tuple[list[Counter[str]], list[tuple[int, float, float, float]], list[float]]:
        rows = source.rows(unit, needed)
        found = []
        for name in columns:
            found.append(count_categories(rows.column(name)))
        earliest = [
            float(np.nanmin(d)) if np.isfinite(d).any() else np.inf for d in (days(rows.column(n)) for n in times)
        ]
        return found, [_moments(rows.column(name)) for name in imputed], earliest

    totals = [Counter[str]() for _ in columns]
    moments = [(0, 0.0, np.inf, -np.inf) for _ in imputed]
    origins = [np.inf for _ in times]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for found, seen, earliest in pool.map(count, range(len(read.plan.row_groups))):
            origins = [min(a, b) for a, b in zip(origins, earliest, strict=True)]
            for total, counts in zip(totals, found, strict=True):
                total.update(counts)
            moments = [
                (n + m, s + t, min(lo, low), max(hi, high))
                for (n, s, lo, hi), (m, t, low, high) in zip(moments, seen, strict=True)
            ]
    vocabularies = tuple(
        _vocabulary(name, counts, min_frequency, max_categories) for name, counts in zip(columns, totals, strict=True)
    )
    fills = []
    for (name, strategy), (n, total, low, high) in zip(layout.imputed, moments, strict=True):
        if strategy == "zero":
            value = 0.0
        elif n == 0:
            raise ColumnError(
                f"data.impute: column {name!r} has no values in the training rows to take a {strategy} of"
            )
        elif strategy == "mean":
            value = total / n
        else:
            value = _median(source, read, name, n, low, high, threads)
        fills.append(Fill(name, strategy, float(value), layout.indicator))
    return Encoding(
        vocabularies,
        tuple(fills),
        tuple(
            Origin(name, float(np.floor(day)) if np.isfinite(day) else 0.0)
            for name, day in zip(times, origins, strict=True)
        ),
    )


def _vocabulary(name: str, counts: Counter[str], min_frequency: int, max_categories: int | None) -> Vocabulary:
    kept = [(value, n) for value, n in counts.items() if n >= min_frequency]
    if max_categories is None and len(kept) > DEFAULT_LIMIT:
        raise ColumnError(
            f"categorical column {name!r} has {len(kept)} distinct values in the training rows, more than {DEFAULT_LIMIT};"
            " set data.max_categories to keep the most frequent ones, or data.min_frequency to drop rare ones, or leave it out of data.features"
        )
    if max_categories is not None and len(kept) > max_categories:
        kept = sorted(kept, key=lambda item: (-item[1], item[0]))[:max_categories]
    return Vocabulary(name, tuple(sorted(value for value, _ in kept)))


def _finite(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    values = column.drop_null().to_numpy(zero_copy_only=False).astype(np.float64)
    return values[np.isfinite(values)]


def _moments(column: pa.ChunkedArray | pa.Array) -> tuple[int, float, float, float]:
    values = _finite(column)
    if not len(values):
        return 0, 0.0, np.inf, -np.inf
    return len(values), float(values.sum()), float(values.min()), float(values.max())


def _median(
    source: RowSource, read: PreparedRead, name: str, count: int, low: float, high: float, threads: int
) -> float:
    """The median of the column's finite values, interpolated within a histogram bin of [low, high]."""
    if high <= low:
        return low
    edges = np.linspace(low, high, MEDIAN_BINS + 1)

    needed = narrowed_schema(read.plan, (name,))

    def histogram(unit: int) -> np.ndarray:
        values = _finite(source.rows(unit, needed).column(name))
        return np.histogram(values, bins=edges)[0]

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        counts = sum(pool.map(histogram, range(len(read.plan.row_groups))), np.zeros(MEDIAN_BINS, dtype=np.int64))
    cumulative = np.cumsum(counts)
    middle = (count - 1) / 2
    index = int(np.searchsorted(cumulative, middle, side="right"))
    before = cumulative[index - 1] if index else 0
    share = (middle - before + 0.5) / max(int(counts[index]), 1)
    return float(edges[index] + (edges[index + 1] - edges[index]) * min(max(share, 0.0), 1.0))


__all__ = ["learn_encoding"]
