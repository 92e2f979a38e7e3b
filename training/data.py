"""The data side of a training run: pin the snapshot once, pass the gate, open the loaders.

Everything here happens before an MLflow run exists, so a user mistake leaves nothing behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from pipeline.config.settings import Settings
from pipeline.config.tree import PipelineConfig
from pipeline.data.gate import DataReport, inspect_data
from pipeline.data.loader import IcebergLoader
from pipeline.data.loading import open_loader
from pipeline.data.reading import PreparedRead, prepare_read
from pipeline.data.snapshots import PinnedSnapshot, resolve_snapshot
from pipeline.data.tensors import TensorLayout
from pipeline.errors import SnapshotNotFoundError
from pipeline.lake.catalog import load_table, open_catalog

VAL_BATCH_ROWS = 1024
log = logging.getLogger("icetrain")


@dataclass(frozen=True)
class TrainingData:
    """The pinned read, its gate report, a shuffled train loader and (with a validation split) an ordered one."""

    read: PreparedRead
    report: DataReport
    train: IcebergLoader
    val: IcebergLoader | None

    @property
    def pinned(self) -> PinnedSnapshot:
        return self.read.plan.pinned

    @property
    def layout(self) -> TensorLayout:
        return self.read.layout

    @property
    def classes(self) -> tuple[object, ...]:
        return self.train.vocabulary.classes

    @property
    def row_count(self) -> int:
        return self.train.profile.total_rows + (self.val.profile.total_rows if self.val else 0)

    @property
    def digest(self) -> str:
        return self.train.plan_digest


def pin(settings: Settings, config: PipelineConfig, pinned: PinnedSnapshot | None = None) -> PinnedSnapshot:
    """Resolve the config's snapshot request once, or check that an already pinned snapshot still exists.

    Raises:
        TableNotFoundError, SnapshotNotFoundError, EmptyDataError, ConfigError: as the request says.
    """
    table = load_table(open_catalog(settings), pinned.table if pinned else config.data.request().table)
    if pinned is None:
        return resolve_snapshot(table, config.data.request(), settings.catalog_name)
    if table.snapshot_by_id(pinned.snapshot_id) is None:
        raise SnapshotNotFoundError(
            f"pinned snapshot {pinned.snapshot_id} of {pinned.table!r} no longer exists (expired?)"
        )
    return pinned


def open_training_data(settings: Settings, config: PipelineConfig, pinned: PinnedSnapshot) -> TrainingData:
    """Plan the read, judge the rows with the data gate, and open the loaders.

    Raises:
        EmptyDataError, LabelError, FilterError, ColumnError, TransformError: the data or the
            config's data section does not fit the snapshot (before any run is recorded).
    """
    table = load_table(open_catalog(settings), pinned.table)
    read = prepare_read(table, pinned, config.data.read_spec())
    if config.data.val_fraction > 0 and not read.plan.split_key and config.data.split_by == "auto":
        log.warning(
            "table %s has no identifier fields, so rows are split into train and validation by data file and position: "
            "a later rewrite of a file (delete, overwrite, compaction) re-draws its rows' split. Declare identifier fields to keep splits stable.",
            pinned.table,
        )
    report, _ = inspect_data(
        read, min_rows=config.data.min_rows, count_classes=config.optim.class_weights == "balanced"
    )
    report.raise_if_failed()
    split = config.data.val_fraction > 0
    train = open_loader(table, pinned, read.spec, config.loader_config("train" if split else "all"), prepared=read)
    val = None
    if split:
        val_config = config.loader_config(
            "val", shuffle=False, batch_size=max(config.loader.batch_size, VAL_BATCH_ROWS)
        )
        val = open_loader(table, pinned, read.spec, val_config, prepared=read)
    return TrainingData(read, report, train, val)


def feature_sample(loader: IcebergLoader, rows: int = 4096) -> torch.Tensor:
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


__all__ = ["TrainingData", "feature_sample", "open_training_data", "pin"]
