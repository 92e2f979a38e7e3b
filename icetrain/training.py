"""``icetrain train`` and ``icetrain pipelines`` behind the argument parsing.

One process trains in this process; ``compute.nproc > 1`` launches torchrun, after this
process has pinned the snapshot and passed the data gate, so mistakes still end as one line
before any worker starts and every rank trains on the same snapshot id.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import UTC
from typing import Any

from pipeline.config.settings import Settings
from pipeline.config.tree import PipelineConfig


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


def run_training(settings: Settings, request: TrainRequest, *, debug: bool = False) -> dict[str, Any]:
    """Train as asked, here or under torchrun; returns the run's summary.

    Raises:
        IcetrainError: a user mistake (before any run is recorded), or a worker's error.
    """
    import logging

    logging.getLogger("icetrain").info("loading PyTorch and MLflow")
    from training.data import open_training_data, pin
    from training.gates import GATES_TAG, check_gates
    from training.launch import launch
    from training.liveness import check_tracking
    from training.models import resolve_factory
    from training.train import result_summary, resume_from, train

    if request.resume_run_id:
        config, pinned, resume, pipeline = resume_from(settings, request.resume_run_id)
        if config.compute.nproc > 1:
            return launch(
                settings,
                config,
                asdict(pinned),
                pipeline,
                resume_run_id=request.resume_run_id,
                launched_by="cli",
                debug=debug,
            )
        return result_summary(
            train(
                settings,
                config,
                pinned=pinned,
                pipeline=pipeline,
                resume=resume,
                progress_bar=request.progress,
                launched_by="cli",
            )
        )
    assert request.config is not None
    config = request.config
    tags = dict(request.tags or {})
    pinned = None
    if request.gates and request.pipeline:
        if request.skip_gates:
            tags[GATES_TAG] = "skipped"
        else:
            check_tracking(settings)
            pinned = pin(settings, config)
            logging.getLogger("icetrain").info(
                "judging snapshot %s with the pipeline's quality gates", pinned.snapshot_id
            )
            quality = check_gates(settings, config, request.pipeline, pinned)
            tags[GATES_TAG] = (
                f"passed against snapshot {quality.reference_snapshot}"
                if quality.reference_snapshot is not None
                else "passed (no reference yet)"
            )
    if config.compute.nproc == 1:
        return result_summary(
            train(
                settings,
                config,
                pinned=pinned,
                pipeline=request.pipeline,
                progress_bar=request.progress,
                launched_by="cli",
                tags=tags,
            )
        )
    check_tracking(settings)
    pinned = pinned or pin(settings, config)
    open_training_data(settings, config, pinned)
    resolve_factory(config.model.factory)
    return launch(settings, config, asdict(pinned), request.pipeline, launched_by="cli", tags=tags, debug=debug)


def report(summary: dict[str, Any]) -> int:
    """Print what a run trained on and where it is recorded."""
    processes = f", {summary['world_size']} processes" if summary["world_size"] > 1 else ""
    print(
        f"trained on {summary['table']} snapshot {summary['snapshot_id']} (asked by {summary['asked_by']}), {summary['row_count']} rows{processes}"
    )
    print("  " + "  ".join(f"{name} {value:.3f}" for name, value in summary["metrics"].items()))
    print(
        f"MLflow run {summary['run_id']} in experiment {summary.get('experiment') or '?'!r} (id {summary['experiment_id']})"
    )
    if summary.get("model_version"):
        print(f"registered model version {summary['model_version']}")
    return 0


def pipeline_rows(settings: Settings, config_path: str | None) -> list[tuple[str, ...]]:
    """A table of the declared pipelines: name, table, current snapshot, last run (empty when none are declared).

    Raises:
        ConfigError: the pipelines file is invalid.
    """
    from mlflow.tracking import MlflowClient

    from pipeline.config.project import load_project
    from pipeline.lake.catalog import open_catalog
    from pipeline.tracking.tags import PIPELINE_TAG

    project = load_project(config_path)
    if not project.pipelines:
        return []
    catalog = open_catalog(settings)
    client = MlflowClient(settings.tracking_uri)
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
