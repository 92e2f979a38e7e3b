"""Watching a registered model after it is promoted: prediction drift, input drift and realized performance.

``monitor`` pins the predictions table and the outcomes table (one snapshot each), joins them
per scoring window and model (``pipeline.lake.outcomes.realized``), and judges each window
against the model that scored it, from that model's own records:

- **prediction drift**: PSI of the window's scores against the validation scores the run
  recorded as its reference profile (``ScoringSpec.reference``);
- **input drift**: the rows of the newest scoring job against the model's training snapshot,
  through the quality gates' own code (``assess_snapshot``);
- **realized performance**: once ``min_coverage`` of a window's predictions have an outcome,
  its metric (PR AUC by default) against the run's ``val_<metric>``, with a margin.

The numbers go to MLflow on the scoring model's run, linked to its logged model
(``realized_<metric>``, ``realized_coverage``, ``prediction_psi``; the step is the window's
place in time), once per window, so MLflow plots them over time. A window with no outcome yet
is not judged; a table with no predictions is said so, not an error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from pipeline.config.project import Pipeline
from pipeline.config.settings import Settings
from pipeline.config.tree import MonitorSection
from pipeline.data.quality import assess_snapshot
from pipeline.data.snapshots import PinnedSnapshot, resolve_snapshot
from pipeline.data.specs import SnapshotRequest
from pipeline.lake.catalog import load_table, open_catalog
from pipeline.lake.outcomes import Window, realized
from pipeline.lake.predictions import CLASSES_PROPERTY, INPUT_SINCE, INPUT_SNAPSHOT, INPUT_TABLE, MODEL_RUN, key_columns
from pipeline.tracking.client import tracking_client
from pipeline.tracking.lineage import tracking_error
from pipeline.tracking.reference import champion_version
from training.liveness import check_tracking
from training.predict import load_scoring_spec
from training.serving import ScoringSpec
from training.tasks import lower_is_better

VALIDATION_METRIC = {"precision": "val_precision_at_threshold", "recall": "val_recall_at_threshold"}


@dataclass(frozen=True)
class MonitorRequest:
    """What to watch (the tables, the registered model, the outcome column) and how (a pipeline's ``monitor`` section)."""

    predictions: str
    model: str
    outcomes: str
    outcome: str
    section: MonitorSection = field(default_factory=MonitorSection)
    record: bool = True

    @classmethod
    def of(cls, pipeline: Pipeline, *, record: bool = True) -> MonitorRequest:
        config = pipeline.config
        return cls(
            predictions=pipeline.predictions_table,
            model=str(config.tracking.registered_model),
            outcomes=config.monitor.outcomes or pipeline.scoring_table,
            outcome=config.monitor.outcome or str(config.data.label),
            section=config.monitor,
            record=record,
        )


@dataclass(frozen=True)
class Judged:
    """One window scored by one model, judged against that model's validation records."""

    window: Window
    version: str
    reference: float | None
    prediction_psi: float | None
    judged: bool
    degraded: bool
    drifted: bool
    champion: bool

    def value(self, metric: str) -> float | None:
        return self.window.metrics.get(metric)


@dataclass(frozen=True)
class Check:
    """A non-blocking check's verdict, its one-line reason and its numbers."""

    name: str
    passed: bool
    text: str
    numbers: Mapping[str, float | str] = field(default_factory=dict)


@dataclass(frozen=True)
class Monitoring:
    """What ``monitor`` found: every window judged, the input drift of the newest scoring job, the checks."""

    request: MonitorRequest
    predictions_snapshot_id: int | None
    outcomes_snapshot_id: int | None
    champion: str | None
    windows: tuple[Judged, ...]
    input_window: str | None
    input_drift: Mapping[str, float]
    checks: tuple[Check, ...]
    recorded: int = 0

    @property
    def degraded(self) -> list[Judged]:
        """The champion's windows whose realized metric fell below its validation score by more than the margin."""
        return [w for w in self.windows if w.champion and w.degraded]

    @property
    def drifted(self) -> list[Judged]:
        """The champion's windows whose scores drifted past ``max_prediction_psi``."""
        return [w for w in self.windows if w.champion and w.drifted]

    def report(self) -> str:
        return "; ".join(f"{c.name}: {'passed' if c.passed else 'FAILED'} ({c.text})" for c in self.checks)


@dataclass(frozen=True)
class _Model:
    """A scoring model's records: its spec (reference scores, training snapshot) and validation metrics."""

    run_id: str
    spec: ScoringSpec
    validation: Mapping[str, float]
    model_id: str | None


def monitor(settings: Settings, request: MonitorRequest) -> Monitoring:
    """Judge every scoring window in the predictions table, and record the numbers in MLflow.

    Raises:
        ColumnError: the outcomes table lacks the key or the outcome column (named).
        TrackingError: MLflow could not be asked (never read as "no champion").
        PredictionError: a scoring model's records are missing.
    """
    check_tracking(settings)  # an MLflow that does not answer is one line now, not minutes of retries
    catalog = open_catalog(settings)
    client = tracking_client(settings)
    champion = champion_version(client, request.model)
    champion_run = champion.run_id if champion is not None else None
    predictions = _table(catalog, request.predictions)
    pinned = predictions.current_snapshot() if predictions is not None else None
    if predictions is None or pinned is None:
        return _nothing(request, str(champion.version) if champion else None)
    outcomes = _table(catalog, request.outcomes)
    outcomes_snapshot = outcomes.current_snapshot() if outcomes is not None else None
    models: dict[str, _Model] = {}
    windows = realized(
        predictions,
        pinned.snapshot_id,
        outcomes,
        outcomes_snapshot.snapshot_id if outcomes_snapshot is not None else None,
        key_columns(predictions),
        request.outcome,
        window=request.section.window,
        positive=_positive(predictions),
    )
    judged = []
    for window in windows:
        model = models.get(window.model_run_id) or _model(client, window.model_run_id)
        models[window.model_run_id] = model
        judged.append(_judge(window, model, request, window.model_run_id == champion_run))
    newest = _newest_job(predictions, champion_run)
    input_window, input_drift, contract = None, {}, ()
    if newest is not None:
        run_id, input_table, input_snapshot, since = newest
        model = models.get(run_id) or _model(client, run_id)
        input_window = str(input_snapshot)
        input_drift, contract = _input_drift(settings, catalog, model.spec, input_table, input_snapshot, since)
    checks = (
        _prediction_check(judged, request),
        _input_check(input_window, input_drift, contract, request),
        _realized_check(judged, request, str(champion.version) if champion else None),
    )
    found = Monitoring(
        request,
        pinned.snapshot_id,
        outcomes_snapshot.snapshot_id if outcomes_snapshot is not None else None,
        str(champion.version) if champion else None,
        tuple(judged),
        input_window,
        input_drift,
        checks,
    )
    if request.record:
        found = _record(client, found, models)
    return found


def _table(catalog: Catalog, name: str) -> Table | None:
    return load_table(catalog, name) if catalog.table_exists(name) else None


def _positive(predictions: Table) -> str:
    """The positive class as the predictions table names it (its second class), for precision and recall."""
    classes = json.loads(predictions.properties.get(CLASSES_PROPERTY, "[]"))
    return str(classes[1]) if len(classes) == 2 else "1"


def _model(client: MlflowClient, run_id: str) -> _Model:
    spec = load_scoring_spec(client, run_id)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise tracking_error(f"read run {run_id}", exc) from exc
    outputs = run.outputs.model_outputs if run.outputs is not None else []
    return _Model(run_id, spec, dict(run.data.metrics), outputs[0].model_id if outputs else None)


def _judge(window: Window, model: _Model, request: MonitorRequest, champion: bool) -> Judged:
    reference_profile = model.spec.reference
    psi = (
        reference_profile.psi(reference_profile.same_bins(window.scores))
        if reference_profile is not None and window.predictions
        else None
    )
    section = request.section
    reference = model.validation.get(VALIDATION_METRIC.get(section.metric, f"val_{section.metric}"))
    value = window.metrics.get(section.metric)
    degraded = judged = False
    if window.coverage >= section.min_coverage and value is not None and reference is not None:
        judged = True
        loss = value - reference if lower_is_better(section.metric) else reference - value
        degraded = loss > section.margin
    drifted = psi is not None and psi > section.max_prediction_psi
    return Judged(window, window.model_version, reference, psi, judged, degraded, drifted, champion)


def _newest_job(predictions: Table, run_id: str | None) -> tuple[str, str, int, int | None] | None:
    """The newest scoring job (by ``run_id``'s model when given, else any): model run, input table, snapshot, since."""
    for snapshot in sorted(predictions.snapshots(), key=lambda s: s.sequence_number or 0, reverse=True):
        summary = snapshot.summary.additional_properties if snapshot.summary else {}
        if INPUT_SNAPSHOT not in summary or (run_id is not None and summary.get(MODEL_RUN) != run_id):
            continue
        since = summary.get(INPUT_SINCE)
        return summary[MODEL_RUN], summary[INPUT_TABLE], int(summary[INPUT_SNAPSHOT]), int(since) if since else None
    return None if run_id is None else _newest_job(predictions, None)


def _input_drift(
    settings: Settings, catalog: Catalog, spec: ScoringSpec, table_name: str, snapshot_id: int, since: int | None
) -> tuple[dict[str, float], tuple[str, ...]]:
    """PSI per feature of the rows the newest job scored against the model's training snapshot (same table only)."""
    trained = spec.data.snapshot_id
    if table_name != spec.data.table or trained is None or not catalog.table_exists(table_name):
        return {}, ()
    table = load_table(catalog, table_name)
    if table.snapshot_by_id(snapshot_id) is None or table.snapshot_by_id(trained) is None:
        return {}, ()  # expired since: nothing to compare

    def pin(snapshot_id: int) -> PinnedSnapshot:
        return resolve_snapshot(table, SnapshotRequest(table_name, snapshot_id), settings.catalog_name)

    report, _ = assess_snapshot(table, pin(snapshot_id), spec.read_spec(since), pin(trained), spec.data.read_spec())
    return dict(report.drift), tuple(report.contract)


def _prediction_check(judged: list[Judged], request: MonitorRequest) -> Check:
    if not judged:
        return Check("prediction_drift", True, f"no predictions in {request.predictions} yet: nothing to judge")
    latest = ([w for w in judged if w.champion] or judged)[-1]
    where = f"window {latest.window.window} (model version {latest.version or latest.window.model_run_id})"
    if latest.prediction_psi is None:
        return Check("prediction_drift", True, f"{where}: the model recorded no reference scores")
    numbers = {
        "window": latest.window.window,
        "psi": round(latest.prediction_psi, 4),
        "max_psi": request.section.max_prediction_psi,
    }
    if latest.drifted:
        text = f"{where}: prediction PSI {latest.prediction_psi:.3f} > monitor.max_prediction_psi {request.section.max_prediction_psi}"
        return Check("prediction_drift", False, text, numbers)
    return Check("prediction_drift", True, f"{where}: prediction PSI {latest.prediction_psi:.3f}", numbers)


def _input_check(
    window: str | None, drift: Mapping[str, float], contract: tuple[str, ...], request: MonitorRequest
) -> Check:
    if window is None:
        return Check("input_drift", True, f"no predictions in {request.predictions} yet: nothing to judge")
    if contract:
        return Check("input_drift", False, f"input snapshot {window}: {'; '.join(contract)}")
    if not drift:
        return Check("input_drift", True, f"input snapshot {window}: not comparable with the model's training snapshot")
    worst = max(drift, key=lambda name: drift[name])
    numbers = {"input_snapshot_id": window, "worst_feature": worst, "worst_psi": round(drift[worst], 4)}
    over = sorted(
        (name for name, value in drift.items() if value > request.section.max_input_psi), key=lambda n: -drift[n]
    )
    if over:
        listed = ", ".join(f"{name} PSI {drift[name]:.3f}" for name in over[:5])
        text = f"input snapshot {window}: {listed} > monitor.max_input_psi {request.section.max_input_psi}"
        return Check("input_drift", False, text, numbers)
    return Check("input_drift", True, f"input snapshot {window}: largest PSI {drift[worst]:.3f} ({worst})", numbers)


def _realized_check(judged: list[Judged], request: MonitorRequest, champion: str | None) -> Check:
    metric = request.section.metric
    if not judged:
        return Check("realized_performance", True, f"no predictions in {request.predictions} yet: nothing to judge")
    mine = [w for w in judged if w.champion] or judged
    ready = [w for w in mine if w.judged]
    who = f"model version {champion}" if champion else "the newest model"
    if not ready:
        latest = mine[-1]
        return Check(
            "realized_performance",
            True,
            f"not judged yet: no window of {who} has outcomes for {request.section.min_coverage:.0%} of its predictions"
            f" (window {latest.window.window}: {latest.window.coverage:.0%})",
            {"coverage": round(latest.window.coverage, 4)},
        )
    latest = ready[-1]
    value = latest.value(metric)
    numbers = {
        "window": latest.window.window,
        f"realized_{metric}": round(value or 0.0, 4),
        f"validation_{metric}": round(latest.reference or 0.0, 4),
        "margin": request.section.margin,
        "coverage": round(latest.window.coverage, 4),
    }
    bad = [w for w in ready if w.degraded]
    if bad:
        listed = ", ".join(f"window {w.window.window}: {w.value(metric):.3f}" for w in bad[-3:])
        text = f"realized {metric} of {who} fell below its validation {latest.reference:.3f} - {request.section.margin}: {listed}"
        return Check("realized_performance", False, text, numbers)
    return Check(
        "realized_performance",
        True,
        f"window {latest.window.window}: realized {metric} {value:.3f} against validation {latest.reference:.3f}"
        f" ({latest.window.coverage:.0%} of predictions with an outcome)",
        numbers,
    )


def _nothing(request: MonitorRequest, champion: str | None) -> Monitoring:
    checks = tuple(
        Check(name, True, f"no predictions in {request.predictions} yet: nothing to judge")
        for name in ("prediction_drift", "input_drift", "realized_performance")
    )
    return Monitoring(request, None, None, champion, (), None, {}, checks)


def _record(client: MlflowClient, found: Monitoring, models: Mapping[str, _Model]) -> Monitoring:
    """Log each window's numbers on its model's run (once per window and metric), linked to the logged model."""
    steps = {name: step for step, name in enumerate(dict.fromkeys(w.window.window for w in found.windows))}
    written = 0
    by_run: dict[str, list[Metric]] = {}
    history: dict[tuple[str, str], set[int]] = {}
    for judged in found.windows:
        window, model = judged.window, models[judged.window.model_run_id]
        values: dict[str, float] = {}
        if judged.prediction_psi is not None:
            values["prediction_psi"] = judged.prediction_psi
        if judged.judged:
            values.update({f"realized_{name}": value for name, value in window.metrics.items()})
            values["realized_coverage"] = window.coverage
        if found.input_window == window.window and judged.champion and found.input_drift:
            values["input_psi_max"] = max(found.input_drift.values())
        for key, value in values.items():
            seen = history.get((model.run_id, key))
            if seen is None:
                seen = _steps(client, model.run_id, key)
                history[(model.run_id, key)] = seen
            step = steps[window.window]
            if step in seen:
                continue
            seen.add(step)
            by_run.setdefault(model.run_id, []).append(
                Metric(key, float(value), window.first_scored_ms, step, model_id=model.model_id, run_id=model.run_id)
            )
    try:
        for run_id, metrics in by_run.items():
            for start in range(0, len(metrics), 1000):
                client.log_batch(run_id, metrics=metrics[start : start + 1000])
                written += len(metrics[start : start + 1000])
    except MlflowException as exc:
        raise tracking_error("record the monitoring metrics", exc) from exc
    return replace(found, recorded=written)


def _steps(client: MlflowClient, run_id: str, key: str) -> set[int]:
    try:
        return {metric.step for metric in client.get_metric_history(run_id, key)}
    except MlflowException as exc:
        raise tracking_error(f"read metric {key} of run {run_id}", exc) from exc


__all__ = ["Check", "Judged", "MonitorRequest", "Monitoring", "monitor"]
