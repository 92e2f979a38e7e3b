"""``icetrain train`` and ``icetrain pipelines`` behind the argument parsing.

The request becomes one ``PreparedRun`` (``training.prepare``: pinned, judged by the data gate
and, for a pipeline that declares them, the quality gates); one process trains it here,
``compute.nproc > 1`` hands it to torchrun, so mistakes still end as one line before any
worker starts and every rank trains on the same snapshot id.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from typing import TYPE_CHECKING, Any

from pipeline.config.settings import Settings
from pipeline.config.tree import PipelineConfig

if TYPE_CHECKING:
    from pipeline.data.encoding import Encoding
    from training.train import TrainResult


@dataclass(frozen=True)
class TrainRequest:
    """A config to train (from a pipeline, flags, or a replayed run), or a run to resume."""

    config: PipelineConfig | None = None
    pipeline: str | None = None
    resume_run_id: str | None = None
    progress: bool = True
    tags: dict[str, str] | None = None
    gates: bool = False
    skip_gates: bool = False
    encoding: Encoding | None = None  # a replayed run's recorded categories


def run_training(settings: Settings, request: TrainRequest, *, debug: bool = False) -> TrainResult:
    """Prepare the run (pin, judge: ``training.prepare``) and train it, here or under torchrun.

    Raises:
        IcetrainError: a user mistake or a blocking gate (before any run is recorded), or a worker's error.
    """
    import logging

    logging.getLogger("icetrain").info("loading PyTorch and MLflow")
    from training.launch import train_prepared
    from training.prepare import RunOrigin, prepare_run
    from training.train import resume_from

    if request.resume_run_id:
        prepared, resume = resume_from(settings, request.resume_run_id)
        return train_prepared(settings, prepared, resume=resume, progress_bar=request.progress, debug=debug)
    assert request.config is not None
    gates = "off"
    if request.gates and request.pipeline:
        gates = "skip" if request.skip_gates else "judge"
    origin = RunOrigin(request.pipeline, "cli", tags=dict(request.tags or {}))
    prepared = prepare_run(settings, request.config, origin, gates=gates, encoding=request.encoding)
    if prepared.config.compute.nproc > 1:
        from training.models import resolve_factory

        resolve_factory(prepared.config.model.factory)  # a mistake here is one line, before any worker starts
    return train_prepared(settings, prepared, progress_bar=request.progress, debug=debug)


def report(result: TrainResult) -> int:
    """Print what a run trained on and where it is recorded."""
    pinned = result.pinned
    processes = f", {result.world_size} processes" if result.world_size > 1 else ""
    print(
        f"trained on {pinned.table} snapshot {pinned.snapshot_id} (asked by {pinned.asked_by}), {result.row_count} rows{processes}"
    )
    print("  " + "  ".join(f"{name} {value:.3f}" for name, value in result.final_metrics.items()))
    print(f"MLflow run {result.run_id} in experiment {result.experiment or '?'!r} (id {result.experiment_id})")
    if result.model_version:
        print(f"registered model version {result.model_version}")
    return 0


def pipeline_rows(settings: Settings, config_path: str | None) -> list[tuple[str, ...]]:
    """A table of the declared pipelines: name, table, current snapshot, last run (empty when none are declared).

    Raises:
        ConfigError: the pipelines file is invalid.
    """

    from pipeline.config.project import load_project
    from pipeline.lake.catalog import open_catalog
    from pipeline.tracking.client import tracking_client
    from pipeline.tracking.tags import PIPELINE_TAG

    project = load_project(config_path)
    if not project.pipelines:
        return []
    catalog = open_catalog(settings)
    client = tracking_client(settings)
    experiments = [e.experiment_id for e in client.search_experiments()]
    rows = [("pipeline", "table", "current snapshot", "last run", "status", "started (UTC)")]
    for pipeline in project.pipelines.values():
        snapshot = _current_snapshot(catalog, pipeline.table)
        runs = (
            client.search_runs(
                experiments,
                f"tags.`{PIPELINE_TAG}` = '{pipeline.name}'",
                max_results=1,
                order_by=["attributes.start_time DESC"],
            )
            if experiments
            else []
        )
        last = runs[0] if runs else None
        started = _utc(last.info.start_time) if last else ""
        rows.append(
            (
                pipeline.name,
                pipeline.table,
                snapshot,
                last.info.run_id if last else "never trained",
                last.info.status if last else "",
                started,
            )
        )
    return rows


def _current_snapshot(catalog: Any, table: str) -> str:
    if not catalog.table_exists(table):
        return "no table yet"
    current = catalog.load_table(table).current_snapshot()
    return str(current.snapshot_id) if current else "no snapshots"


def _utc(millis: int) -> str:
    from datetime import datetime

    return datetime.fromtimestamp(millis / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S")


__all__ = ["TrainRequest", "pipeline_rows", "report", "run_training"]
