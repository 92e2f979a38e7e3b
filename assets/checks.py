"""The blocking data gate on a pipeline's pinned training data (``pipeline.gate``'s rules)."""

from dagster import AssetCheckResult, AssetCheckSeverity, AssetChecksDefinition, MetadataValue, asset_check

from assets.assets import TrainingData, training_data_key
from pipeline.project import Pipeline


def trainable_check(pipeline: Pipeline) -> AssetChecksDefinition:
    """Rows present (at least data.min_rows), no null or NaN labels, labels within the declared classes.

    Errors fail the check and block training; warnings (a declared class with no rows) are
    reported with severity WARN and do not block.
    """

    @asset_check(asset=training_data_key(pipeline), name="is_trainable", blocking=True, description=trainable_check.__doc__.splitlines()[0])
    def is_trainable(training_data: TrainingData) -> AssetCheckResult:
        report = training_data.report
        return AssetCheckResult(
            passed=report.passed and not report.warnings,
            severity=AssetCheckSeverity.ERROR if report.errors else AssetCheckSeverity.WARN,
            description=report.describe(),
            metadata={
                "snapshot_id": str(report.snapshot_id),
                "row_count": report.row_count,
                "null_labels": report.null_labels,
                "nan_labels": report.nan_labels,
                "label_counts": MetadataValue.json(report.class_counts or {}),
                "declared_classes": ", ".join(report.declared_classes or ()),
                "errors": "; ".join(p.message for p in report.errors),
                "warnings": "; ".join(report.warnings),
            },
        )

    return is_trainable
