"""A declared pipeline's assets: pinned training data -> trained model.

The training-data asset resolves the snapshot once; the model asset trains on exactly that
snapshot id and never asks for "latest" again. Both are keyed by the pipeline's name and
depend on the Iceberg table's asset key (``namespace/table``), whoever produces it.
"""

import base64
import hashlib
import json
from importlib.metadata import version as package_version

import pyarrow as pa
from dagster import (
    AssetExecutionContext,
    AssetIn,
    AssetsDefinition,
    DataVersion,
    Failure,
    MaterializeResult,
    MetadataValue,
    Output,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)

from assets.config import PinConfig, ScoreConfig
from assets.failures import user_errors_as_failures
from assets.history import trained_in_run
from assets.keys import evaluation_key, predictions_key, table_key, trained_model_key, training_data_key
from assets.resources import IcebergResource, MlflowResource, combined_settings
from pipeline.config.project import Pipeline
from pipeline.data.quality import QualityReport
from pipeline.data.reading import snapshot_schema
from pipeline.data.specs import parse_snapshot_id
from training.evaluate import champion_challenger
from training.launch import train_prepared
from training.plots import learning_curves_png, score_distribution_png
from training.predict import Predictions, PredictRequest, predict
from training.prepare import PreparedRun, RunOrigin, prepare_run
from training.train import TrainResult


def code_version(pipeline: Pipeline) -> str:
    """The pipeline's declaration and icetrain's version, hashed: a change marks its assets stale in the UI."""
    declared = json.dumps(
        pipeline.config.model_dump(mode="json", exclude={"retrain", "tracking", "monitor"}), sort_keys=True
    )
    return hashlib.sha256(f"{declared}|icetrain {package_version('icetrain')}".encode()).hexdigest()[:12]


def training_data_asset(pipeline: Pipeline) -> AssetsDefinition:
    """Resolves the requested snapshot once, pins it, and profiles the rows for the gate."""

    @asset(
        key=training_data_key(pipeline),
        deps=[table_key(pipeline.table)],
        group_name=pipeline.name,
        kinds={"iceberg"},
        code_version=code_version(pipeline),
        description=f"Pins one snapshot of {pipeline.table} (id, tag/branch, as-of or latest) for pipeline {pipeline.name!r}; its data version is the snapshot id.",
        metadata={"pipeline": pipeline.name, "table": pipeline.table},
    )
    def training_data(
        context: AssetExecutionContext, config: PinConfig, iceberg: IcebergResource, mlflow: MlflowResource
    ) -> Output[PreparedRun]:
        with user_errors_as_failures():
            settings = combined_settings(iceberg, mlflow)  # the drift reference may be the registry's champion
            origin = RunOrigin(pipeline.name, "dagster", context.run_id)
            prepared = prepare_run(settings, config.apply(pipeline.config), origin, gates="judge")
            schema = snapshot_schema(prepared.table, prepared.pinned).as_arrow()
        pinned, report, quality, run_config = prepared.pinned, prepared.report, prepared.quality, prepared.config
        assert quality is not None
        context.log.info(f"pinned {pinned.table} at snapshot {pinned.snapshot_id} (asked by {pinned.asked_by})")
        return Output(
            prepared,
            data_version=DataVersion(str(pinned.snapshot_id)),
            metadata={
                "reference_snapshot_id": str(quality.reference_snapshot or ""),
                "feature_profile": _profile_table(quality),
                "table": pinned.table,
                "snapshot_id": str(pinned.snapshot_id),
                "asked_by": pinned.asked_by,
                "asked_value": pinned.asked_value,
                "snapshot_committed_at": pinned.committed_at.isoformat(),
                "row_count": report.row_count if report else 0,
                "row_filter": run_config.data.filter or "",
                "sql": run_config.data.sql or "",
                "label_counts": MetadataValue.json((report.class_counts if report else None) or {}),
                "dagster/column_schema": _table_schema(schema),
            },
        )

    return training_data


def trained_model_asset(pipeline: Pipeline) -> AssetsDefinition:
    """Trains on the pinned snapshot (under torchrun when compute.nproc > 1) and records the run in MLflow."""

    @asset(
        key=trained_model_key(pipeline),
        ins={"training_data": AssetIn(key=training_data_key(pipeline))},
        group_name=pipeline.name,
        kinds={"pytorch", "mlflow"},
        code_version=code_version(pipeline),
        description=f"Trains pipeline {pipeline.name!r} ({pipeline.config.model.factory}) on the pinned snapshot and records the run in MLflow.",
        metadata={"pipeline": pipeline.name, "model_factory": pipeline.config.model.factory},
    )
    def trained_model(
        context: AssetExecutionContext, training_data: PreparedRun, iceberg: IcebergResource, mlflow: MlflowResource
    ) -> MaterializeResult:
        settings = combined_settings(iceberg, mlflow)
        with user_errors_as_failures():
            result = train_prepared(settings, training_data.in_dagster_run(context.run_id), progress_bar=False)
        pinned = result.pinned
        metrics = {name: round(value, 4) for name, value in result.final_metrics.items()}
        return MaterializeResult(
            metadata={
                "mlflow_run_id": result.run_id,
                "mlflow_experiment_id": result.experiment_id,
                **mlflow_links(settings.mlflow_ui_address, result),
                "snapshot_id": str(pinned.snapshot_id),
                "table": pinned.table,
                "row_count": result.row_count,
                "world_size": result.world_size,
                **metrics,
                "learning_curves": MetadataValue.md(_curves_markdown(result)),
            }
        )

    return trained_model


def evaluation_asset(pipeline: Pipeline) -> AssetsDefinition:
    """Champion/challenger: scores the new model and the champion on the same held-out rows; promotes only a better one."""
    retrain, model_name = pipeline.config.retrain, pipeline.config.tracking.registered_model

    @asset(
        key=evaluation_key(pipeline),
        deps=[trained_model_key(pipeline)],
        group_name=pipeline.name,
        kinds={"mlflow"},
        code_version=code_version(pipeline),
        description=f"Scores the new {pipeline.name!r} model against the champion of {model_name!r} on the new snapshot's held-out rows ({retrain.champion_metric}, margin {retrain.champion_margin}).",
    )
    def evaluation(
        context: AssetExecutionContext, iceberg: IcebergResource, mlflow: MlflowResource
    ) -> MaterializeResult:
        own = trained_in_run(context.instance, pipeline, context.run_id)
        if own is None or not own.mlflow_run_id:
            raise Failure(
                description=f"this run trained no model to evaluate: materialize {trained_model_key(pipeline).to_user_string()} and"
                f" {evaluation_key(pipeline).to_user_string()} together (the job {pipeline.name}_train does); an evaluation scores only its own run's model"
            )
        run_id = own.mlflow_run_id
        settings = combined_settings(iceberg, mlflow)
        with user_errors_as_failures():
            verdict = champion_challenger(
                settings, run_id, str(model_name), retrain.champion_metric, retrain.champion_margin
            )
        return MaterializeResult(
            metadata={
                "model": verdict.model,
                "metric": verdict.metric,
                "challenger_version": verdict.challenger_version,
                "challenger_score": verdict.challenger_score,
                "champion_version": verdict.champion_version or "",
                "champion_score": verdict.champion_score if verdict.champion_score is not None else float("nan"),
                "decision": "promoted to champion" if verdict.promoted else "champion kept",
                "reason": verdict.reason,
                "mlflow_run_id": run_id,
                **model_version_link(settings.mlflow_ui_address, verdict.model, verdict.challenger_version),
            }
        )

    return evaluation


def predictions_asset(pipeline: Pipeline) -> AssetsDefinition:
    """The champion scores the rows of the scoring table appended since the last scored snapshot, into the predictions table."""
    model_name, section = str(pipeline.config.tracking.registered_model), pipeline.config.predict

    @asset(
        key=predictions_key(pipeline),
        deps=[table_key(pipeline.scoring_table), evaluation_key(pipeline)],
        group_name=pipeline.name,
        kinds={"iceberg", "pytorch"},
        code_version=code_version(pipeline),
        description=f"The champion of {model_name!r} scores new rows of {pipeline.scoring_table} into {pipeline.predictions_table}.",
        metadata={"pipeline": pipeline.name, "table": pipeline.predictions_table},
    )
    def predictions(
        context: AssetExecutionContext, config: ScoreConfig, iceberg: IcebergResource, mlflow: MlflowResource
    ) -> MaterializeResult:
        settings = combined_settings(iceberg, mlflow)
        model = (
            f"models:/{model_name}/{config.model_version}" if config.model_version else f"models:/{model_name}@champion"
        )
        request = PredictRequest(
            model=model,
            into=pipeline.predictions_table,
            table=pipeline.scoring_table,
            snapshot_id=parse_snapshot_id(config.snapshot_id) if config.snapshot_id else None,
            incremental=True,
            after_any_model=True,
            batch_rows=section.batch_rows,
            file_mb=section.file_mb,
            dagster_run_id=context.run_id,
        )
        with user_errors_as_failures():
            done = predict(settings, request)
        context.log.info(done.report())
        drift = done.drift
        return MaterializeResult(
            metadata={
                "rows_scored": done.rows,
                "model": model_name,
                "model_version": done.model.version or "",
                "model_run_id": done.model.run_id,
                "input_table": done.pinned.table,
                "input_snapshot_id": str(done.pinned.snapshot_id),
                "scored_since_snapshot_id": str(done.scored.since_snapshot_id or ""),
                "predictions_table": done.into,
                "predictions_snapshot_id": str(done.snapshot_id),
                "already_written": done.already,
                "prediction_drift_psi": round(drift, 4) if drift is not None else float("nan"),
                "mean_score": round(done.profile.mean, 6) if done.profile is not None else float("nan"),
                **model_version_link(settings.mlflow_ui_address, model_name, done.model.version or ""),
                "score_distribution": MetadataValue.md(_distribution_markdown(done)),
            }
        )

    return predictions


def _distribution_markdown(done: Predictions) -> str:
    """The scores' histogram beside the model's validation scores', as an inline PNG."""
    if done.profile is None:
        return ""
    png = score_distribution_png(done.profile, done.reference, f"{done.pinned.table}@{done.pinned.snapshot_id}")
    return f"![score distribution](data:image/png;base64,{base64.b64encode(png).decode()})"


PROFILE_SCHEMA = TableSchema(
    columns=[
        TableColumn("feature", "string"),
        TableColumn(
            "psi",
            "float",
            description="population stability index against the reference snapshot (the champion's, else the last model's)",
        ),
        TableColumn("mean", "float"),
        TableColumn("reference_mean", "float", description="the feature's mean in the reference snapshot"),
        TableColumn("nulls", "int"),
        TableColumn("nans", "int"),
        TableColumn(
            "top_categories", "string", description="a categorical feature's most frequent categories and rows"
        ),
        TableColumn(
            "unknown_share",
            "float",
            description="a categorical feature's share of rows outside the reference's top categories",
        ),
    ]
)


def _profile_table(quality: QualityReport) -> MetadataValue:
    """One row per feature (PSI against the reference, mean beside the reference's, nulls, NaNs), most drifted first."""
    order = sorted(quality.profiles, key=lambda name: -quality.drift.get(name, -1.0))
    records = []
    for name in order:
        profile, before = quality.profiles[name], quality.reference_profiles.get(name)
        psi = round(quality.drift[name], 4) if name in quality.drift else None
        categorical = profile.categorical
        reference_mean = round(before.mean, 6) if before is not None and not categorical else None
        records.append(
            TableRecord(
                {
                    "feature": name,
                    "psi": psi,
                    "mean": None if categorical else round(profile.mean, 6),
                    "reference_mean": reference_mean,
                    "nulls": profile.nulls,
                    "nans": profile.nans,
                    "top_categories": ", ".join(f"{value} ({rows})" for value, rows in profile.top())
                    if categorical
                    else "",
                    "unknown_share": round(profile.unknown_share, 4) if categorical else None,
                }
            )
        )
    return MetadataValue.table(records, schema=PROFILE_SCHEMA)


def mlflow_links(mlflow_ui: str | None, result: TrainResult) -> dict[str, MetadataValue]:
    """Clickable links to the run (and its logged model) in the MLflow UI, when its address is known."""
    if not mlflow_ui:
        return {}
    base = f"{mlflow_ui.rstrip('/')}/#/experiments/{result.experiment_id}"
    links = {"mlflow_run": MetadataValue.url(f"{base}/runs/{result.run_id}")}
    if result.model_id:
        links["mlflow_model"] = MetadataValue.url(f"{base}/models/{result.model_id}")
    return links


def model_version_link(mlflow_ui: str | None, model: str, version: str) -> dict[str, MetadataValue]:
    """A clickable link to the registered model version in the MLflow UI, when its address is known."""
    if not mlflow_ui:
        return {}
    return {"mlflow_model_version": MetadataValue.url(f"{mlflow_ui.rstrip('/')}/#/models/{model}/versions/{version}")}


def _curves_markdown(result: TrainResult) -> str:
    history = [m.as_dict() for m in result.history]
    png = learning_curves_png(history, f"{result.pinned.table}@{result.pinned.snapshot_id}")
    return f"![learning curves](data:image/png;base64,{base64.b64encode(png).decode()})"


def _table_schema(schema: pa.Schema) -> TableSchema:
    return TableSchema(columns=[TableColumn(name=f.name, type=str(f.type)) for f in schema])
