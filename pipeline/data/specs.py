"""The library's own request types: which snapshot, what to read from it, how to stream it.

The pipeline configuration (``pipeline.config.tree``) is what users write; these are the small
frozen values it maps onto for the data library, which knows nothing of pipelines.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from pipeline.errors import ConfigError
from pipeline.names import check_ref_name, check_table_name


@dataclass(frozen=True)
class SnapshotRequest:
    """Which snapshot of a table to train on: at most one of id, ref (tag or branch), as-of.

    Nothing given means the table's current snapshot. Whatever is asked, it is resolved once
    to a snapshot id (see ``pipeline.data.snapshots.resolve_snapshot``) and only that id is used
    downstream.
    """

    table: str
    snapshot_id: int | None = None
    ref: str | None = None
    as_of: datetime | None = None

    def __post_init__(self) -> None:
        given = [name for name in ("snapshot_id", "ref", "as_of") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ConfigError(f"ask for at most one of snapshot id, ref or as-of time; got {', '.join(given)}")
        check_table_name(self.table)
        if self.ref is not None:
            check_ref_name(self.ref, "ref")

    @property
    def kind(self) -> str:
        """How the snapshot was asked for: 'id', 'ref', 'as_of' or 'latest'."""
        if self.snapshot_id is not None:
            return "id"
        if self.ref is not None:
            return "ref"
        if self.as_of is not None:
            return "as_of"
        return "latest"


def parse_as_of(text: str) -> datetime:
    """Parse an ISO 8601 time or epoch milliseconds into an aware UTC datetime.

    Raises:
        ConfigError: the text is neither.
    """
    stripped = text.strip()
    try:
        if stripped.isdigit():
            return datetime.fromtimestamp(int(stripped) / 1000, tz=UTC)
        parsed = datetime.fromisoformat(stripped.replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError) as exc:
        raise ConfigError(
            f"as-of time {text!r} is neither ISO 8601 (2026-11-21T10:00:00Z) nor epoch milliseconds"
        ) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_snapshot_id(text: str | int) -> int:
    """Parse a snapshot id given as text (ids exceed 2^53, so they travel as strings).

    Raises:
        ConfigError: the text is not an integer.
    """
    try:
        return int(text)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"snapshot id must be an integer, got {text!r}") from exc


@dataclass(frozen=True)
class ReadSpec:
    """What to read from a pinned snapshot and how it becomes tensors.

    Attributes:
        label: the label column.
        features: feature columns; None means the table's image columns if it declares any,
            otherwise every numeric column but the label and the table's identifier fields.
        row_filter: a PyIceberg filter expression (``"label >= 3 and id < 100"``), pushed
            into the scan.
        sql: an optional DuckDB query over the pinned rows, visible as the table ``snapshot``.
            It runs on each row group separately, so it must be row-local (select, where,
            expressions, casts); an aggregate or ORDER BY sees one row group at a time.
        task: 'classification' (labels become class indices) or 'regression' (a float target).
        classes: the label's classes, overriding the table's ``icetrain.label.classes``.
        image_shape, image_max: declare the single feature column an image of raw bytes,
            overriding the table's ``icetrain.image.<column>.*`` properties.
        split_by: what identifies a row for the train/validation split: 'identifier' (the
            table's identifier fields), 'position' (data file and position) or 'auto'
            (identifier fields when the table has them).
        since_snapshot_id: read only the rows appended after this snapshot (incremental training).
        categorical: feature columns read as categories besides text ones (booleans, integer codes).
        impute: (column, strategy) pairs: fill a numeric feature's nulls with its training
            rows' 'mean', 'median' or 'zero'; the column '*' means every numeric feature.
        impute_indicator: add a feature ``<column>_missing`` (1.0 where a value was filled).
        time_parts: (column, parts) pairs: calendar parts of a date or timestamp feature
            ('year', 'month', 'day', 'dow', 'hour', 'minute') added as features.
    """

    label: str = "label"
    features: tuple[str, ...] | None = None
    row_filter: str | None = None
    sql: str | None = None
    task: str = "classification"
    classes: tuple[str, ...] | None = None
    image_shape: tuple[int, ...] | None = None
    image_max: float | None = None
    split_by: str = "auto"
    since_snapshot_id: int | None = None
    categorical: tuple[str, ...] = ()
    impute: tuple[tuple[str, str], ...] = ()
    impute_indicator: bool = False
    time_parts: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.features is not None and self.label in self.features:
            raise ConfigError(f"label column {self.label!r} cannot also be a feature")
        if self.image_shape is not None and (self.features is None or len(self.features) != 1):
            raise ConfigError("an image shape needs exactly one feature column, the image")


@dataclass(frozen=True)
class LoaderConfig:
    """How a pinned snapshot is streamed into batches.

    What to iterate:
        split: 'all', 'train' or 'val'; rows are assigned by a hash of (data file, position),
            so a row keeps its split across snapshots, workers and ranks.
        val_fraction, split_seed: the share of rows in 'val', and the hash seed.
    How:
        batch_size: rows per batch. drop_last: drop each rank's final short batch.
        num_workers: worker processes that decode row groups (0: decode in this
            process with ``decode_threads`` threads). Never changes the order of rows.
        rank, world_size: this process's share; None reads torch.distributed (or 1 process).
    Shuffling and determinism:
        shuffle: permute row groups per epoch from (seed, epoch), then rows within blocks of
            ``block_rows`` (the shuffle buffer: peak memory is about this many rows, plus the
            row groups being decoded). None sizes blocks to ``buffer_mb`` of tensors.
        seed: same snapshot + seed + epoch gives the same order, on any number of workers.
    Decoded cache (``pipeline.data.cache``):
        cache_mb: keep decoded row groups on local disk, up to this many megabytes in all
            (least recently used selections go first), so later epochs skip decoding; 0: off.
        cache_dir: where; None: ``$ICETRAIN_CACHE_DIR``, else ``~/.cache/icetrain/decoded``.
    """

    batch_size: int = 1024
    shuffle: bool = True
    seed: int = 0
    block_rows: int | None = None
    buffer_mb: int = 32
    num_workers: int = 0
    decode_threads: int = 2
    drop_last: bool = False
    split: str = "all"
    val_fraction: float = 0.0
    split_seed: int = 0
    rank: int | None = None
    world_size: int | None = None
    cache_mb: int = 4096
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or (self.block_rows is not None and self.block_rows < 1) or self.buffer_mb < 1:
            raise ConfigError(
                f"batch size, block rows and buffer size must be positive, got {self.batch_size}, {self.block_rows}, {self.buffer_mb}"
            )
        if self.cache_mb < 0:
            raise ConfigError(f"cache_mb must be >= 0 (0 turns the decoded cache off), got {self.cache_mb}")
        if self.num_workers < 0 or self.decode_threads < 1:
            raise ConfigError("num_workers must be >= 0 and decode_threads >= 1")
        if self.split not in ("all", "train", "val"):
            raise ConfigError(f"split must be all, train or val; got {self.split!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"validation fraction must be in [0, 1), got {self.val_fraction}")
        if (self.rank is None) != (self.world_size is None):
            raise ConfigError("give both rank and world_size, or neither")
        if self.world_size is not None and not 0 <= (self.rank or 0) < self.world_size:
            raise ConfigError(f"rank {self.rank} is outside world size {self.world_size}")
