"""Training a prepared run here, or under torchrun for ``compute.nproc > 1``.

``train_prepared`` is the one place that chooses: the CLI, Dagster's trained-model asset and
``reproduce`` all call it. The caller has already prepared the run (pinned, judged), so every
rank trains on the same snapshot id and a user mistake never reaches a worker. The workers
read the prepared run from its JSON and write a one-line error, or the run's result, next to
it; torchrun's own output goes to a log.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.config.settings import Settings
from pipeline.errors import IcetrainError
from training.prepare import PreparedRun
from training.train import Resume, TrainResult, run_prepared


def train_prepared(
    settings: Settings,
    prepared: PreparedRun,
    *,
    resume: Resume | None = None,
    progress_bar: bool = True,
    debug: bool = False,
) -> TrainResult:
    """Train a prepared run in this process, or under torchrun with ``compute.nproc`` processes.

    Raises:
        IcetrainError: a gate blocks the data, a user mistake, or a worker's one-line error.
    """
    prepared.raise_if_blocked()
    if prepared.config.compute.nproc > 1:
        return launch(settings, prepared, debug=debug)
    return run_prepared(settings, prepared, resume=resume, progress_bar=progress_bar)


def launch(settings: Settings, prepared: PreparedRun, *, debug: bool = False) -> TrainResult:
    """Run ``training.train`` on the prepared run under ``torchrun --standalone`` with ``compute.nproc`` processes.

    Raises:
        IcetrainError: a worker's one-line error, or torchrun failing (with where its log is).
    """
    with tempfile.TemporaryDirectory(prefix="icetrain-launch-") as folder:
        spec = Path(folder) / "prepared.json"
        spec.write_text(prepared.to_json())
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(prepared.config.compute.nproc),
            "-m", "training.train", "--prepared", str(spec), "--no-progress",
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
        return TrainResult.from_json(result.read_text())


__all__ = ["launch", "train_prepared"]
