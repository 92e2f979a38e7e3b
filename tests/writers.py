"""A writer process for the concurrency tests: appends its own rows, one snapshot per append."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.lake.catalog import connect_catalog
from pipeline.lake.ingest import append_arrow
from tests.conftest import tabular_rows

ROWS_PER_APPEND = 4


def rows(writer: int, append: int) -> pa.Table:
    """Rows whose ids say which writer and which of its appends wrote them."""
    start = (writer * 1000 + append) * ROWS_PER_APPEND
    ids = np.arange(start, start + ROWS_PER_APPEND, dtype=np.int64)
    return pa.table({"id": pa.array(ids), "x": pa.array(ids.astype(np.float64)), "label": pa.array(ids % 2)})


def write(catalog_properties: dict[str, str], table: str, writer: int, appends: int) -> list[int]:
    """Append ``appends`` times with append ids ``w<writer>-<n>``; returns the snapshot ids."""
    catalog = _catalog(catalog_properties)
    return [
        append_arrow(
            catalog,
            table,
            rows(writer, n),
            source=f"writer {writer}",
            append_id=f"w{writer}-{n}",
            identifier_fields=("id",),
        )
        for n in range(appends)
    ]


def churn(catalog_properties: dict[str, str], table: str, writer: int, rounds: int) -> int:
    """Append, then delete some rows (a copy-on-write rewrite of data files), ``rounds`` times; returns commits made."""
    from pyiceberg.exceptions import CommitFailedException, ValidationException

    catalog = _catalog(catalog_properties)
    commits = 0
    for n in range(rounds):
        append_arrow(catalog, table, tabular_rows(10_000 * (writer + 1) + 7 * n, 7), source=f"churn {writer}")
        commits += 1
        for _ in range(20):
            try:
                catalog.load_table(table).delete(f"id < {(n + 1) * 7}")
                commits += 1
                break
            except (
                CommitFailedException,
                ValidationException,
            ):  # a concurrent delete of the same rows: try again on the new state
                continue
    return commits


def _catalog(catalog_properties: dict[str, str]):
    """The catalog the properties describe; ``catalog_name`` (default 'race') names it, as tables are registered per name."""
    properties = dict(catalog_properties)
    return connect_catalog(properties.pop("catalog_name", "race"), properties)
