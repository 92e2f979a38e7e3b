"""Champion and challenger: score a new model and the current champion on the same held-out rows.

The rows are the validation split of the new model's pinned snapshot (the split is keyed by
identifier fields, so the champion never trained on them if it trained on an earlier snapshot
of the same table). The challenger takes the registered model's ``champion`` alias only when
it is better by ``retrain.champion_metric`` and ``retrain.champion_margin``; both scores and the
decision are written as tags on the model versions.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow.pytorch
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.errors import ConfigError
from pipeline.lineage import replay_config
from pipeline.registry import register
from pipeline.settings import Settings
from training.compute import Compute
from training.data import open_training_data, pin
from training.loop import evaluate
from training.tasks import lower_is_better
from training.train import make_task

ALIAS = "champion"


@dataclass(frozen=True)
class Verdict:
    """The scores of both models on the same rows, and whether the challenger became champion."""

    model: str
    metric: str
    challenger_version: str
    challenger_score: float
    champion_version: str | None
    champion_score: float | None
    promoted: bool
    reason: str


def champion_challenger(settings: Settings, run_id: str, model_name: str, metric: str, margin: float = 0.0) -> Verdict:
    """Score ``run_id``'s model and the champion of ``model_name`` on the run's held-out rows; promote if better.

    Raises:
        ConfigError: no validation split, or a metric the task does not report.
        RunNotFoundError, RegistryError: the run or registration fails (nothing promoted).
    """
    config = replay_config(settings, run_id)
    data = open_training_data(settings, config, pin(settings, config))
    if data.val is None:
        raise ConfigError("champion/challenger needs held-out rows: set data.val_fraction > 0")
    task = make_task(config, data)
    name = metric.removeprefix("val_")
    if name not in (*task.metric_names, *task.ranking_metric_names):
        raise ConfigError(f"retrain.champion_metric: {metric!r} is not reported; choose from {', '.join('val_' + n for n in (*task.metric_names, *task.ranking_metric_names))}")
    client = MlflowClient(settings.tracking_uri)
    challenger = _version_of(client, model_name, run_id) or register(settings, run_id, model_name).version
    compute = Compute(torch.device("cpu"), "fp32")
    challenger_score = evaluate(_load(client, run_id), task, data.val, compute)[name]
    try:
        current = client.get_model_version_by_alias(model_name, ALIAS)
    except MlflowException:
        current = None
    if current is None or str(current.version) == str(challenger):
        promoted, champion_version, champion_score, reason = True, None, None, "no champion yet"
    else:
        champion_version = str(current.version)
        champion_score = evaluate(_load(client, current.run_id), task, data.val, compute)[name]
        gain = champion_score - challenger_score if lower_is_better(name) else challenger_score - champion_score
        promoted = gain > margin
        reason = f"{metric} {challenger_score:.4f} vs champion's {champion_score:.4f}: {'better' if promoted else 'not better'} by more than {margin}"
    if promoted:
        client.set_registered_model_alias(model_name, ALIAS, str(challenger))
    snapshot = str(data.pinned.snapshot_id)
    client.set_model_version_tag(model_name, str(challenger), f"icetrain.eval.{metric}", f"{challenger_score:.6g} on snapshot {snapshot}")
    client.set_model_version_tag(model_name, str(challenger), "icetrain.eval.decision", "promoted to champion" if promoted else f"kept version {champion_version} as champion")
    if champion_version is not None and champion_score is not None:
        client.set_model_version_tag(model_name, champion_version, f"icetrain.eval.{metric}", f"{champion_score:.6g} on snapshot {snapshot}")
    return Verdict(model_name, metric, str(challenger), challenger_score, champion_version, champion_score, promoted, reason)


def _version_of(client: MlflowClient, model_name: str, run_id: str) -> str | None:
    try:
        versions = client.search_model_versions(f"name = '{model_name}' and run_id = '{run_id}'")
    except MlflowException:
        return None
    return str(versions[0].version) if versions else None


def _load(client: MlflowClient, run_id: str) -> torch.nn.Module:
    """A run's logged model, through the explicit client (no global tracking URI)."""
    folder = client.download_artifacts(run_id, "model", tempfile.mkdtemp(prefix="icetrain-evaluate-"))
    return mlflow.pytorch.load_model(str(Path(folder)))


__all__ = ["ALIAS", "Verdict", "champion_challenger"]
