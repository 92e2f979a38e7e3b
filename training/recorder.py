"""Recording a run in MLflow through an explicit client: no global tracking URI, no os.environ.

Only rank 0 records (``open_recorder`` gives the others a ``NullRecorder``). A run is started
(or, on resume, reopened) only after every user-caused check has passed, and always ends
FINISHED or FAILED, never left RUNNING by an error this process sees.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow.pytorch
import torch
from mlflow.entities import DatasetInput, InputTag, LoggedModelOutput, Metric, Param, RunStatus
from mlflow.models import infer_signature
from mlflow.tracking import MlflowClient

from pipeline.config.settings import Settings
from pipeline.errors import CheckpointError
from pipeline.tracking.lineage import IcebergSnapshotDataset, ensure_experiment, register_sources
from training.liveness import ENDED_BY_TAG, Heartbeat, end_dead_runs, process_tags
from training.serving import ScoringSpec, save_served

MODEL_ARTIFACT = "model"
_BATCH = 100


class MlflowRecorder:
    """One MLflow run, written through the client it is handed (``pipeline.tracking.client``)."""

    def __init__(self, client: MlflowClient, settings: Settings, experiment: str | None = None):
        self.client = client
        self.settings = settings
        self.experiment = experiment
        self.run_id = ""
        self.experiment_id = ""
        self.model_id = ""
        self.datasets: dict[str, tuple[str, str]] = {}
        self._heartbeat: Heartbeat | None = None

    def start(self, tags: Mapping[str, str], run_name: str | None) -> str:
        """Create the run (RUNNING) in the configured experiment."""
        register_sources()
        self.experiment_id = ensure_experiment(self.client, self.settings, self.experiment)
        end_dead_runs(self.client, self.experiment_id)
        run = self.client.create_run(self.experiment_id, tags={**tags, **process_tags()}, run_name=run_name)
        self.run_id = run.info.run_id
        self._heartbeat = Heartbeat(self.client, self.run_id).start()
        return self.run_id

    def reopen(self, run_id: str) -> None:
        """Continue an unfinished run (resume): it goes back to RUNNING.

        Raises:
            CheckpointError: the run already finished.
        """
        run = self.client.get_run(run_id)
        if run.info.status == "FINISHED":
            raise CheckpointError(
                f"run {run_id} already finished; there is nothing to resume (train again with --from-run {run_id})"
            )
        self.run_id, self.experiment_id = run_id, run.info.experiment_id
        models = self.client.search_logged_models(
            experiment_ids=[self.experiment_id], filter_string=f"source_run_id = '{run_id}'"
        )
        self.model_id = models[0].model_id if models else ""
        self.datasets = {
            tag.value: (entry.dataset.name, entry.dataset.digest)
            for entry in run.inputs.dataset_inputs
            for tag in entry.tags
            if tag.key == "mlflow.data.context" and tag.value in ("training", "validation")
        }
        end_dead_runs(self.client, self.experiment_id)
        if ENDED_BY_TAG in run.data.tags or ENDED_BY_TAG in self.client.get_run(run_id).data.tags:
            self.client.delete_tag(run_id, ENDED_BY_TAG)  # it lives again; the new process is recorded below
        for key, value in process_tags().items():
            self.client.set_tag(run_id, key, value)
        self.client.update_run(run_id, status="RUNNING")
        self._heartbeat = Heartbeat(self.client, run_id).start()

    def logged_params(self) -> dict[str, str]:
        return dict(self.client.get_run(self.run_id).data.params)

    def log_params(self, params: Mapping[str, str]) -> None:
        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), _BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + _BATCH])

    def log_dataset(self, dataset: IcebergSnapshotDataset, context: str = "training") -> None:
        entity = DatasetInput(dataset._to_mlflow_entity(), tags=[InputTag("mlflow.data.context", context)])
        self.client.log_inputs(self.run_id, datasets=[entity])

    def log_file(self, path: Path, artifact_dir: str) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_dir)

    def download(self, artifact_path: str, into: Path) -> Path:
        return Path(self.client.download_artifacts(self.run_id, artifact_path, str(into)))

    def start_model(self, name: str, datasets: Mapping[str, tuple[str, str]]) -> str:
        """Create the run's logged model (named after the pipeline) now, so each epoch's metrics link to it and its datasets.

        Args:
            datasets: ``training`` and ``validation`` (when there is one): each dataset's name and digest.
        """
        logged = self.client.create_logged_model(
            self.experiment_id, name=_model_name(name), source_run_id=self.run_id, model_type="pytorch"
        )
        self.model_id, self.datasets = logged.model_id, dict(datasets)
        return logged.model_id

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Log one epoch's metrics: ``val_*`` against the validation dataset, the rest against the training dataset."""
        now = int(time.time() * 1000)
        entries = []
        for key, value in metrics.items():
            name, digest = self.datasets.get("validation" if key.startswith("val_") else "training", ("", ""))
            entries.append(
                Metric(
                    key,
                    value,
                    now,
                    step,
                    model_id=self.model_id or None,
                    dataset_name=name or None,
                    dataset_digest=digest or None,
                )
            )
        self.client.log_batch(self.run_id, metrics=entries)

    def log_json(self, values: Any, artifact_path: str) -> None:
        """Write ``values`` as a JSON artifact of the run at ``artifact_path`` ('folder/name.json')."""
        folder, _, name = artifact_path.rpartition("/")
        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / name
            path.write_text(json.dumps(values, indent=1, sort_keys=True))
            self.client.log_artifact(self.run_id, str(path), folder or None)

    def log_model(
        self, model: torch.nn.Module, example: tuple[torch.Tensor, ...], step: int, served: ScoringSpec | None = None
    ) -> str:
        """Save the model in MLflow's pytorch format (pickle: the pt2 default needs torch.export).

        With ``served`` (a run's scoring spec) it is also a pyfunc over a DataFrame of the
        table's raw columns (``training.serving``), whose signature names them.

        It goes to the logged model made by ``start_model`` (``models:/<id>``), which becomes
        READY, and to the run's ``model/`` artifacts (so ``runs:/<run>/model`` loads it too).
        A model over one tensor gets a signature; one over features and categories is called
        ``model(numeric, categories)`` (its table-level signature comes with the served model).
        """
        with torch.no_grad():
            output = model(*example)
        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder) / MODEL_ARTIFACT
            mlflow.pytorch.save_model(
                model,
                str(target),
                serialization_format="pickle",
                signature=infer_signature(example[0].numpy(), output.float().numpy()) if len(example) == 1 else None,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )
            if served is not None:
                save_served(target, served)
            self.client.log_artifacts(self.run_id, str(target), MODEL_ARTIFACT)
            if self.model_id:
                self.client.log_model_artifacts(self.model_id, str(target))
        if self.model_id:
            self.client.finalize_logged_model(self.model_id, "READY")
            self.client.log_outputs(self.run_id, [LoggedModelOutput(self.model_id, step)])
        return self.model_id

    def finish(self, status: str = "FINISHED") -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self.model_id and status != "FINISHED":
            self.client.finalize_logged_model(self.model_id, "FAILED")
        if self.run_id:
            self.client.set_terminated(self.run_id, status=RunStatus.to_string(RunStatus.from_string(status)))


class NullRecorder(MlflowRecorder):
    """What ranks other than 0 hold: every call does nothing."""

    def __init__(self) -> None:
        self.run_id = ""
        self.experiment_id = ""
        self.model_id = ""
        self.datasets = {}

    def start_model(self, name: str, datasets: Mapping[str, tuple[str, str]]) -> str:
        return ""

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

    def log_json(self, values: Any, artifact_path: str) -> None: ...

    def log_model(
        self, model: torch.nn.Module, example: tuple[torch.Tensor, ...], step: int, served: ScoringSpec | None = None
    ) -> str:
        return ""

    def finish(self, status: str = "FINISHED") -> None: ...


def _model_name(name: str) -> str:
    """A logged model's name from a pipeline or table name (MLflow refuses some characters)."""
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


__all__ = ["MODEL_ARTIFACT", "MlflowRecorder", "NullRecorder"]
