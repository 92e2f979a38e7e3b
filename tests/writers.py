"""A writer process for the concurrency tests: appends its own rows, one snapshot per append."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyiceberg.catalog import load_catalog

from pipeline.ingest import append_arrow

ROWS_PER_APPEND = 4


def rows(writer: int, append: int) -> pa.Table:
    """Rows whose ids say which writer and which of its appends wrote them."""
    start = (writer * 1000 + append) * ROWS_PER_APPEND
    ids = np.arange(start, start + ROWS_PER_APPEND, dtype=np.int64)
    return pa.table({"id": pa.array(ids), "x": pa.array(ids.astype(np.float64)), "label": pa.array(ids % 2)})


def write(catalog_properties: dict[str, str], table: str, writer: int, appends: int) -> list[int]:
    """Append ``appends`` times with append ids ``w<writer>-<n>``; returns the snapshot ids."""
    catalog = load_catalog("race", **catalog_properties)
    return [
        append_arrow(catalog, table, rows(writer, n), source=f"writer {writer}", append_id=f"w{writer}-{n}", identifier_fields=("id",))
        for n in range(appends)
    ]
