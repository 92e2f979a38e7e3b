"""One training run on one pinned snapshot, recorded in MLflow.

Everything that can fail because of user input (table, snapshot, filter, columns, labels,
transform) is checked before the MLflow run starts, so a bad request leaves no run behind;
a failure during training ends the run as FAILED, never RUNNING.
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import mlflow
import mlflow.pytorch
import torch
from mlflow.models import infer_signature

from pipeline.catalog import load_table, open_catalog
from pipeline.config import LoaderConfig, ReadSpec, Settings, SnapshotRequest, TrainConfig, as_params
from pipeline.errors import SnapshotNotFoundError
from pipeline.lineage import IcebergDatasetSource, IcebergSnapshotDataset, ensure_experiment, lineage_tags, register_sources
from pipeline.loader import IcebergLoader
from pipeline.reading import PreparedRead, open_loader, prepare_read
from pipeline.snapshots import PinnedSnapshot, resolve_snapshot
from pipeline.tensors import LabelVocabulary
from training.determinism import pick_device, seed_everything
from training.loop import EpochMetrics, fit
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
    read = prepare_read(table, pinned, spec)
    train_loader, val_loader = _loaders(read, config)
    layout, vocabulary = train_loader.layout, train_loader.vocabulary
    row_count = train_loader.profile.total_rows + (val_loader.profile.total_rows if val_loader else 0)
    digest = train_loader.plan_digest

    device = pick_device(config.device)
    seed_everything(config.seed)
    sample = _feature_sample(train_loader)
    model = build_model(config.model, layout.feature_shape, len(vocabulary.classes), sample)

    experiment_id = ensure_experiment(settings)
    register_sources()
    tags = lineage_tags(pinned, spec, layout, row_count=row_count, digest=digest, dagster_run_id=dagster_run_id)
    with mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags) as run:
        mlflow.log_params(
            {
                **as_params(spec, config),
                "data.snapshot_id": str(pinned.snapshot_id),
                "data.classes": ",".join(str(c) for c in vocabulary.classes),
                "data.train_rows": str(train_loader.profile.total_rows),
                "data.val_rows": str(val_loader.profile.total_rows if val_loader else 0),
                "data.row_groups": str(len(read.plan.row_groups)),
                "model.class": type(model).__name__,
                **{f"loader.{key}": str(value) for key, value in train_loader.describe().items()},
                "device": str(device),
            }
        )
        mlflow.log_input(_dataset(read, row_count, digest), context="training")
        history = fit(
            model,
            train_loader,
            val_loader,
            config,
            device,
            on_epoch=lambda m: mlflow.log_metrics(m.as_dict(), step=m.epoch),
        )
        model.to("cpu").eval()
        _log_model(model, sample[:4])
        _log_checkpoint(model, pinned, spec, config, vocabulary)
    return TrainResult(
        run_id=run.info.run_id,
        experiment_id=experiment_id,
        pinned=pinned,
        row_count=row_count,
        digest=digest,
        classes=vocabulary.classes,
        history=tuple(history),
    )


def _loaders(read: PreparedRead, config: TrainConfig) -> tuple[IcebergLoader, IcebergLoader | None]:
    """A shuffled train loader and, with a validation fraction, an unshuffled one for the held-out rows."""
    table, pinned, spec = read.table, read.plan.pinned, read.spec
    train = LoaderConfig(
        batch_size=config.batch_size,
        shuffle=True,
        seed=config.seed,
        block_rows=config.block_rows,
        num_workers=config.num_workers,
        split="train" if config.val_fraction > 0 else "all",
        val_fraction=config.val_fraction,
        split_seed=config.seed,
    )
    train_loader = open_loader(table, pinned, spec, train, prepared=read)
    if config.val_fraction <= 0:
        return train_loader, None
    val = replace(train, split="val", shuffle=False, batch_size=max(config.batch_size, 1024))
    return train_loader, open_loader(table, pinned, spec, val, prepared=read)


def _feature_sample(loader: IcebergLoader, rows: int = 4096) -> torch.Tensor:
    """The first rows of the loader's epoch 0, without moving its position (for input statistics)."""
    state = loader.state_dict()
    loader.set_epoch(0)
    taken: list[torch.Tensor] = []
    for features, _ in loader:
        taken.append(features)
        if sum(len(t) for t in taken) >= rows:
            break
    loader.load_state_dict(state)
    return torch.cat(taken)[:rows]


def _dataset(read: PreparedRead, row_count: int, digest: str) -> IcebergSnapshotDataset:
    pinned, spec = read.plan.pinned, read.spec
    source = IcebergDatasetSource(pinned.catalog, pinned.table, pinned.snapshot_id, spec.row_filter or "", spec.sql or "")
    return IcebergSnapshotDataset(
        source,
        name=f"{pinned.table}@{pinned.snapshot_id}",
        digest=digest,
        schema=read.output_schema,
        num_rows=row_count,
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
