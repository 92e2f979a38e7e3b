"""The blocking data gates on a pipeline's pinned training data (``pipeline.gate``'s and ``pipeline.quality``'s rules).

A failed gate records its evaluation, then fails its step with ``dagster.Failure`` and the
gate's one-line reason, so the run page shows why rather than Dagster's generic
``DagsterAssetCheckFailedError``; training downstream does not run either way.
"""

from collections.abc import Iterator

from dagster import AssetCheckResult, AssetCheckSeverity, AssetChecksDefinition, Failure, MetadataValue, asset_check

from assets.assets import TrainingData
from assets.keys import training_data_key
from pipeline.project import Pipeline


def trainable_check(pipeline: Pipeline) -> AssetChecksDefinition:
    """Rows present (at least data.min_rows), no null or NaN labels, labels within the declared classes.

    Errors fail the check and block training; warnings (a declared class with no rows) are
    reported with severity WARN and do not block.
    """

    @asset_check(asset=training_data_key(pipeline), name="is_trainable", blocking=True, description=trainable_check.__doc__.splitlines()[0])
    def is_trainable(training_data: TrainingData) -> Iterator[AssetCheckResult]:
        report = training_data.report
        if report is None:
            yield from judged("is_trainable", AssetCheckResult(passed=False, severity=AssetCheckSeverity.ERROR, description="not checked: the schema contract failed"))
            return
        yield from judged("is_trainable", AssetCheckResult(
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
        ))

    return is_trainable


def judged(name: str, result: AssetCheckResult) -> Iterator[AssetCheckResult]:
    """Record the evaluation; a failed blocking gate (ERROR) then fails its step with the one-line reason."""
    yield result
    if not result.passed and result.severity == AssetCheckSeverity.ERROR:
        raise Failure(description=f"gate {name} failed: {result.description}")


def quality_checks(pipeline: Pipeline) -> list[AssetChecksDefinition]:
    """The schema contract, feature completeness and drift gates (``pipeline.quality``), all blocking."""
    key, gates = training_data_key(pipeline), pipeline.config.gates

    @asset_check(asset=key, name="schema_contract", blocking=True, description="Declared features keep their field ids, names and types since the reference snapshot.")
    def schema_contract(training_data: TrainingData) -> Iterator[AssetCheckResult]:
        quality = training_data.quality
        yield from judged("schema_contract", AssetCheckResult(
            passed=not quality.contract,
            description="; ".join(quality.contract) or ("no reference snapshot yet" if quality.reference_snapshot is None else "features unchanged"),
            metadata={"reference_snapshot_id": str(quality.reference_snapshot or ""), "changes": "; ".join(quality.contract)},
        ))

    @asset_check(asset=key, name="features_complete", blocking=True, description="No feature has more null or NaN values than gates.max_null_fraction.")
    def features_complete(training_data: TrainingData) -> Iterator[AssetCheckResult]:
        quality = training_data.quality
        incomplete = quality.incomplete(gates.max_null_fraction)
        yield from judged("features_complete", AssetCheckResult(
            passed=not incomplete and not quality.contract,
            description="; ".join(f"{name}: {share:.2%} null or NaN" for name, share in incomplete.items()) or "complete",
            metadata={
                "nulls": MetadataValue.json({n: p.nulls for n, p in quality.profiles.items()}),
                "nans": MetadataValue.json({n: p.nans for n, p in quality.profiles.items()}),
                "worst_null_fraction": MetadataValue.float(quality.worst_null_fraction()),
                "max_null_fraction": MetadataValue.text(f"{gates.max_null_fraction:g}"),
            },
        ))

    @asset_check(asset=key, name="no_drift", blocking=True, description="No feature's PSI against the reference (champion's) snapshot exceeds gates.max_psi.")
    def no_drift(training_data: TrainingData) -> Iterator[AssetCheckResult]:
        quality = training_data.quality
        drifted = quality.drifted(gates.max_psi)
        if quality.reference_snapshot is None:
            description = "no reference snapshot yet (no champion or trained model)"
        else:
            description = "; ".join(f"{name} PSI {value:.3f}" for name, value in drifted.items()) or f"largest PSI {max(quality.drift.values(), default=0.0):.3f}"
        yield from judged("no_drift", AssetCheckResult(
            passed=not drifted and not quality.contract,
            description=description,
            metadata={
                "reference_snapshot_id": str(quality.reference_snapshot or ""),
                "psi": MetadataValue.json({n: round(v, 4) for n, v in sorted(quality.drift.items(), key=lambda item: -item[1])}),
                "worst_psi": MetadataValue.float(max(quality.drift.values(), default=0.0)),
                "max_psi": MetadataValue.text(f"{gates.max_psi:g}"),
            },
        ))

    return [schema_contract, features_complete, no_drift]
