"""icetrain: train PyTorch models on pinned Apache Iceberg snapshots, with lineage in MLflow.

The Python API in a few names (imported lazily, so the CLI starts fast)::

    from icetrain import Settings, load_project, train
    pipeline = load_project().pipeline("digits")
    result = train(Settings.from_env(), pipeline.with_overrides(["data.ref=v1"]), pipeline=pipeline.name)
    result.run_id, result.pinned.snapshot_id

Or in two steps, as the CLI and Dagster do: ``prepared = prepare_run(settings, config,
RunOrigin(pipeline.name), gates="judge")`` pins and judges once (``prepared.raise_if_blocked()``
refuses what a gate blocks), then ``train_prepared(settings, prepared)`` trains it here or
under torchrun.
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Settings": "pipeline.config.settings",
    "PipelineConfig": "pipeline.config.tree",
    "parse_config": "pipeline.config.tree",
    "load_project": "pipeline.config.project",
    "Pipeline": "pipeline.config.project",
    "SnapshotRequest": "pipeline.data.specs",
    "ReadSpec": "pipeline.data.specs",
    "LoaderConfig": "pipeline.data.specs",
    "IcetrainError": "pipeline.errors",
    "open_catalog": "pipeline.lake.catalog",
    "load_table": "pipeline.lake.catalog",
    "append_arrow": "pipeline.lake.ingest",
    "append_file": "pipeline.lake.ingest",
    "ingest_digits": "pipeline.demo.digits",
    "create_tag": "pipeline.lake.refs",
    "resolve_snapshot": "pipeline.data.snapshots",
    "list_snapshots": "pipeline.data.snapshots",
    "PinnedSnapshot": "pipeline.data.snapshots",
    "open_loader": "pipeline.data.loading",
    "prepare_read": "pipeline.data.reading",
    "IcebergLoader": "pipeline.data.loader",
    "train": "training.train",
    "TrainResult": "training.train",
    "prepare_run": "training.prepare",
    "PreparedRun": "training.prepare",
    "RunOrigin": "training.prepare",
    "train_prepared": "training.launch",
    "replay_config": "pipeline.tracking.lineage",
    "inspect_data": "pipeline.data.gate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'icetrain' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
