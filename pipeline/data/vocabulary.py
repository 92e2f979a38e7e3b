"""Learning the categorical columns' vocabularies from the training split of a pinned snapshot, in one pass.

Each row group of the training split (after filter, deletes, split and SQL, exactly the rows
the loader will train on) is read once by a few threads, and the categories of every
categorical column are counted with Arrow's ``value_counts``. What is kept is a function of
those counts alone, so the same snapshot and config always give the same encoding.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pyarrow.compute as pc

from pipeline.data.encoding import DEFAULT_LIMIT, Encoding, Vocabulary, as_text
from pipeline.data.reading import PreparedRead
from pipeline.data.specs import LoaderConfig
from pipeline.errors import ColumnError


def learn_encoding(
    read: PreparedRead,
    split: LoaderConfig,
    *,
    min_frequency: int = 1,
    max_categories: int | None = None,
    threads: int = 2,
) -> Encoding | None:
    """The vocabularies of ``read``'s categorical columns over the rows of ``split`` (None without any).

    A column keeps its categories seen at least ``min_frequency`` times, the ``max_categories``
    most frequent of them when set (ties by value), in sorted order.

    Raises:
        ColumnError: a column has more than 1000 distinct kept values and ``max_categories`` is not set.
    """
    columns = read.layout.categorical
    if not columns:
        return None
    source = read.source(split)

    def count(unit: int) -> list[Counter[str]]:
        rows = source.rows(unit)
        found = []
        for name in columns:
            counts: Counter[str] = Counter()
            values = as_text(rows.column(name))
            if values.null_count < len(values):
                for entry in pc.value_counts(values.drop_null()).to_pylist():
                    counts[entry["values"]] += int(entry["counts"])
            found.append(counts)
        return found

    totals = [Counter[str]() for _ in columns]
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for found in pool.map(count, range(len(read.plan.row_groups))):
            for total, counts in zip(totals, found, strict=True):
                total.update(counts)
    vocabularies = []
    for name, counts in zip(columns, totals, strict=True):
        kept = [(value, n) for value, n in counts.items() if n >= min_frequency]
        if max_categories is None and len(kept) > DEFAULT_LIMIT:
            raise ColumnError(
                f"categorical column {name!r} has {len(kept)} distinct values in the training rows, more than {DEFAULT_LIMIT};"
                " set data.max_categories to keep the most frequent ones, or data.min_frequency to drop rare ones, or leave it out of data.features"
            )
        if max_categories is not None and len(kept) > max_categories:
            kept = sorted(kept, key=lambda item: (-item[1], item[0]))[:max_categories]
        vocabularies.append(Vocabulary(name, tuple(sorted(value for value, _ in kept))))
    return Encoding(tuple(vocabularies))


__all__ = ["learn_encoding"]
