"""The data side of a training run: the loaders over a prepared run's pinned, judged snapshot.

Everything here happens before an MLflow run exists, so a user mistake leaves nothing behind.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from pipeline.data.gate import DataReport
from pipeline.data.loader import IcebergLoader
from pipeline.data.loading import open_loader
from pipeline.data.reading import PreparedRead
from pipeline.data.snapshots import PinnedSnapshot
from pipeline.data.tensors import TensorLayout
from training.prepare import PreparedRun

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


def open_training_data(prepared: PreparedRun) -> TrainingData:
    """Open the train/val loaders of a prepared run (its table loaded and read planned: ``training.prepare.attached``).

    The data was judged when the run was prepared; the loaders check their own split.

    Raises:
        EmptyDataError, LabelError: a split has no rows, or a label the run cannot use.
    """
    table, read, report, config, pinned = (
        prepared.table,
        prepared.read,
        prepared.report,
        prepared.config,
        prepared.pinned,
    )
    assert table is not None and read is not None and report is not None, "attach and judge the prepared run first"
    if config.data.val_fraction > 0 and not read.plan.split_key and config.data.split_by == "auto":
        log.warning(
            "table %s has no identifier fields, so rows are split into train and validation by data file and position: "
            "a later rewrite of a file (delete, overwrite, compaction) re-draws its rows' split. Declare identifier fields to keep splits stable.",
            pinned.table,
        )
    split = config.data.val_fraction > 0
    train = open_loader(table, pinned, read.spec, config.loader_config("train" if split else "all"), prepared=read)
    return TrainingData(read, report, train, validation_loader(prepared) if split else None)


def validation_loader(prepared: PreparedRun) -> IcebergLoader:
    """The ordered loader of a prepared run's validation rows (as its read encodes them)."""
    table, read, config = prepared.table, prepared.read, prepared.config
    assert table is not None and read is not None, "attach the prepared run first"
    val_config = config.loader_config("val", shuffle=False, batch_size=max(config.loader.batch_size, VAL_BATCH_ROWS))
    return open_loader(table, prepared.pinned, read.spec, val_config, prepared=read)


def feature_sample(loader: IcebergLoader, rows: int = 4096) -> tuple[torch.Tensor, ...]:
    """The model's inputs for the first rows of the loader's epoch 0 (the features, or the
    numeric features and the categories), without moving its position (for input statistics)."""
    state = loader.state_dict()
    loader.set_epoch(0)
    taken: list[tuple[torch.Tensor, ...]] = []
    for *inputs, _ in loader:
        taken.append(tuple(inputs))
        if sum(len(t[0]) for t in taken) >= rows:
            break
    loader.load_state_dict(state)
    return tuple(torch.cat(parts)[:rows] for parts in zip(*taken, strict=True))


__all__ = ["TrainingData", "feature_sample", "open_training_data", "validation_loader"]
