"""One training run on one pinned snapshot, recorded in MLflow.

Everything that can fail because of user input (table, snapshot, filter, columns, labels,
transform) is checked before the MLflow run starts, so a bad request leaves no run behind;
a failure during training ends the run as FAILED, never RUNNING.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import mlflow
import mlflow.pytorch
import torch
from mlflow.models import infer_signature
from torch.utils.data import TensorDataset

from pipeline.catalog import load_table, open_catalog
from pipeline.config import ReadSpec, Settings, SnapshotRequest, TrainConfig, as_params
from pipeline.errors import SnapshotNotFoundError
from pipeline.lineage import IcebergDatasetSource, IcebergSnapshotDataset, ensure_experiment, lineage_tags, register_sources
from pipeline.reading import TensorData, read_tensors
from pipeline.snapshots import PinnedSnapshot, resolve_snapshot
from pipeline.tensors import LabelVocabulary, declared_classes
from training.determinism import pick_device, seed_everything
from training.loop import EpochMetrics, fit, split_indices
from training.models import build_model

MODEL_ARTIFACT = "model"
CHECKPOINT_ARTIFACT = "checkpoint"


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced and which data it saw."""

    run_id: str
    experiment_id: str
    pinned: PinnedSnapshot
    row_count: int
    digest: str
    classes: tuple[object, ...]
    history: tuple[EpochMetrics, ...]

    @property
    def final_metrics(self) -> dict[str, float]:
        return self.history[-1].as_dict()


def train_on_snapshot(
    settings: Settings,
    target: SnapshotRequest | PinnedSnapshot,
    spec: ReadSpec = ReadSpec(),
    config: TrainConfig = TrainConfig(),
    *,
    dagster_run_id: str | None = None,
    run_name: str | None = None,
) -> TrainResult:
    """Resolve (or take) a pinned snapshot, read it, train, and record it all in MLflow.

    Args:
        target: a request to resolve now, or a snapshot an upstream step already pinned
            (Dagster's training-data asset); a pinned snapshot is used as is.
        dagster_run_id: recorded as a tag, linking the MLflow run to the Dagster run.

    Raises:
        IcetrainError: any user mistake, raised before an MLflow run is created.
    """
    catalog = open_catalog(settings)
    table = load_table(catalog, target.table)
    if isinstance(target, PinnedSnapshot):
        if table.snapshot_by_id(target.snapshot_id) is None:
            raise SnapshotNotFoundError(f"pinned snapshot {target.snapshot_id} of {target.table!r} no longer exists (expired?)")
        pinned = target
    else:
        pinned = resolve_snapshot(table, target, settings.catalog_name)
    data = read_tensors(table, pinned, spec)
    vocabulary = LabelVocabulary.from_values(data.labels, declared_classes(table.properties))
    labels = vocabulary.encode(data.labels)

    device = pick_device(config.device)
    generator = seed_everything(config.seed)
    train_rows, val_rows = split_indices(data.num_rows, config.val_fraction, generator)
    model = build_model(config.model, data.layout.feature_shape, len(vocabulary.classes), data.features[train_rows])
    train_set = TensorDataset(data.features[train_rows], labels[train_rows])
    val_set = TensorDataset(data.features[val_rows], labels[val_rows]) if len(val_rows) else None

    experiment_id = ensure_experiment(settings)
    register_sources()
    tags = lineage_tags(pinned, spec, data.layout, row_count=data.num_rows, digest=data.digest, dagster_run_id=dagster_run_id)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        mlflow.log_params(
            {
                **as_params(spec, config),
                "data.snapshot_id": str(pinned.snapshot_id),
                "data.classes": ",".join(str(c) for c in vocabulary.classes),
                "data.train_rows": str(len(train_rows)),
                "data.val_rows": str(len(val_rows)),
                "model.class": type(model).__name__,
                "device": str(device),
            }
        )
        mlflow.log_input(_dataset(pinned, spec, data), context="training")
        history = fit(
            model,
            train_set,
            val_set,
            config,
            device,
            generator,
            on_epoch=lambda m: mlflow.log_metrics(m.as_dict(), step=m.epoch),
        )
        model.to("cpu").eval()
        _log_model(model, data.features[:4])
        _log_checkpoint(model, pinned, spec, config, vocabulary)
    return TrainResult(
        run_id=run.info.run_id,
        experiment_id=experiment_id,
        pinned=pinned,
        row_count=data.num_rows,
        digest=data.digest,
        classes=vocabulary.classes,
        history=tuple(history),
    )


def _dataset(pinned: PinnedSnapshot, spec: ReadSpec, data: TensorData) -> IcebergSnapshotDataset:
    source = IcebergDatasetSource(pinned.catalog, pinned.table, pinned.snapshot_id, spec.row_filter or "", spec.sql or "")
    return IcebergSnapshotDataset(
        source,
        name=f"{pinned.table}@{pinned.snapshot_id}",
        digest=data.digest,
        schema=data.schema,
        num_rows=data.num_rows,
    )


def _log_model(model: torch.nn.Module, example: torch.Tensor) -> None:
    """Log with the pickle format: the default pt2 format needs torch.export and is slow here."""
    with torch.no_grad():
        output = model(example)
    mlflow.pytorch.log_model(
        model,
        name=MODEL_ARTIFACT,
        serialization_format="pickle",
        signature=infer_signature(example.numpy(), output.numpy()),
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
    )


def _log_checkpoint(
    model: torch.nn.Module,
    pinned: PinnedSnapshot,
    spec: ReadSpec,
    config: TrainConfig,
    vocabulary: LabelVocabulary,
) -> None:
    """Save weights with the full config and the pinned snapshot, enough to train again on the same data."""
    checkpoint = {
        "model_state": model.state_dict(),
        "pinned": {**asdict(pinned), "snapshot_id": str(pinned.snapshot_id)},
        "read_spec": asdict(spec),
        "train_config": asdict(config),
        "classes": list(vocabulary.classes),
    }
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint.pt"
        torch.save(checkpoint, path)
        mlflow.log_artifact(str(path), artifact_path=CHECKPOINT_ARTIFACT)
