"""Small Iceberg tables of chosen shapes (files, row groups, deletes) for the loader's tests."""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.manifest import DataFile, DataFileContent, FileFormat
from pyiceberg.table import Table
from pyiceberg.typedef import Record

from pipeline.lake.ingest import append_arrow
from tests.conftest import tabular_rows

_names = itertools.count()


def shapes_catalog(folder: Path) -> SqlCatalog:
    """An empty SQLite catalog in ``folder`` with the namespace ``shapes`` that ``table_of_shape`` writes to."""
    catalog = SqlCatalog(
        "icetrain", uri=f"sqlite:///{folder / 'catalog.db'}", warehouse=(folder / "warehouse").as_uri()
    )
    catalog.create_namespace("shapes")
    return catalog


def table_of_shape(catalog: Catalog, file_rows: list[int], row_group_rows: int) -> Table:
    """A table with one data file per entry of ``file_rows`` (ids 0..N-1), row groups of ``row_group_rows``."""
    identifier = f"shapes.t{next(_names)}"
    start = 0
    for rows in file_rows:
        append_arrow(
            catalog,
            identifier,
            tabular_rows(start, rows),
            source="test",
            table_properties={"write.parquet.row-group-limit": str(row_group_rows)},
            identifier_fields=("id",),
        )
        start += rows
    return catalog.load_table(identifier)


_POSITION_DELETE_SCHEMA = pa.schema(
    [
        pa.field("file_path", pa.string(), nullable=False, metadata={b"PARQUET:field_id": b"2147483546"}),
        pa.field("pos", pa.int64(), nullable=False, metadata={b"PARQUET:field_id": b"2147483545"}),
    ]
)


def add_position_deletes(table: Table, deletes: dict[str, list[int]], folder: Path) -> Table:
    """Commit a positional delete file (merge-on-read), which PyIceberg itself cannot write yet.

    The file follows the Iceberg spec; it is committed through PyIceberg's fast append, so it
    sits in a manifest marked as data. PyIceberg's planner classifies files by each entry's
    content, so readers built on it (icetrain, ``scan().to_arrow()``) apply the deletes.
    """
    path = folder / f"deletes-{next(_names)}.parquet"
    file_paths = [p for p, positions in deletes.items() for _ in positions]
    positions = [pos for ps in deletes.values() for pos in ps]
    pq.write_table(
        pa.table({"file_path": file_paths, "pos": pa.array(positions, pa.int64())}, schema=_POSITION_DELETE_SCHEMA),
        path,
    )
    delete_file = DataFile.from_args(
        content=DataFileContent.POSITION_DELETES,
        file_path=path.as_uri(),
        file_format=FileFormat.PARQUET,
        partition=Record(),
        record_count=len(positions),
        file_size_in_bytes=os.path.getsize(path),
    )
    delete_file.spec_id = table.metadata.default_spec_id
    with table.transaction() as transaction:
        with transaction.update_snapshot().fast_append() as append:
            append.append_data_file(delete_file)
    return table.refresh()


def data_file_paths(table: Table) -> list[str]:
    """The table's current data files, sorted."""
    return sorted(task.file.file_path for task in table.scan().plan_files())
