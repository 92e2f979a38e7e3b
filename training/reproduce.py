"""Reproducing a run: train again from its id alone, then compare data, metrics and weights.

The new run reads the recorded snapshot with the recorded (resolved) config: the same rows,
label vocabulary, model factory, seed and settings. On CPU a reproduction is exact: the
same dataset digest, the same final metrics, and weights equal to the last bit.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.config.settings import Settings
from pipeline.errors import SnapshotNotFoundError
from pipeline.tracking.client import tracking_client
from pipeline.tracking.lineage import get_run, replay_config, replay_encoding
from pipeline.tracking.tags import PIPELINE_TAG, REPRODUCES_TAG, SNAPSHOT_ID_TAG, TABLE_TAG
from training import checkpoint
from training.launch import train_prepared
from training.prepare import RunOrigin, prepare_run

DIGEST_TAG = "icetrain.dataset_digest"
LEGACY_CHECKPOINT = "checkpoint/checkpoint.pt"


@dataclass(frozen=True)
class Reproduction:
    """How a new run compares with the run it reproduces."""

    original_run: str
    new_run: str
    digests: tuple[str, str]
    metrics: dict[str, tuple[float, float]] = field(default_factory=dict)
    max_weight_difference: float = math.inf
    weight_problem: str = ""

    @property
    def differences(self) -> list[str]:
        """What differs, one phrase each (empty when reproduced exactly)."""
        found = []
        if self.digests[0] != self.digests[1]:
            found.append(f"dataset digest {self.digests[1]} is not {self.digests[0]}")
        for name, (before, after) in self.metrics.items():
            if before != after:
                found.append(f"{name} {after!r} is not {before!r}")
        if self.weight_problem:
            found.append(self.weight_problem)
        elif self.max_weight_difference != 0:
            found.append(f"weights differ by up to {self.max_weight_difference:.3g}")
        return found

    @property
    def reproduced(self) -> bool:
        return not self.differences


def reproduce(settings: Settings, run_id: str, *, progress_bar: bool = True) -> Reproduction:
    """Train ``run_id`` again, tagged ``icetrain.reproduces``, and compare.

    Raises:
        RunNotFoundError: no such run, or not icetrain's.
        SnapshotNotFoundError: the run's snapshot was expired.
        ConfigError: the run's recorded config no longer validates.
    """
    original = get_run(settings, run_id)
    config = replay_config(settings, run_id)
    origin = RunOrigin(original.data.tags.get(PIPELINE_TAG), "reproduce", tags={REPRODUCES_TAG: run_id})
    try:
        prepared = prepare_run(settings, config, origin, encoding=replay_encoding(settings, run_id))
    except SnapshotNotFoundError as exc:
        table_name, snapshot_id = original.data.tags[TABLE_TAG], original.data.tags[SNAPSHOT_ID_TAG]
        raise SnapshotNotFoundError(
            f"run {run_id} trained on snapshot {snapshot_id} of {table_name!r}, which no longer exists (expired); it cannot be reproduced"
        ) from exc
    new_run = train_prepared(settings, prepared, progress_bar=progress_bar).run_id
    client = tracking_client(settings)
    repeated = client.get_run(new_run)
    before, after = original.data.metrics, repeated.data.metrics
    metrics = {name: (before[name], after[name]) for name in sorted(before) if name in after}
    difference, problem = _weight_difference(settings, client, run_id, new_run)
    return Reproduction(
        run_id,
        new_run,
        (original.data.tags.get(DIGEST_TAG, ""), repeated.data.tags.get(DIGEST_TAG, "")),
        metrics,
        difference,
        problem,
    )


def final_weights(settings: Settings, client: MlflowClient, run_id: str) -> dict[str, torch.Tensor] | None:
    """A run's final weights from its last checkpoint (this machine's copy, else the MLflow artifact)."""
    local = checkpoint.local_path(settings, run_id)
    if local.is_file():
        return checkpoint.load(local, run_id)["model"]
    for artifact, key in (
        (f"{checkpoint.ARTIFACT_DIR}/{checkpoint.ARTIFACT_NAME}", "model"),
        (LEGACY_CHECKPOINT, "model_state"),
    ):
        try:
            path = client.download_artifacts(run_id, artifact, tempfile.mkdtemp(prefix="icetrain-reproduce-"))
        except (MlflowException, OSError):  # the artifact is missing: try the next layout
            continue
        state: dict[str, Any] = torch.load(Path(path), map_location="cpu", weights_only=False)
        return state[key]
    return None


def _weight_difference(settings: Settings, client: MlflowClient, original: str, repeated: str) -> tuple[float, str]:
    before, after = final_weights(settings, client, original), final_weights(settings, client, repeated)
    if before is None:
        return math.inf, f"run {original} has no checkpoint with its weights"
    if after is None or set(before) != set(after):
        return math.inf, "the models have different parameters"
    largest = 0.0
    for name, tensor in before.items():
        if tensor.shape != after[name].shape:
            return math.inf, f"parameter {name} has shape {tuple(after[name].shape)}, not {tuple(tensor.shape)}"
        if tensor.numel():
            largest = max(largest, float((tensor.double() - after[name].double()).abs().max()))
    return largest, ""


__all__ = ["Reproduction", "final_weights", "reproduce"]
