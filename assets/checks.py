"""The blocking data gates on a pipeline's pinned training data (``pipeline.data.gate``'s and ``pipeline.data.quality``'s rules).

A failed gate records its evaluation, then fails its step with ``dagster.Failure`` and the
gate's one-line reason, so the run page shows why rather than Dagster's generic
``DagsterAssetCheckFailedError``; training downstream does not run either way.
"""

from collections.abc import Iterator

from dagster import (
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    Failure,
    MetadataValue,
    asset_check,
)

from assets.keys import training_data_key
from pipeline.config.project import Pipeline
from pipeline.data.quality import GateResult, QualityReport
from training.prepare import PreparedRun


def trainable_check(pipeline: Pipeline) -> AssetChecksDefinition:
    """Rows present (at least data.min_rows), no null or NaN labels, labels within the declared classes.

    Errors fail the check and block training; warnings (a declared class with no rows) are
    reported with severity WARN and do not block.
    """

    @asset_check(
        asset=training_data_key(pipeline),
        name="is_trainable",
        blocking=True,
        description=trainable_check.__doc__.splitlines()[0],
    )
    def is_trainable(training_data: PreparedRun) -> Iterator[AssetCheckResult]:
        report = training_data.report
        if report is None:
            yield from judged(
                "is_trainable",
                AssetCheckResult(
                    passed=False,
                    severity=AssetCheckSeverity.ERROR,
                    description="not checked: the schema contract failed",
                ),
            )
            return
        yield from judged(
            "is_trainable",
            AssetCheckResult(
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
            ),
        )

    return is_trainable


def judged(name: str, result: AssetCheckResult) -> Iterator[AssetCheckResult]:
    """Record the evaluation; a failed blocking gate (ERROR) then fails its step with the one-line reason."""
    yield result
    if not result.passed and result.severity == AssetCheckSeverity.ERROR:
        raise Failure(description=f"gate {name} failed: {result.description}")


def quality_checks(pipeline: Pipeline) -> list[AssetChecksDefinition]:
    """The schema contract, feature completeness and drift gates (``pipeline.data.quality``), all blocking."""
    key = training_data_key(pipeline)

    def verdict(prepared: PreparedRun, name: str) -> tuple[QualityReport, GateResult]:
        """The prepared run's findings and one gate's verdict (the rules ``icetrain train`` applies too)."""
        assert prepared.quality is not None, "Dagster's training data is always judged"
        return prepared.quality, next(g for g in prepared.verdicts() if g.name == name)

    @asset_check(
        asset=key,
        name="schema_contract",
        blocking=True,
        description="Declared features keep their field ids, names and types since the reference snapshot.",
    )
    def schema_contract(training_data: PreparedRun) -> Iterator[AssetCheckResult]:
        quality, gate = verdict(training_data, "schema_contract")
        yield from judged(
            gate.name,
            AssetCheckResult(
                passed=gate.passed,
                description=gate.description,
                metadata={
                    "reference_snapshot_id": str(quality.reference_snapshot or ""),
                    "changes": "; ".join(quality.contract),
                },
            ),
        )

    @asset_check(
        asset=key,
        name="features_complete",
        blocking=True,
        description="No feature has more null or NaN values than gates.max_null_fraction.",
    )
    def features_complete(training_data: PreparedRun) -> Iterator[AssetCheckResult]:
        quality, gate = verdict(training_data, "features_complete")
        yield from judged(
            gate.name,
            AssetCheckResult(
                passed=gate.passed,
                description=gate.description,
                metadata={
                    "nulls": MetadataValue.json({n: p.nulls for n, p in quality.profiles.items()}),
                    "nans": MetadataValue.json({n: p.nans for n, p in quality.profiles.items()}),
                    "worst_null_fraction": MetadataValue.float(quality.worst_null_fraction(training_data.imputed)),
                    "max_null_fraction": MetadataValue.text(f"{training_data.config.gates.max_null_fraction:g}"),
                },
            ),
        )

    @asset_check(
        asset=key,
        name="no_drift",
        blocking=True,
        description="No feature's PSI against the reference (champion's) snapshot exceeds gates.max_psi.",
    )
    def no_drift(training_data: PreparedRun) -> Iterator[AssetCheckResult]:
        quality, gate = verdict(training_data, "no_drift")
        yield from judged(
            gate.name,
            AssetCheckResult(
                passed=gate.passed,
                description=gate.description,
                metadata={
                    "reference_snapshot_id": str(quality.reference_snapshot or ""),
                    "psi": MetadataValue.json(
                        {n: round(v, 4) for n, v in sorted(quality.drift.items(), key=lambda item: -item[1])}
                    ),
                    "worst_psi": MetadataValue.float(max(quality.drift.values(), default=0.0)),
                    "max_psi": MetadataValue.text(f"{training_data.config.gates.max_psi:g}"),
                },
            ),
        )

    return [schema_contract, features_complete, no_drift]
