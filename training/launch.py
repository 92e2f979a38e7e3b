"""Launching the train script under torchrun, for ``compute.nproc > 1``.

The caller has already pinned the snapshot (and passed the data gate), so every rank trains
on the same snapshot id and a user mistake never reaches a worker. Workers write a one-line
error, or the run's summary, next to the launch spec; torchrun's own output goes to a log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from pipeline.config.settings import Settings
from pipeline.config.tree import PipelineConfig
from pipeline.errors import IcetrainError


def launch(
    settings: Settings,
    config: PipelineConfig,
    pinned: dict[str, Any],
    pipeline: str | None,
    *,
    resume_run_id: str | None = None,
    dagster_run_id: str | None = None,
    launched_by: str = "api",
    tags: dict[str, str] | None = None,
    debug: bool = False,
) -> dict[str, Any]:
    """Run ``training.train`` under ``torchrun --standalone`` with ``compute.nproc`` processes.

    Raises:
        IcetrainError: a worker's one-line error, or torchrun failing (with where its log is).
    """
    with tempfile.TemporaryDirectory(prefix="icetrain-launch-") as folder:
        spec = Path(folder) / "spec.json"
        payload = {
            "config": config.model_dump(mode="json"),
            "pinned": {**pinned, "snapshot_id": str(pinned["snapshot_id"])},
            "pipeline": pipeline,
            "resume": resume_run_id,
            "dagster_run_id": dagster_run_id,
            "launched_by": launched_by,
            "tags": tags or {},
        }
        spec.write_text(json.dumps(payload))
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(config.compute.nproc),
            "-m", "training.train", "--launch-spec", str(spec), "--no-progress",
        ]  # fmt: skip
        log = settings.home / "logs" / "torchrun.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as stderr:
            env = {
                **os.environ,
                "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])),
            }
            finished = subprocess.run(command, stdout=subprocess.DEVNULL, stderr=None if debug else stderr, env=env)
        error, result = spec.with_suffix(".error"), spec.with_suffix(".result.json")
        if finished.returncode != 0:
            if error.is_file():
                raise IcetrainError(error.read_text().strip())
            raise IcetrainError(f"torchrun exited with code {finished.returncode}; see {log}")
        return json.loads(result.read_text())


__all__ = ["launch"]
