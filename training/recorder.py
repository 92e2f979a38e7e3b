"""Recording a run in MLflow through an explicit client: no global tracking URI, no os.environ.

Only rank 0 records (``open_recorder`` gives the others a ``NullRecorder``). A run is started
(or, on resume, reopened) only after every user-caused check has passed, and always ends
FINISHED or FAILED, never left RUNNING by an error this process sees.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import mlflow.pytorch
import torch
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from pipeline.errors import CheckpointError
from pipeline.lineage import IcebergSnapshotDataset, ensure_experiment, register_sources
from pipeline.settings import Settings

MODEL_ARTIFACT = "model"
_BATCH = 100


class MlflowRecorder:
    """One MLflow run, written through its own ``MlflowClient``."""

    def __init__(self, settings: Settings, experiment: str | None = None):
        self.client = MlflowClient(settings.tracking_uri)
        self.settings = settings
        self.experiment = experiment
        self.run_id = ""
        self.experiment_id = ""

    def start(self, tags: Mapping[str, str], run_name: str | None) -> str:
        """Create the run (RUNNING) in the configured experiment."""
        register_sources()
        self.experiment_id = ensure_experiment(self.client, self.settings, self.experiment)
        run = self.client.create_run(self.experiment_id, tags=dict(tags), run_name=run_name)
        self.run_id = run.info.run_id
        return self.run_id

    def reopen(self, run_id: str) -> None:
        """Continue an unfinished run (resume): it goes back to RUNNING.

        Raises:
            CheckpointError: the run already finished.
        """
        run = self.client.get_run(run_id)
        if run.info.status == "FINISHED":
            raise CheckpointError(f"run {run_id} already finished; there is nothing to resume (train again with --from-run {run_id})")
        self.run_id, self.experiment_id = run_id, run.info.experiment_id
        self.client.update_run(run_id, status="RUNNING")

    def logged_params(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.params)

    def log_params(self, params: Mapping[str, str]) -> None:
        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _BATCH])

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(key, value, now, step) for key, value in metrics.items()])

    def log_dataset(self, dataset: IcebergSnapshotDataset, context: str = "training") -> None:
        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
        self.client.log_inputs(self.run_id, datasets=[entity])

    def log_file(self, path: Path, artifact_dir: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_dir)

    def download(self, artifact_path: str, into: Path) -> Path:
        return Path(self.client.download_artifacts(self.run_id, artifact_path, str(into)))

    def log_model(self, model: torch.nn.Module, example: torch.Tensor) -> str:
        """Save the model in MLflow's pytorch format (pickle: the pt2 default needs torch.export) under ``model/``."""
        with torch.no_grad():
            output = model(example)
        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder) / MODEL_ARTIFACT
            mlflow.pytorch.save_model(
                model,
                str(target),
                serialization_format="pickle",
                signature=infer_signature(example.numpy(), output.float().numpy()),
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
            self.client.log_artifacts(self.run_id, str(target), MODEL_ARTIFACT)
        return f"runs:/{self.run_id}/{MODEL_ARTIFACT}"

    def register_model(self, name: str) -> str:
        """Register the run's model as a new version of ``name``; returns the version."""
        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(name)
        source = f"{self.client.get_run(self.run_id).info.artifact_uri}/{MODEL_ARTIFACT}"
        return str(self.client.create_model_version(name, source, run_id=self.run_id).version)

    def finish(self, status: str = "FINISHED") -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status=RunStatus.to_string(RunStatus.from_string(status)))


class NullRecorder(MlflowRecorder):
    """What ranks other than 0 hold: every call does nothing."""

    def __init__(self) -> None:
        self.run_id = ""
        self.experiment_id = ""

    def start(self, tags: Mapping[str, str], run_name: str | None) -> str:
        return ""

    def reopen(self, run_id: str) -> None:
        self.run_id = run_id

    def logged_params(self) -> dict[str, str]:
        return {}

    def log_params(self, params: Mapping[str, str]) -> None: ...
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...
    def log_dataset(self, dataset: IcebergSnapshotDataset, context: str = "training") -> None: ...
    def log_file(self, path: Path, artifact_dir: str) -> None: ...

    def log_model(self, model: torch.nn.Module, example: torch.Tensor) -> str:
        return ""

    def register_model(self, name: str) -> str:
        return ""

    def finish(self, status: str = "FINISHED") -> None: ...


__all__ = ["MODEL_ARTIFACT", "MlflowRecorder", "NullRecorder"]
