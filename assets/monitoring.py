"""A registered pipeline's ``NAME/monitoring`` asset: the champion's predictions and outcomes, judged by non-blocking checks."""

import base64

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetsDefinition,
    MaterializeResult,
    MetadataValue,
    TableColumn,
    TableRecord,
    TableSchema,
    asset,
)

from assets.assets import code_version, model_version_link
from assets.failures import user_errors_as_failures
from assets.keys import monitoring_key, predictions_key, table_key
from assets.resources import IcebergResource, MlflowResource, combined_settings
from pipeline.config.project import Pipeline
from training.monitor import Monitoring, MonitorRequest, monitor
from training.plots import monitoring_png

CHECKS = {
    "prediction_drift": "PSI of the newest window's scores against the scoring model's validation scores.",
    "input_drift": "PSI of each feature of the newest scored rows against the model's training snapshot.",
    "realized_performance": "The realized metric of windows with enough outcomes against the model's validation score.",
}
WINDOWS_SCHEMA = TableSchema(
    columns=[
        TableColumn("window", "string", description="input snapshot id, or the day scored"),
        TableColumn("model_version", "string"),
        TableColumn("champion", "bool"),
        TableColumn("predictions", "int"),
        TableColumn("coverage", "float", description="share of predictions with an outcome"),
        TableColumn(
            "realized", "float", description="the realized monitor.metric (once coverage reaches min_coverage)"
        ),
        TableColumn("validation", "float", description="the scoring model's validation value of the metric"),
        TableColumn("prediction_psi", "float"),
        TableColumn("degraded", "bool"),
        TableColumn("drifted", "bool"),
    ]
)


def monitoring_asset(pipeline: Pipeline) -> AssetsDefinition:
    """Judges every scoring window of the pipeline's predictions table; the numbers go to MLflow and to this asset's metadata."""
    section = pipeline.config.monitor
    outcomes = [table_key(section.outcomes)] if section.outcomes else []

    @asset(
        key=monitoring_key(pipeline),
        deps=[predictions_key(pipeline), *outcomes],
        check_specs=[
            AssetCheckSpec(name, asset=monitoring_key(pipeline), blocking=False, description=text)
            for name, text in CHECKS.items()
        ],
        group_name=pipeline.name,
        kinds={"iceberg", "mlflow"},
        code_version=code_version(pipeline),
        description=f"Prediction drift, input drift and realized {section.metric} of {pipeline.predictions_table}"
        f" against {section.outcomes or pipeline.scoring_table} per {section.window}.",
        metadata={"pipeline": pipeline.name, "predictions_table": pipeline.predictions_table},
    )
    def monitoring(context: AssetExecutionContext, iceberg: IcebergResource, mlflow: MlflowResource):
        settings = combined_settings(iceberg, mlflow)
        with user_errors_as_failures():
            found = monitor(settings, MonitorRequest.of(pipeline))
        context.log.info(found.report())
        return MaterializeResult(
            metadata=monitoring_metadata(found, settings.mlflow_ui_address),
            check_results=[
                AssetCheckResult(
                    check_name=check.name,
                    passed=check.passed,
                    description=check.text,
                    metadata=dict(check.numbers),
                )
                for check in found.checks
            ],
        )

    return monitoring


def monitoring_metadata(found: Monitoring, mlflow_ui: str | None) -> dict[str, object]:
    """What the materialization shows: the windows table, the series plot, the breaches (read by the degradation sensor)."""
    request, metric = found.request, found.request.section.metric
    records = [
        TableRecord(
            {
                "window": w.window.window,
                "model_version": w.version,
                "champion": w.champion,
                "predictions": w.window.predictions,
                "coverage": round(w.window.coverage, 4),
                "realized": round(w.value(metric), 4) if w.judged and w.value(metric) is not None else None,
                "validation": round(w.reference, 4) if w.reference is not None else None,
                "prediction_psi": round(w.prediction_psi, 4) if w.prediction_psi is not None else None,
                "degraded": w.degraded,
                "drifted": w.drifted,
            }
        )
        for w in found.windows
    ]
    metadata: dict[str, object] = {
        "predictions_table": request.predictions,
        "predictions_snapshot_id": str(found.predictions_snapshot_id or ""),
        "outcomes_table": request.outcomes,
        "outcomes_snapshot_id": str(found.outcomes_snapshot_id or ""),
        "champion_version": found.champion or "",
        "windows": MetadataValue.table(records, schema=WINDOWS_SCHEMA),
        "degraded_windows": MetadataValue.json([_breach(w, metric) for w in found.degraded]),
        "drifted_windows": MetadataValue.json([_breach(w, metric) for w in found.drifted]),
        "input_snapshot_id": found.input_window or "",
        "input_psi": MetadataValue.json({name: round(value, 4) for name, value in found.input_drift.items()}),
        "mlflow_metrics_recorded": found.recorded,
    }
    if found.windows:
        png = monitoring_png(
            [w.window.window for w in found.windows],
            [w.value(metric) if w.judged else None for w in found.windows],
            [w.reference for w in found.windows],
            [w.prediction_psi for w in found.windows],
            metric,
            request.section.max_prediction_psi,
            f"{request.predictions}: realized {metric} and prediction drift per window",
        )
        metadata["series"] = MetadataValue.md(f"![monitoring](data:image/png;base64,{base64.b64encode(png).decode()})")
    if found.champion:
        metadata.update(model_version_link(mlflow_ui, request.model, found.champion))
    return metadata


def _breach(judged, metric: str) -> dict[str, object]:
    return {
        "window": judged.window.window,
        "model_version": judged.version,
        f"realized_{metric}": judged.value(metric),
        f"validation_{metric}": judged.reference,
        "prediction_psi": judged.prediction_psi,
    }
