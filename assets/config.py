"""Run config for the assets, mapped onto icetrain's own config dataclasses."""


from dagster import Config
from pydantic import Field

from pipeline.config import ReadSpec, SnapshotRequest, TrainConfig, parse_as_of, parse_snapshot_id
from pipeline.demo_data import DIGITS_TABLE


class TrainingDataConfig(Config):
    """Which snapshot to pin and which rows to train on. Give at most one of snapshot_id, ref, as_of."""

    table: str = Field(default=DIGITS_TABLE, description="Iceberg table, 'namespace.table'.")
    snapshot_id: str | None = Field(default=None, description="Snapshot id, as a string (ids exceed 2^53).")
    ref: str | None = Field(default=None, description="Tag or branch name.")
    as_of: str | None = Field(default=None, description="ISO 8601 time or epoch milliseconds.")
    row_filter: str | None = Field(default=None, description="PyIceberg filter, e.g. 'label >= 3'.")
    features: list[str] | None = Field(default=None, description="Feature columns; default: image or numeric columns.")
    label: str = Field(default="label", description="Label column.")
    sql: str | None = Field(default=None, description="DuckDB query over the pinned rows, as table 'snapshot'.")

    def request(self) -> SnapshotRequest:
        return SnapshotRequest(
            table=self.table,
            snapshot_id=parse_snapshot_id(self.snapshot_id) if self.snapshot_id else None,
            ref=self.ref or None,
            as_of=parse_as_of(self.as_of) if self.as_of else None,
        )

    def read_spec(self) -> ReadSpec:
        return ReadSpec(
            label=self.label,
            features=tuple(self.features) if self.features else None,
            row_filter=self.row_filter or None,
            sql=self.sql or None,
        )


class ModelConfig(Config):
    """How to train the model."""

    epochs: int = 10
    batch_size: int = 64
    learning_rate: float = 3e-3
    seed: int = 0
    val_fraction: float = 0.2
    model: str = Field(default="auto", description="auto, cnn or mlp.")
    device: str = Field(default="auto", description="auto, cpu or cuda.")
    num_workers: int = Field(default=0, description="Processes decoding row groups; never changes the order.")

    def train_config(self) -> TrainConfig:
        """The same fields, named alike, as icetrain's own config; no progress bar inside Dagster."""
        return TrainConfig(**self.model_dump(), progress=False)
