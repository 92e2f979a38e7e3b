"""All of icetrain's configuration, as a few frozen dataclasses.

The CLI, the Python API and the Dagster ``Config`` classes all map into these; the full
config is logged to MLflow and saved in every checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path

from pipeline.errors import ConfigError

HOME_ENV = "ICETRAIN_HOME"
CATALOG_ENV = "ICETRAIN_CATALOG"
EXPERIMENT_ENV = "ICETRAIN_EXPERIMENT"
MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"

DEFAULT_HOME = ".icetrain"
DEFAULT_CATALOG = "icetrain"
DEFAULT_EXPERIMENT = "icetrain"


@dataclass(frozen=True)
class Settings:
    """Where data, catalog and runs live.

    With nothing configured, everything sits under one project data directory: an embedded
    SQLite Iceberg catalog, a local warehouse folder and an MLflow SQLite store.

    Attributes:
        home: the project data directory (absolute).
        catalog_name: a catalog defined in pyiceberg's own configuration (``.pyiceberg.yaml``
            or ``PYICEBERG_CATALOG__<NAME>__...``); if none is defined under this name, the
            embedded SQLite catalog under ``home`` is used.
        mlflow_tracking_uri: an explicit MLflow tracking URI, or None for the SQLite store
            under ``home``.
        experiment: the MLflow experiment that training runs go to.
    """

    home: Path
    catalog_name: str = DEFAULT_CATALOG
    mlflow_tracking_uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        home: str | Path | None = None,
        catalog_name: str | None = None,
        mlflow_tracking_uri: str | None = None,
        experiment: str | None = None,
    ) -> Settings:
        """Build settings from explicit values, falling back to the environment, then defaults."""
        env = os.environ if environ is None else environ
        chosen_home = Path(home or env.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()
        return cls(
            home=chosen_home,
            catalog_name=catalog_name or env.get(CATALOG_ENV) or DEFAULT_CATALOG,
            mlflow_tracking_uri=mlflow_tracking_uri or env.get(MLFLOW_URI_ENV) or None,
            experiment=experiment or env.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT,
        )

    @property
    def warehouse(self) -> Path:
        """The embedded catalog's warehouse folder."""
        return self.home / "warehouse"

    @property
    def catalog_db(self) -> Path:
        """The embedded catalog's SQLite file."""
        return self.home / "catalog.db"

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI in force."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def artifact_root(self) -> Path | None:
        """Where the embedded MLflow store keeps artifacts; None when a tracking URI is given."""
        return None if self.mlflow_tracking_uri else self.home / "mlartifacts"


@dataclass(frozen=True)
class SnapshotRequest:
    """Which snapshot of a table to train on: at most one of id, ref (tag or branch), as-of.

    Nothing given means the table's current snapshot. Whatever is asked, it is resolved once
    to a snapshot id (see ``pipeline.snapshots.resolve_snapshot``) and only that id is used
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
        if not self.table or "." not in self.table:
            raise ConfigError(f"table must be named as 'namespace.table', got {self.table!r}")

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
    if stripped.isdigit():
        return datetime.fromtimestamp(int(stripped) / 1000, tz=timezone.utc)
    try:
        parsed = datetime.fromisoformat(stripped.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ConfigError(f"as-of time {text!r} is neither ISO 8601 (2026-11-21T10:00:00Z) nor epoch milliseconds") from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


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
    """

    label: str = "label"
    features: tuple[str, ...] | None = None
    row_filter: str | None = None
    sql: str | None = None

    def __post_init__(self) -> None:
        if self.features is not None and self.label in self.features:
            raise ConfigError(f"label column {self.label!r} cannot also be a feature")


@dataclass(frozen=True)
class LoaderConfig:
    """How a pinned snapshot is streamed into batches.

    What to iterate:
        split: 'all', 'train' or 'val'; rows are assigned by a hash of (data file, position),
            so a row keeps its split across snapshots, workers and ranks.
        val_fraction, split_seed: the share of rows in 'val', and the hash seed.
    How:
        batch_size: rows per batch. drop_last: drop each rank's final short batch.
        num_workers: DataLoader worker processes that decode row groups (0: decode in this
            process with ``decode_threads`` threads). Never changes the order of rows.
        rank, world_size: this process's share; None reads torch.distributed (or 1 process).
    Shuffling and determinism:
        shuffle: permute row groups per epoch from (seed, epoch), then rows within blocks of
            ``block_rows`` (the shuffle buffer: peak memory is about this many rows, plus the
            row groups being decoded). None sizes blocks to ``buffer_mb`` of tensors.
        seed: same snapshot + seed + epoch gives the same order, on any number of workers.
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

    def __post_init__(self) -> None:
        if self.batch_size < 1 or (self.block_rows is not None and self.block_rows < 1) or self.buffer_mb < 1:
            raise ConfigError(f"batch size, block rows and buffer size must be positive, got {self.batch_size}, {self.block_rows}, {self.buffer_mb}")
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


@dataclass(frozen=True)
class TrainConfig:
    """How to train: model, optimisation and the deterministic split.

    Attributes:
        model: 'cnn' for image features, 'mlp' for tabular, 'auto' to pick by feature shape.
        val_fraction: share of rows held out for validation, chosen by a seeded permutation.
        device: 'auto' (CUDA when present, else CPU), 'cpu' or 'cuda'.
    """

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0
    val_fraction: float = 0.2
    model: str = "auto"
    device: str = "auto"
    num_workers: int = 0
    block_rows: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be positive, got {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(f"validation fraction must be in [0, 1), got {self.val_fraction}")
        if self.model not in ("auto", "cnn", "mlp"):
            raise ConfigError(f"model must be one of auto, cnn, mlp; got {self.model!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be one of auto, cpu, cuda; got {self.device!r}")


def as_params(*configs: object) -> dict[str, str]:
    """Flatten config dataclasses into MLflow-style string params, prefixed by class."""
    params: dict[str, str] = {}
    for config in configs:
        prefix = type(config).__name__.removesuffix("Config").removesuffix("Spec").lower()
        for key, value in asdict(config).items():  # type: ignore[call-overload]
            if value is not None:
                params[f"{prefix}.{key}"] = ",".join(value) if isinstance(value, tuple) else str(value)
    return params


def from_params(cls: type, params: dict[str, str]) -> object:
    """Rebuild a config dataclass from the params ``as_params`` logged (absent params keep their defaults)."""
    prefix = cls.__name__.removesuffix("Config").removesuffix("Spec").lower()
    values: dict[str, object] = {}
    for field in fields(cls):
        text = params.get(f"{prefix}.{field.name}")
        if text is not None:
            values[field.name] = _parse(str(field.type), text)
    return cls(**values)


def _parse(annotation: str, text: str) -> object:
    if annotation.startswith("tuple"):
        return tuple(text.split(",")) if text else ()
    if annotation.startswith("bool"):
        return text == "True"
    if annotation.startswith("int"):
        return int(text)
    if annotation.startswith("float"):
        return float(text)
    return text


__all__ = [
    "ReadSpec",
    "Settings",
    "SnapshotRequest",
    "TrainConfig",
    "as_params",
    "from_params",
    "parse_as_of",
    "parse_snapshot_id",
]
