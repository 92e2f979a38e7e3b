"""Champion and challenger: score a new model and the current champion on the same held-out rows.

The rows are the validation split of the new model's pinned snapshot (the split is keyed by
identifier fields, so the champion never trained on them if it trained on an earlier snapshot
of the same table). The challenger takes the registered model's ``champion`` alias only when
it is better by ``retrain.champion_metric`` and ``retrain.champion_margin``; both scores and the
decision are written as tags on the model versions, rewritten at each evaluation so they say
what is true of each version now (``icetrain.eval.role``, ``.decision``, ``.snapshot_id`` and
the score).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from pipeline.config.settings import Settings
from pipeline.data.loader import IcebergLoader
from pipeline.errors import ConfigError
from pipeline.tracking.client import tracking_client
from pipeline.tracking.lineage import replay_config, replay_encoding
from pipeline.tracking.reference import CHAMPION_ALIAS
from pipeline.tracking.reference import champion_version as champion_of
from pipeline.tracking.registry import register
from training.compute import Compute
from training.data import TrainingData, open_training_data, validation_loader
from training.loop import evaluate
from training.predict import load_run_model
from training.prepare import PreparedRun, RunOrigin, prepare_run
from training.tasks import lower_is_better
from training.train import make_task

ALIAS = CHAMPION_ALIAS


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
    prepared = prepare_run(
        settings, config, RunOrigin(launched_by="evaluate"), encoding=replay_encoding(settings, run_id)
    )
    prepared.raise_if_blocked()
    data = open_training_data(prepared)
    if data.val is None:
        raise ConfigError("champion/challenger needs held-out rows: set data.val_fraction > 0")
    task = make_task(config, data)
    name = metric.removeprefix("val_")
    if name not in (*task.metric_names, *task.ranking_metric_names):
        raise ConfigError(
            f"retrain.champion_metric: {metric!r} is not reported; choose from {', '.join('val_' + n for n in (*task.metric_names, *task.ranking_metric_names))}"
        )
    client = tracking_client(settings)
    challenger = register(settings, run_id, model_name).version  # the version it already is, when registered
    compute = Compute(torch.device("cpu"), "fp32")
    challenger_score = evaluate(load_run_model(client, run_id), task, data.val, compute)[name]
    current = champion_of(client, model_name)
    if current is None or str(current.version) == str(challenger):
        promoted, champion_version, champion_score, reason = True, None, None, "no champion yet"
    else:
        champion_version = str(current.version)
        rows = _encoded_for(settings, prepared, current.run_id, data)
        champion_score = evaluate(load_run_model(client, current.run_id), task, rows, compute)[name]
        gain = champion_score - challenger_score if lower_is_better(name) else challenger_score - champion_score
        promoted = gain > margin
        reason = f"{metric} {challenger_score:.4f} vs champion's {champion_score:.4f}: {'better' if promoted else 'not better'} by more than {margin}"
    if promoted:
        client.set_registered_model_alias(model_name, ALIAS, str(challenger))
    snapshot = str(data.pinned.snapshot_id)
    verdict = Verdict(
        model_name, metric, str(challenger), challenger_score, champion_version, champion_score, promoted, reason
    )
    for version, tags in version_tags(verdict, snapshot).items():
        for key, value in tags.items():
            client.set_model_version_tag(model_name, version, key, value)
    return verdict


def version_tags(verdict: Verdict, snapshot: str) -> dict[str, dict[str, str]]:
    """What is true of each compared version now: its score, the snapshot it was scored on, its role, why.

    Every tag is rewritten at each evaluation, so a demoted version no longer reads "promoted".
    """
    metric, challenger, champion = verdict.metric, verdict.challenger_version, verdict.champion_version
    scored = {challenger: verdict.challenger_score}
    if champion is not None and verdict.champion_score is not None:
        scored[champion] = verdict.champion_score
    tags = {
        version: {f"icetrain.eval.{metric}": f"{score:.6g}", "icetrain.eval.snapshot_id": snapshot}
        for version, score in scored.items()
    }
    if champion is None:
        tags[challenger].update(
            {
                "icetrain.eval.role": "champion",
                "icetrain.eval.decision": f"champion since snapshot {snapshot}: no champion before",
            }
        )
    elif verdict.promoted:
        tags[challenger].update(
            {
                "icetrain.eval.role": "champion",
                "icetrain.eval.decision": f"champion since snapshot {snapshot}, replacing version {champion}: {verdict.reason}",
            }
        )
        tags[champion].update(
            {
                "icetrain.eval.role": "former champion",
                "icetrain.eval.decision": f"replaced by version {challenger} on snapshot {snapshot}: {verdict.reason}",
            }
        )
    else:
        tags[challenger].update(
            {
                "icetrain.eval.role": "challenger",
                "icetrain.eval.decision": f"not promoted on snapshot {snapshot}; version {champion} stays champion: {verdict.reason}",
            }
        )
        tags[champion].update(
            {
                "icetrain.eval.role": "champion",
                "icetrain.eval.decision": f"champion; kept against version {challenger} on snapshot {snapshot}: {verdict.reason}",
            }
        )
    return tags


def _encoded_for(settings: Settings, prepared: PreparedRun, run_id: str, data: TrainingData) -> IcebergLoader:
    """The same validation rows, encoded with the categories ``run_id``'s model was trained on."""
    encoding = replay_encoding(settings, run_id)
    if encoding == prepared.encoding:
        assert data.val is not None
        return data.val
    assert prepared.read is not None
    read = replace(prepared.read, layout=prepared.read.layout.with_encoding(encoding))
    return validation_loader(replace(prepared, encoding=encoding, read=read))


__all__ = ["ALIAS", "Verdict", "champion_challenger"]
