"""The ``iceberg://`` MLflow dataset source: the rows one run read, loadable again.

Kept apart from ``pipeline.tracking.lineage`` and light on imports because MLflow loads it through the
``mlflow.dataset_source`` entry point while MLflow itself is still importing.
"""

from __future__ import annotations

import json
from typing import Any

from mlflow.data.dataset_source import DatasetSource


class IcebergDatasetSource(DatasetSource):
    """An MLflow dataset source naming the rows one run read: a snapshot of a table, and how it was read.

    Its URI form is ``iceberg://<catalog>/<namespace.table>@<snapshot id>``; it also carries the
    run's ``data`` config section (filter, SQL, label, features, classes, split settings) and
    which split it is, so ``load()`` gives a loader for exactly those rows.
    """

    def __init__(
        self,
        catalog: str,
        table: str,
        snapshot_id: int,
        row_filter: str = "",
        sql: str = "",
        data: dict[str, Any] | None = None,
        split: str = "all",
    ):
        self.catalog = catalog
        self.table = table
        self.snapshot_id = int(snapshot_id)
        self.row_filter = row_filter
        self.sql = sql
        self.data = data
        self.split = split

    @property
    def uri(self) -> str:
        return f"iceberg://{self.catalog}/{self.table}@{self.snapshot_id}"

    @staticmethod
    def _get_source_type() -> str:
        return "iceberg"

    def load(self) -> Any:
        """An ``IcebergLoader`` (unshuffled) over exactly the rows the run read, from the catalog the environment configures.

        Raises:
            SnapshotNotFoundError: the snapshot was expired since.
        """
        from pipeline.config.settings import Settings
        from pipeline.config.tree import DataConfig
        from pipeline.data.loading import open_loader
        from pipeline.data.snapshots import PinnedSnapshot
        from pipeline.data.specs import LoaderConfig
        from pipeline.errors import SnapshotNotFoundError
        from pipeline.lake.catalog import load_table, open_catalog

        table = load_table(open_catalog(Settings.from_env(catalog_name=self.catalog)), self.table)
        snapshot = table.snapshot_by_id(self.snapshot_id)
        if snapshot is None:
            raise SnapshotNotFoundError(f"snapshot {self.snapshot_id} of {self.table!r} no longer exists (expired?)")
        pinned = PinnedSnapshot(
            self.catalog, self.table, self.snapshot_id, "id", str(self.snapshot_id), snapshot.timestamp_ms
        )
        data = (
            DataConfig.model_validate(self.data)
            if self.data
            else DataConfig(table=self.table, filter=self.row_filter or None, sql=self.sql or None)
        )
        config = LoaderConfig(
            shuffle=False, split=self.split, val_fraction=data.val_fraction, split_seed=data.split_seed
        )
        return open_loader(table, pinned, data.read_spec(), config)

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return isinstance(raw_source, str) and raw_source.startswith("iceberg://") and "@" in raw_source

    @classmethod
    def _resolve(cls, raw_source: str) -> IcebergDatasetSource:
        location, _, snapshot_id = raw_source.removeprefix("iceberg://").rpartition("@")
        catalog, _, table = location.partition("/")
        return cls(catalog, table, int(snapshot_id))

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "catalog": self.catalog,
            "table": self.table,
            "snapshot_id": str(self.snapshot_id),
            "row_filter": self.row_filter,
            "sql": self.sql,
            "split": self.split,
            "data": json.dumps(self.data) if self.data else "",
        }

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> IcebergDatasetSource:
        data = source_dict.get("data")
        return cls(
            source_dict["catalog"],
            source_dict["table"],
            int(source_dict["snapshot_id"]),
            source_dict.get("row_filter", ""),
            source_dict.get("sql", ""),
            json.loads(data) if data else None,
            source_dict.get("split", "all"),
        )


__all__ = ["IcebergDatasetSource"]
