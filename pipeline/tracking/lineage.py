"""MLflow lineage: the tags, params and dataset input that pin a run to its Iceberg snapshot.

Snapshot ids exceed 2^53, so they are always written as strings (MLflow tags are strings,
and the MLflow and Dagster UIs are JavaScript, which would round a number).
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
from mlflow.data.dataset import Dataset
from mlflow.data.dataset_source_registry import register_dataset_source
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, DataType, Schema

from pipeline.config.secrets import redact
from pipeline.config.settings import Settings
from pipeline.config.tree import PipelineConfig
from pipeline.data.specs import ReadSpec
from pipeline.errors import EncodingError, RunNotFoundError, TrackingError
from pipeline.names import check_tracking_name
from pipeline.tracking.dataset_source import IcebergDatasetSource
from pipeline.tracking.params import ENCODING_DIGEST_PARAM, from_params

# MLflow prints "View run ... at: <tracking URI>" when a run ends on a server, password and
# all; icetrain prints its own (redacted) links instead.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
from pipeline.data.encoding import ARTIFACT_PATH as ENCODING_ARTIFACT
from pipeline.data.encoding import Encoding
from pipeline.data.snapshots import PinnedSnapshot
from pipeline.data.tensors import TensorLayout
from pipeline.tracking.client import tracking_client
from pipeline.tracking.tags import (
    DAGSTER_RUN_TAG,
    GIT_DIRTY_TAG,
    LAUNCHED_BY_TAG,
    PIPELINE_TAG,
    SNAPSHOT_ID_TAG,
    TABLE_TAG,
)

TAG_PREFIX = "icetrain."
# MLflow's answers that mean "there is no such thing"; any other failure is an error, not an absence.
NOT_FOUND_CODES = ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE")


def is_absence(exc: MlflowException) -> bool:
    """Whether MLflow answered "there is no such thing"; any other failure is an error, never an absence."""
    return exc.error_code in NOT_FOUND_CODES


def tracking_error(what: str, exc: MlflowException) -> TrackingError:
    """An MLflow failure as one line: ``cannot <what>: <what MLflow said>``."""
    return TrackingError(f"cannot {what}: {' '.join(str(exc).split())[:200]}")


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
        "icetrain.since_snapshot_id": str(spec.since_snapshot_id) if spec.since_snapshot_id is not None else "",
    }
    if dagster_run_id:
        tags[DAGSTER_RUN_TAG] = dagster_run_id
    if pipeline:
        tags[PIPELINE_TAG] = pipeline
    return tags


def source_tags(launched_by: str, directory: Path | None = None) -> dict[str, str]:
    """One source for every run (CLI, demo, Dagster, API), and the git commit it was trained from.

    ``launched_by`` says which front end started it ('cli', 'dagster', 'api', ...). The commit
    and whether the work tree had uncommitted changes are read from the git repository the
    project runs in, when there is one.
    """
    tags = {"mlflow.source.name": "icetrain", "mlflow.source.type": "JOB", LAUNCHED_BY_TAG: launched_by}
    git = _git_state(directory or Path.cwd())
    if git is not None:
        tags["mlflow.source.git.commit"], dirty = git
        tags[GIT_DIRTY_TAG] = "true" if dirty else "false"
    return tags


def run_description(
    pinned: PinnedSnapshot, pipeline: str | None, dagster_run_id: str | None, dagster_url: str | None, row_count: int
) -> str:
    """The run's description (MLflow's note): what it trained on, for which pipeline, started by which Dagster run."""
    lines = [
        f"Trained on **{pinned.table}** at snapshot `{pinned.snapshot_id}` (asked by {pinned.asked_by}"
        + (f" `{pinned.asked_value}`" if pinned.asked_value else "")
        + f", committed {pinned.committed_at.isoformat(timespec='seconds')}), {row_count} rows.",
    ]
    if pipeline:
        lines.append(f"Pipeline: **{pipeline}**.")
    if dagster_run_id:
        link = (
            f"[{dagster_run_id}]({dagster_url.rstrip('/')}/runs/{dagster_run_id})"
            if dagster_url
            else f"`{dagster_run_id}`"
        )
        lines.append(f"Dagster run: {link}.")
    lines.append("Train it again: `icetrain reproduce <this run id>`.")
    return "\n\n".join(lines)


def run_name(pinned: PinnedSnapshot, pipeline: str | None, started: datetime | None = None) -> str:
    """A run name that says what was trained on which data, and when: ``pipeline@snapshot 2026-12-02 18:55:03``.

    The start time (UTC) tells apart runs on the same snapshot in MLflow's run table.
    """
    when = (started or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S")
    return f"{pipeline or pinned.table}@{pinned.snapshot_id} {when}"


def _git_state(directory: Path) -> tuple[str, bool] | None:
    try:
        commit = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        if commit.returncode != 0:
            return None
        status = subprocess.run(
            ["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return commit.stdout.strip(), bool(status.stdout.strip())


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
        specs = [ColSpec(mlflow_type(field.type), field.name) for field in self._arrow_schema]
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
    name = check_tracking_name(name or settings.experiment, "experiment")
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if settings.artifact_root is not None:
        location = (settings.artifact_root / name).as_uri()  # the name check keeps the folder inside the root
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
        TrackingError: the store could not be asked (an error is not an absence).
    """
    client = tracking_client(settings)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        if not is_absence(exc):
            raise tracking_error(f"read MLflow run {run_id!r} from {redact(settings.tracking_uri)}", exc) from exc
        raise RunNotFoundError(f"no MLflow run {run_id!r} in tracking store {redact(settings.tracking_uri)}") from exc
    if run.info.lifecycle_stage == "deleted":
        raise RunNotFoundError(f"MLflow run {run_id!r} was deleted")
    if SNAPSHOT_ID_TAG not in run.data.tags or TABLE_TAG not in run.data.tags:
        raise RunNotFoundError(f"MLflow run {run_id!r} has no icetrain lineage tags; it was not trained by icetrain")
    return run


def replay_config(settings: Settings, run_id: str) -> PipelineConfig:
    """The config an earlier run trained with: its table, snapshot id, columns, filter, SQL,
    label classes, image layout, model factory and settings, whatever icetrain version made it.

    A replay trains again to verify or compare; it never registers a model, so
    ``tracking.registered_model`` is cleared (set it again to register the replay).

    Raises:
        RunNotFoundError: no such run, or not icetrain's.
        ConfigError: its recorded config no longer validates (the message names the key).
    """
    run = get_run(settings, run_id)
    tags = run.data.tags
    config = from_params(run.data.params, run_id=run_id)
    pinned = {
        "data.table": tags[TABLE_TAG],
        "data.snapshot_id": int(tags[SNAPSHOT_ID_TAG]),
        "data.ref": None,
        "data.as_of": None,
    }
    return config.updated({**pinned, "tracking.registered_model": None})


def replay_encoding(settings: Settings, run_id: str) -> Encoding | None:
    """The encoding an earlier run recorded (its categorical columns' vocabularies), for a replay; None when it had none.

    Raises:
        RunNotFoundError: no such run.
        EncodingError: the run recorded an encoding whose artifact is missing or damaged.
        TrackingError: MLflow could not be asked.
    """
    run = get_run(settings, run_id)
    digest = run.data.params.get(ENCODING_DIGEST_PARAM)
    if not digest:
        return None
    where = f"run {run_id}'s encoding ({ENCODING_ARTIFACT}, digest {digest})"
    try:
        with tempfile.TemporaryDirectory(prefix="icetrain-encoding-") as folder:
            path = tracking_client(settings).download_artifacts(run_id, ENCODING_ARTIFACT, folder)
            encoding = Encoding.from_dict(json.loads(Path(path).read_text()))
    except MlflowException as exc:
        if not is_absence(exc):
            raise tracking_error(f"read {where}", exc) from exc
        raise EncodingError(f"{where} is missing; the run cannot be replayed with its categories") from exc
    except OSError as exc:
        raise EncodingError(f"{where} is missing; the run cannot be replayed with its categories") from exc
    except (ValueError, KeyError, TypeError) as exc:
        raise EncodingError(f"{where} is damaged ({exc}); the run cannot be replayed with its categories") from exc
    if encoding.digest != digest:
        raise EncodingError(f"{where} is damaged: its vocabularies hash to {encoding.digest}")
    return encoding


def mlflow_type(data_type: pa.DataType) -> DataType:
    """The MLflow column type of an Arrow type (dataset and model signatures)."""
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
    if pa.types.is_timestamp(data_type) or pa.types.is_date(data_type):
        return DataType.datetime
    return DataType.binary
