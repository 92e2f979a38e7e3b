"""MLflow lineage: the tags, params and dataset input that pin a run to its Iceberg snapshot.

Snapshot ids exceed 2^53, so they are always written as strings (MLflow tags are strings,
and the MLflow and Dagster UIs are JavaScript, which would round a number).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
from mlflow.data.dataset import Dataset
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source
from mlflow.exceptions import MlflowException
from mlflow.entities import Run
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, Schema

from pipeline.config import PipelineConfig
from pipeline.errors import RunNotFoundError
from pipeline.params import from_params
from pipeline.settings import Settings
from pipeline.specs import ReadSpec
from pipeline.snapshots import PinnedSnapshot
from pipeline.tensors import TensorLayout

TAG_PREFIX = "icetrain."
SNAPSHOT_ID_TAG = "icetrain.snapshot_id"
TABLE_TAG = "icetrain.table"
DAGSTER_RUN_TAG = "icetrain.dagster_run_id"
PIPELINE_TAG = "icetrain.pipeline"


def lineage_tags(
    pinned: PinnedSnapshot,
    spec: ReadSpec,
    layout: TensorLayout,
    *,
    row_count: int,
    digest: str,
    dagster_run_id: str | None = None,
    pipeline: str | None = None,
    split_key: tuple[str, ...] = (),
) -> dict[str, str]:
    """Tags that say exactly which data a run saw, enough to read it again."""
    tags = {
        "icetrain.catalog": pinned.catalog,
        TABLE_TAG: pinned.table,
        SNAPSHOT_ID_TAG: str(pinned.snapshot_id),
        "icetrain.snapshot_asked_by": pinned.asked_by,
        "icetrain.snapshot_asked_value": pinned.asked_value,
        "icetrain.snapshot_committed_at": pinned.committed_at.isoformat(),
        "icetrain.row_filter": spec.row_filter or "",
        "icetrain.columns": ",".join((layout.label, *layout.features)),
        "icetrain.label": layout.label,
        "icetrain.sql": spec.sql or "",
        "icetrain.row_count": str(row_count),
        "icetrain.dataset_digest": digest,
        "icetrain.split_key": ",".join(split_key) if split_key else "file,position",
    }
    if dagster_run_id:
        tags[DAGSTER_RUN_TAG] = dagster_run_id
    if pipeline:
        tags[PIPELINE_TAG] = pipeline
    return tags


class IcebergDatasetSource(DatasetSource):
    """An MLflow dataset source naming one snapshot of one Iceberg table.

    Its URI form is ``iceberg://<catalog>/<namespace.table>@<snapshot id>``.
    """

    def __init__(self, catalog: str, table: str, snapshot_id: int, row_filter: str = "", sql: str = ""):
        self.catalog = catalog
        self.table = table
        self.snapshot_id = int(snapshot_id)
        self.row_filter = row_filter
        self.sql = sql

    @property
    def uri(self) -> str:
        return f"iceberg://{self.catalog}/{self.table}@{self.snapshot_id}"

    @staticmethod
    def _get_source_type() -> str:
        return "iceberg"

    def load(self) -> pa.Table:
        """Read the snapshot's rows (filter applied) from the catalog the environment configures."""
        from pipeline.catalog import load_table, open_catalog
        from pipeline.reading import parse_filter, snapshot_schema
        from pipeline.snapshots import PinnedSnapshot

        settings = Settings.from_env(catalog_name=self.catalog)
        table = load_table(open_catalog(settings), self.table)
        pinned = PinnedSnapshot(self.catalog, self.table, self.snapshot_id, "id", str(self.snapshot_id), 0)
        row_filter = parse_filter(self.row_filter, snapshot_schema(table, pinned), pinned)
        return table.scan(snapshot_id=self.snapshot_id, row_filter=row_filter).to_arrow()

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
        }

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> IcebergDatasetSource:
        return cls(
            source_dict["catalog"],
            source_dict["table"],
            int(source_dict["snapshot_id"]),
            source_dict.get("row_filter", ""),
            source_dict.get("sql", ""),
        )


class IcebergSnapshotDataset(Dataset):
    """The rows a run trained on, as an MLflow dataset: source, digest, schema and row count."""

    def __init__(self, source: IcebergDatasetSource, *, name: str, digest: str, schema: pa.Schema, num_rows: int):
        self._arrow_schema = schema
        self._num_rows = num_rows
        self._content_digest = digest
        super().__init__(source=source, name=name, digest=digest)

    def _compute_digest(self) -> str:
        return self._content_digest

    @property
    def profile(self) -> dict[str, Any]:
        return {"num_rows": self._num_rows}

    @property
    def schema(self) -> Schema:
        specs = [ColSpec(_mlflow_type(field.type), field.name) for field in self._arrow_schema]
        return Schema(specs)

    def to_dict(self) -> dict[str, str]:
        config = super().to_dict()
        config.update(
            {
                "schema": json.dumps({"mlflow_colspec": self.schema.to_dict()}),
                "profile": json.dumps(self.profile),
            }
        )
        return config


def register_sources() -> None:
    """Make ``iceberg://`` dataset sources resolvable by MLflow (idempotent)."""
    register_dataset_source(IcebergDatasetSource)


def ensure_experiment(client: MlflowClient, settings: Settings, name: str | None = None) -> str:
    """The id of experiment ``name`` (default: the settings' experiment), created if needed.

    With the embedded store, artifacts go under the project data directory rather than the
    current working directory.
    """
    name = name or settings.experiment
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if settings.artifact_root is not None:
        location = (settings.artifact_root / name).as_uri()
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created meanwhile by a concurrent run
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def get_run(settings: Settings, run_id: str) -> Run:
    """An icetrain run from the tracking store.

    Raises:
        RunNotFoundError: the store has no such run, or the run carries no icetrain lineage.
    """
    client = MlflowClient(settings.tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise RunNotFoundError(f"no MLflow run {run_id!r} in tracking store {redact(settings.tracking_uri)}") from exc
    if SNAPSHOT_ID_TAG not in run.data.tags or TABLE_TAG not in run.data.tags:
        raise RunNotFoundError(f"MLflow run {run_id!r} has no icetrain lineage tags; it was not trained by icetrain")
    return run


def replay_config(settings: Settings, run_id: str) -> PipelineConfig:
    """The config an earlier run trained with: its table, snapshot id, columns, filter, SQL,
    label classes, image layout, model factory and settings, whatever icetrain version made it.

    Raises:
        RunNotFoundError: no such run, or not icetrain's.
        ConfigError: its recorded config no longer validates (the message names the key).
    """
    run = get_run(settings, run_id)
    tags = run.data.tags
    config = from_params(run.data.params, run_id=run_id)
    return config.updated({"data.table": tags[TABLE_TAG], "data.snapshot_id": int(tags[SNAPSHOT_ID_TAG]), "data.ref": None, "data.as_of": None})


def redact(uri: str) -> str:
    """A URI without its password, for messages."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _mlflow_type(data_type: pa.DataType) -> DataType:
    if pa.types.is_boolean(data_type):
        return DataType.boolean
    if pa.types.is_integer(data_type):
        return DataType.long
    if pa.types.is_float32(data_type):
        return DataType.float
    if pa.types.is_floating(data_type):
        return DataType.double
    if pa.types.is_string(data_type) or pa.types.is_large_string(data_type):
        return DataType.string
    return DataType.binary
