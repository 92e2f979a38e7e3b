"""Retrain a pipeline when its table gets a new snapshot with enough new rows, pinned to that snapshot's id."""

import json
from dataclasses import dataclass

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunConfig,
    RunRequest,
    RunsFilter,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot

from assets.config import PinConfig, ScoreConfig
from assets.failures import user_errors_as_failures
from assets.history import last_training
from assets.jobs import job_name, predict_job_name
from assets.keys import monitoring_key, predictions_key, training_data_key
from assets.resources import IcebergResource, MlflowResource, combined_settings
from pipeline.config.project import Pipeline
from pipeline.data.snapshots import total_rows
from pipeline.lake.catalog import current_snapshot
from pipeline.tracking.client import tracking_client
from pipeline.tracking.reference import champion_version

NO_SNAPSHOT = "none"


@dataclass(frozen=True)
class SensorCursor:
    """The last snapshot seen, and the snapshot new rows are counted from."""

    seen: str
    base: str

    @classmethod
    def read(cls, text: str | None) -> "SensorCursor | None":
        if not text:
            return None
        try:
            values = json.loads(text)
            return cls(str(values["seen"]), str(values.get("base", "")))
        except (ValueError, KeyError, TypeError):
            return cls(text, text)  # a cursor written before it held JSON: a bare snapshot id

    def write(self) -> str:
        return json.dumps({"seen": self.seen, "base": self.base})


def _rows_added(table: Table, base: str, current: Snapshot) -> int | None:
    """Rows in the current snapshot minus rows in ``base``, from summaries (None when ``base`` is gone)."""
    try:
        before = table.snapshot_by_id(int(base))
    except ValueError:
        return None
    if before is None:
        return None
    return total_rows(current) - total_rows(before)


def new_snapshot_sensor(pipeline: Pipeline) -> SensorDefinition:
    """A sensor whose cursor is the last snapshot id it saw and the snapshot rows are counted from.

    Its first tick records the table's current snapshot and trains on it only if
    ``retrain.train_on_first_snapshot``. After that, a new current snapshot requests a run
    (``run_key`` = snapshot id, so a snapshot never trains twice; run config pins it) when it
    adds at least ``retrain.min_new_rows`` rows since the snapshot of the last trained model
    (the latest ``NAME/trained_model`` materialization, else the last snapshot it requested),
    counted from the snapshots' summaries; otherwise its skip reason says how many.
    """
    table_name, retrain = pipeline.table, pipeline.config.retrain
    op_name = "__".join(training_data_key(pipeline).path)

    @sensor(
        name=f"{pipeline.name}_new_snapshot",
        job_name=job_name(pipeline),
        minimum_interval_seconds=retrain.sensor_interval_s,
        default_status=DefaultSensorStatus.RUNNING if retrain.sensor_on else DefaultSensorStatus.STOPPED,
        description=f"Retrain {pipeline.name!r} when a new snapshot of {table_name} adds at least {retrain.min_new_rows} rows.",
    )
    def new_snapshot(context: SensorEvaluationContext, iceberg: IcebergResource) -> RunRequest | SkipReason:
        catalog = iceberg.catalog()
        table = catalog.load_table(table_name) if catalog.table_exists(table_name) else None
        current = table.current_snapshot() if table is not None else None
        cursor = SensorCursor.read(context.cursor)
        if current is None:
            context.update_cursor(SensorCursor(NO_SNAPSHOT, cursor.base if cursor else "").write())
            return SkipReason(f"table {table_name} has no snapshot yet")
        seen = str(current.snapshot_id)
        if cursor is None and not retrain.train_on_first_snapshot:
            context.update_cursor(SensorCursor(seen, seen).write())
            return SkipReason(
                f"started: recorded snapshot {seen} of {table_name} as seen; the next new snapshot retrains (retrain.train_on_first_snapshot: true trains on this one)"
            )
        if cursor is not None and cursor.seen == seen:
            return SkipReason(f"no new snapshot of {table_name} since {seen}")
        last = last_training(context.instance, pipeline)
        if last is not None and last.snapshot_id == seen:
            context.update_cursor(SensorCursor(seen, seen).write())
            return SkipReason(f"snapshot {seen} of {table_name} was already trained (MLflow run {last.mlflow_run_id})")
        base = (last.snapshot_id if last is not None else "") or (cursor.base if cursor else "")
        added = _rows_added(table, base, current) if base else None
        if added is not None and added < retrain.min_new_rows:
            context.update_cursor(SensorCursor(seen, base).write())
            return SkipReason(
                f"snapshot {seen} adds {added} rows since snapshot {base} of the last trained model, fewer than retrain.min_new_rows={retrain.min_new_rows}"
            )
        context.update_cursor(SensorCursor(seen, seen).write())
        return RunRequest(
            run_key=seen,
            run_config=RunConfig(ops={op_name: PinConfig(snapshot_id=seen)}),
            tags={
                "icetrain/snapshot_id": seen,
                "icetrain/pipeline": pipeline.name,
                "icetrain/rows_added": "" if added is None else str(added),
            },
        )

    return new_snapshot


def scoring_sensor(pipeline: Pipeline) -> SensorDefinition:
    """Score each new snapshot of the scoring table with the champion: one run per (input snapshot, model version).

    The run config pins both, so the run scores exactly what the sensor saw, whatever lands or
    gets promoted meanwhile. A new champion on an already scored snapshot requests nothing: its
    first run scores the next snapshot's new rows. Without a champion it says so and waits.
    """
    table_name, section = pipeline.scoring_table, pipeline.config.predict
    model_name = str(pipeline.config.tracking.registered_model)
    op_name = "__".join(predictions_key(pipeline).path)

    @sensor(
        name=f"{pipeline.name}_predict_new_snapshot",
        job_name=predict_job_name(pipeline),
        minimum_interval_seconds=section.sensor_interval_s,
        default_status=DefaultSensorStatus.RUNNING if section.sensor_on else DefaultSensorStatus.STOPPED,
        description=f"Score each new snapshot of {table_name} with the champion of {model_name!r}.",
    )
    def predict_new_snapshot(
        context: SensorEvaluationContext, iceberg: IcebergResource, mlflow: MlflowResource
    ) -> RunRequest | SkipReason:
        catalog = iceberg.catalog()
        current = current_snapshot(catalog, table_name)
        if current is None:
            return SkipReason(f"table {table_name} has no snapshot yet")
        seen = str(current.snapshot_id)
        if context.cursor == seen:
            return SkipReason(f"snapshot {seen} of {table_name} was already requested for scoring")
        with user_errors_as_failures():  # an MLflow error is an error, never "no champion"
            champion = champion_version(tracking_client(combined_settings(iceberg, mlflow)), model_name)
        if champion is None:
            return SkipReason(f"registered model {model_name!r} has no champion yet; snapshot {seen} waits for one")
        version = str(champion.version)
        context.update_cursor(seen)
        return RunRequest(
            run_key=f"{seen}:{version}",
            run_config=RunConfig(ops={op_name: ScoreConfig(snapshot_id=seen, model_version=version)}),
            tags={"icetrain/snapshot_id": seen, "icetrain/pipeline": pipeline.name, "icetrain/model_version": version},
        )

    return predict_new_snapshot


UNFINISHED = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


def degradation_sensor(pipeline: Pipeline) -> SensorDefinition:
    """Retrain when the champion got worse: its realized metric fell below its validation score by ``monitor.margin``
    (``retrain.on_degradation``), or its scores drifted past ``monitor.max_prediction_psi`` (``retrain.on_prediction_drift``).

    It reads the newest ``NAME/monitoring`` materialization (the breaches it lists are the
    champion's only: a window scored by a model since replaced never retrains again) and requests
    the training job once per window (``run_key`` = ``degraded:WINDOW`` or ``drift:WINDOW``),
    pinned to the training table's current snapshot. The new model then meets the gates and the
    champion/challenger evaluation as any other. While a retraining is under way it waits.
    """
    retrain, monitor_section, table_name = pipeline.config.retrain, pipeline.config.monitor, pipeline.table
    op_name = "__".join(training_data_key(pipeline).path)
    on = retrain.on_degradation or retrain.on_prediction_drift

    @sensor(
        name=f"{pipeline.name}_retrain_on_degradation",
        job_name=job_name(pipeline),
        minimum_interval_seconds=monitor_section.sensor_interval_s,
        default_status=DefaultSensorStatus.RUNNING if on else DefaultSensorStatus.STOPPED,
        description=f"Retrain {pipeline.name!r} when the champion's realized {monitor_section.metric} falls"
        f" {monitor_section.margin} below its validation score (or its predictions drift), as NAME/monitoring reports.",
    )
    def retrain_on_degradation(context: SensorEvaluationContext, iceberg: IcebergResource) -> RunRequest | SkipReason:
        event = context.instance.get_latest_materialization_event(monitoring_key(pipeline))
        materialization = event.asset_materialization if event is not None else None
        if materialization is None:
            return SkipReason(f"{monitoring_key(pipeline).to_user_string()} was never materialized")
        metadata = materialization.metadata
        breaches = []  # the newest breach decides; a realized drop before a drift
        if retrain.on_prediction_drift:
            breaches += [("drift", item) for item in _listed(metadata.get("drifted_windows"))[-1:]]
        if retrain.on_degradation:
            breaches += [("degraded", item) for item in _listed(metadata.get("degraded_windows"))[-1:]]
        if not breaches:
            return SkipReason(
                "the champion's monitoring shows no breach that retrains (retrain.on_degradation / on_prediction_drift)"
            )
        kind, newest = breaches[-1]
        window = str(newest.get("window"))
        running = context.instance.get_runs(RunsFilter(job_name=job_name(pipeline), statuses=UNFINISHED), limit=1)
        if running:
            return SkipReason(f"window {window} breached, but retraining run {running[0].run_id} is under way")
        catalog = iceberg.catalog()
        current = current_snapshot(catalog, table_name)
        if current is None:
            return SkipReason(f"table {table_name} has no snapshot to retrain on")
        seen = str(current.snapshot_id)
        return RunRequest(
            run_key=f"{kind}:{window}",
            run_config=RunConfig(ops={op_name: PinConfig(snapshot_id=seen)}),
            tags={
                "icetrain/snapshot_id": seen,
                "icetrain/pipeline": pipeline.name,
                "icetrain/trigger": kind,
                "icetrain/window": window,
                "icetrain/model_version": str(newest.get("model_version", "")),
            },
        )

    return retrain_on_degradation


def _listed(value: object) -> list[dict]:
    data = getattr(value, "data", value)
    return [item for item in data if isinstance(item, dict)] if isinstance(data, list) else []
