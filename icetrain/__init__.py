"""icetrain: train PyTorch models on pinned Apache Iceberg snapshots, with lineage in MLflow.

The Python API in a few names (imported lazily, so the CLI starts fast)::

    from icetrain import Settings, load_project, train
    pipeline = load_project().pipeline("digits")
    result = train(Settings.from_env(), pipeline.with_overrides(["data.ref=v1"]), pipeline=pipeline.name)
    result.run_id, result.pinned.snapshot_id
"""

from importlib import import_module
from typing import Any

_EXPORTS = {
    "Settings": "pipeline.settings",
    "PipelineConfig": "pipeline.config",
    "parse_config": "pipeline.config",
    "load_project": "pipeline.project",
    "Pipeline": "pipeline.project",
    "SnapshotRequest": "pipeline.specs",
    "ReadSpec": "pipeline.specs",
    "LoaderConfig": "pipeline.specs",
    "IcetrainError": "pipeline.errors",
    "open_catalog": "pipeline.catalog",
    "load_table": "pipeline.catalog",
    "append_arrow": "pipeline.ingest",
    "append_file": "pipeline.ingest",
    "ingest_digits": "pipeline.demo_data",
    "create_tag": "pipeline.refs",
    "resolve_snapshot": "pipeline.snapshots",
    "list_snapshots": "pipeline.snapshots",
    "PinnedSnapshot": "pipeline.snapshots",
    "open_loader": "pipeline.reading",
    "prepare_read": "pipeline.reading",
    "IcebergLoader": "pipeline.loader",
    "train": "training.train",
    "TrainResult": "training.train",
    "replay_config": "pipeline.lineage",
    "inspect_data": "pipeline.gate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'icetrain' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
