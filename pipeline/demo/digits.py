"""The demo table: scikit-learn's handwritten digits, shipped with the package (no download).

Pixels are stored as one ``fixed[64]`` column of raw bytes (Iceberg has no uint8 type, and
a list column would cost 4x the bytes and a slow decode); the image shape and value range
are table properties that ``pipeline.data.tensors`` reads back.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from pyiceberg.catalog import Catalog

from pipeline.data.tensors import image_properties, label_classes_property
from pipeline.lake.ingest import append_arrow

DIGITS_TABLE = "demo.digits"
DIGITS_SOURCE = "sklearn.datasets.load_digits"
# Three appends of different sizes, so the table has three snapshots to travel between.
DIGITS_APPEND_SIZES = (900, 500, 397)


def digits_arrow() -> pa.Table:
    """All 1,797 digits as an Arrow table: id, pixels (64 raw bytes, values 0-16), label."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = np.ascontiguousarray(digits.images.reshape(len(digits.images), 64).astype(np.uint8))
    count = len(pixels)
    pixel_array = pa.FixedSizeBinaryArray.from_buffers(pa.binary(64), count, [None, pa.py_buffer(pixels.tobytes())])
    schema = pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            pa.field("pixels", pa.binary(64)),
            pa.field("label", pa.int64()),
        ]
    )
    return pa.Table.from_arrays(
        [pa.array(np.arange(count, dtype=np.int64)), pixel_array, pa.array(digits.target.astype(np.int64))],
        schema=schema,
    )


def digits_table_properties() -> dict[str, str]:
    """Table properties that tell icetrain how to turn the digits columns into tensors."""
    return {
        **image_properties("pixels", shape=(1, 8, 8), max_value=16),
        **label_classes_property(range(10)),
    }


def ingest_digits(catalog: Catalog, *, identifier: str = DIGITS_TABLE, run_id: str | None = None) -> list[int]:
    """Write the digits in several appends if the table is missing or empty.

    Returns:
        The ids of the snapshots committed now; empty when the table already holds data.
    """
    if catalog.table_exists(identifier) and catalog.load_table(identifier).current_snapshot() is not None:
        return []
    data = digits_arrow()
    snapshot_ids = []
    offset = 0
    for size in DIGITS_APPEND_SIZES:
        part = data.slice(offset, size)
        offset += size
        snapshot_ids.append(
            append_arrow(
                catalog,
                identifier,
                part,
                source=DIGITS_SOURCE,
                run_id=run_id,
                table_properties=digits_table_properties(),
                identifier_fields=("id",),
            )
        )
    return snapshot_ids
