"""Run config of a pipeline's training-data asset: which snapshot, and overrides of the config tree.

Everything else comes from the pipeline's declaration; ``overrides`` takes the same
``section.key=value`` strings as ``icetrain train --set``.
"""

from dagster import Config
from pydantic import Field

from pipeline.config.tree import PipelineConfig, apply_overrides, parse_config


class PinConfig(Config):
    """Give at most one of snapshot_id, ref, as_of (none: the table's current snapshot)."""

    snapshot_id: str | None = Field(default=None, description="Snapshot id, as a string (ids exceed 2^53).")
    ref: str | None = Field(default=None, description="Tag or branch name.")
    as_of: str | None = Field(default=None, description="ISO 8601 time or epoch milliseconds.")
    overrides: list[str] = Field(
        default_factory=list, description="Config overrides, e.g. ['optim.epochs=3', 'data.filter=label < 5']."
    )

    def apply(self, config: PipelineConfig) -> PipelineConfig:
        """The pipeline's config with this run's snapshot choice and overrides.

        Raises:
            ConfigError: a bad key or value, named by its key path.
        """
        tree = apply_overrides(config.model_dump(), self.overrides)
        chosen = {"snapshot_id": self.snapshot_id, "ref": self.ref, "as_of": self.as_of}
        if any(value for value in chosen.values()):
            tree["data"].update({key: value or None for key, value in chosen.items()})
        return parse_config(tree)


class ScoreConfig(Config):
    """Which input snapshot and which model version the predictions asset scores (none: the current snapshot, the champion now)."""

    snapshot_id: str | None = Field(default=None, description="Input snapshot id, as a string (ids exceed 2^53).")
    model_version: str | None = Field(default=None, description="Registered model version; default: the champion.")
