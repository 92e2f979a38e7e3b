"""Checkpoints: everything needed to continue a run mid-epoch and end with the same weights.

A checkpoint holds the model, optimizer, scheduler and loss-scaler states, the RNG states, the
train loader's position, the loop's progress (epoch, step, this epoch's metric sums, history,
early-stopping state), the resolved config and the pinned snapshot. Rank 0 writes it
atomically under ``$ICETRAIN_HOME/checkpoints/<run id>/last.pt`` and logs it to MLflow as
``checkpoints/last.pt``; resuming prefers the local file and falls back to the artifact.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from pipeline.config.settings import Settings
from pipeline.errors import CheckpointError

FORMAT = 1
ARTIFACT_DIR = "checkpoints"
ARTIFACT_NAME = "last.pt"


def local_path(settings: Settings, run_id: str) -> Path:
    """Where this machine keeps the latest checkpoint of a run."""
    return settings.home / "checkpoints" / run_id / ARTIFACT_NAME


def save(state: dict[str, Any], path: Path) -> None:
    """Write ``state`` to ``path`` so that a reader never sees half a file (write, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".last-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            torch.save({"format": FORMAT, **state}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load(path: Path, run_id: str) -> dict[str, Any]:
    """Read a checkpoint written by ``save``.

    Raises:
        CheckpointError: the file is unreadable or of another format.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: torch raises several types
        raise CheckpointError(
            f"checkpoint of run {run_id} at {path} cannot be read ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint of run {run_id} at {path} is not an icetrain checkpoint of format {FORMAT}")
    return state


def rng_states() -> dict[str, Any]:
    """torch's CPU (and CUDA) generator states, which dropout and similar layers draw from."""
    states: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


__all__ = ["ARTIFACT_DIR", "ARTIFACT_NAME", "load", "local_path", "restore_rng", "rng_states", "save"]
