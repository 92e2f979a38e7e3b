"""The quality gates before ``icetrain train --pipeline NAME``: the same rules and reference as Dagster's blocking checks.

``pipeline.data.quality.judge`` is the one set of rules and ``pipeline.tracking.reference`` the one way to
find the reference snapshot (the champion's, else the pipeline's last finished run's), so
the CLI refuses exactly the data the Dagster job would block, in one line naming the gate,
the feature and the number.
"""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from pipeline.config.settings import Settings
from pipeline.config.tree import PipelineConfig
from pipeline.data.quality import QualityReport, assess_snapshot, judge
from pipeline.data.snapshots import PinnedSnapshot
from pipeline.errors import GateError
from pipeline.lake.catalog import load_table, open_catalog
from pipeline.tracking.reference import reference_snapshot

GATES_TAG = "icetrain.gates"


def check_gates(settings: Settings, config: PipelineConfig, pipeline: str, pinned: PinnedSnapshot) -> QualityReport:
    """Judge the pinned snapshot with the schema contract, completeness and drift gates.

    Raises:
        GateError: the first gate that failed, with its reason (a broken contract fails first).
        TrackingError: MLflow could not be asked for the reference.
    """
    table = load_table(open_catalog(settings), pinned.table)
    client = MlflowClient(settings.tracking_uri)
    reference = reference_snapshot(
        client, settings.catalog_name, table, pinned.table, pipeline, config.tracking.registered_model
    )
    quality, _ = assess_snapshot(table, pinned, config.data.read_spec(), reference)
    failed = [gate for gate in judge(quality, config.gates.max_psi, config.gates.max_null_fraction) if not gate.passed]
    if failed:
        gate = failed[0]
        against = (
            f" against reference snapshot {quality.reference_snapshot}"
            if quality.reference_snapshot is not None
            else ""
        )
        raise GateError(
            f"gate {gate.name} failed for snapshot {pinned.snapshot_id} of {pinned.table!r}{against}: {gate.description}; --skip-gates trains anyway"
        )
    return quality


__all__ = ["GATES_TAG", "check_gates"]
