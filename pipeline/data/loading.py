"""Opening a loader on a pinned snapshot: plan the read, count (or learn while streaming), judge the rows with the data gate.

It sits above ``reading`` (plans and counts) and ``gate`` (the rules), which import nothing of it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pyarrow as pa
from pyiceberg.table import Table

from pipeline.data.gate import judge
from pipeline.data.loader import IcebergLoader
from pipeline.data.reading import PreparedRead, count_rows, declared_label_classes, label_vocabulary, prepare_read
from pipeline.data.rows import RowProfile
from pipeline.data.snapshots import PinnedSnapshot
from pipeline.data.specs import LoaderConfig, ReadSpec
from pipeline.data.tensors import LabelVocabulary, NumericTarget
from pipeline.data.vocabulary import learn_encoding


def open_loader(
    table: Table,
    pinned: PinnedSnapshot,
    spec: ReadSpec,
    config: LoaderConfig = LoaderConfig(),
    *,
    prepared: PreparedRead | None = None,
) -> IcebergLoader:
    """A loader of ``(features, targets)`` batches over the pinned snapshot (``(numeric, categories, targets)`` with categorical features).

    Categorical columns are encoded with ``prepared``'s layout's encoding; without one, their
    vocabularies are learned here from the training split (``pipeline.data.vocabulary``).

    Counts every row group's rows first (from metadata when it suffices, else reading only
    the label and filter columns, or running the SQL reduced to its WHERE and label), which
    makes ``len()``, the equal split across ranks and the label vocabulary exact; then judges
    the rows with the data gate (``pipeline.data.gate``). With a SQL transform whose targets need
    no count (declared classes, or a regression) counting waits until something needs it: a
    first epoch on one rank streams at once and learns the counts (nulls and labels outside
    the classes still fail, batch by batch). Targets are class indices for classification,
    float32 for regression.

    Raises:
        EmptyDataError: no rows are selected.
        LabelError: the label has nulls or a value outside the declared classes.
        FilterError, ColumnError, TransformError: the spec does not fit the snapshot.
    """
    read = prepared or prepare_read(table, pinned, spec)
    if read.layout.needs_encoding and read.layout.encoding is None:  # learned from the training rows
        training = replace(config, split="all" if config.split == "all" else "train")
        learned = learn_encoding(read, training, threads=config.decode_threads)
        read = replace(read, layout=read.layout.with_encoding(learned))
    source = read.source(config)

    def counted() -> RowProfile:
        profile = count_rows(source, read, threads=config.decode_threads)
        judge(profile, read, split=config.split, training=False).raise_if_failed()
        return profile

    known = _target_without_counting(read)
    if known is not None:
        return IcebergLoader(source, read.layout, known, counted, config)
    profile = counted()
    target = label_vocabulary(read, profile) if read.spec.task == "classification" else NumericTarget()
    return IcebergLoader(source, read.layout, target, profile, config)


def _target_without_counting(read: PreparedRead) -> LabelVocabulary | NumericTarget | None:
    """With a SQL transform, rows are only known by running it; when the targets need no count
    (a regression, or declared classes) the loader counts lazily, in its first epoch. None: count first.

    Without SQL counting is cheap (metadata, or the label column alone), so it stays up front.
    """
    if not read.spec.sql:
        return None
    if read.spec.task != "classification":
        return NumericTarget()
    declared = declared_label_classes(read)
    if declared is None:
        return None
    label_type = read.output_schema.field(read.layout.label).type
    example = np.zeros(0, dtype=np.int64 if pa.types.is_integer(label_type) else object)
    return LabelVocabulary.from_values(example, declared)


__all__ = ["open_loader"]
