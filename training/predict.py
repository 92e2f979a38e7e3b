"""Batch predictions: a trained model scores a pinned snapshot, and its predictions land in an Iceberg table.

``predict`` resolves the model (``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a run
id) to its MLflow run, replays that run's resolved config and recorded encoding, pins the
input snapshot once, reads it as the run read its training rows (``pipeline.data.scoring``),
and streams the model's outputs into data files of the predictions table
(``pipeline.lake.predictions``), committed as one snapshot at the end. Under torchrun each
rank scores every ``world_size``-th row group and writes its own files; rank 0 commits them all.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import mlflow.pytorch
import numpy as np
import pyarrow as pa
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.table import Table

from pipeline.config.settings import Settings
from pipeline.config.tree import ComputeSection
from pipeline.data.scores import ScoreProfile
from pipeline.data.scoring import ScoringRead, prepare_scoring, scoring_chunks
from pipeline.data.snapshots import PinnedSnapshot, resolve_snapshot, schema_at
from pipeline.data.specs import SnapshotRequest
from pipeline.errors import ConfigError, PredictionError, RegistryError, SnapshotNotFoundError
from pipeline.lake.catalog import load_table, open_catalog
from pipeline.lake.predictions import (
    TARGET_FILE_BYTES,
    FileWriter,
    PredictionsTarget,
    ScoredInput,
    Scorer,
    commit_predictions,
    last_scored,
    open_predictions,
    predictions_schema,
)
from pipeline.names import check_table_name, check_tracking_name
from pipeline.tracking.client import tracking_client
from pipeline.tracking.lineage import get_run, is_absence, tracking_error
from pipeline.tracking.tags import PIPELINE_TAG
from training.compute import Compute, close_compute, init_compute
from training.liveness import check_tracking
from training.serving import SPEC_DIR, SPEC_FILE, ScoringSpec, ServedModel

MODEL_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/@]+)|/(?P<version>[^/@]+))")
RUN_ID = re.compile(r"[0-9a-f]{32}")
BATCH_ROWS = 65536


@dataclass(frozen=True)
class ModelChoice:
    """A model as asked for, resolved to the run that trained it (and its registered name and version)."""

    asked: str
    run_id: str
    name: str | None = None
    version: str | None = None


@dataclass(frozen=True)
class PredictRequest:
    """One scoring job.

    Attributes:
        model: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or an MLflow run id.
        into: the predictions table ('namespace.table'); created on first write.
        table: the input table; default: the table the model trained on.
        snapshot_id, ref, as_of: which snapshot of it (default: the current one).
        incremental: score only the rows appended since the last input snapshot this model scored into ``into``
            (any model, with ``after_any_model``: a new champion then scores only new rows).
        key: the columns that key each prediction (default: the input table's identifier fields).
        batch_rows: rows per forward pass. file_mb: predictions per data file (Arrow megabytes; files are written as batches come).
        device: auto, cpu, cuda or cuda:N.
        precision: auto (bf16 or fp16 autocast on CUDA, fp32 on CPU), fp32, bf16 or fp16.
        dagster_run_id: recorded in the predictions snapshot's summary.
    """

    model: str
    into: str
    table: str | None = None
    snapshot_id: int | None = None
    ref: str | None = None
    as_of: datetime | None = None
    incremental: bool = False
    after_any_model: bool = False
    key: tuple[str, ...] | None = None
    batch_rows: int = BATCH_ROWS
    file_mb: int = TARGET_FILE_BYTES // 2**20
    device: str = "auto"
    precision: str = "auto"
    dagster_run_id: str | None = None


@dataclass(frozen=True)
class Predictions:
    """What a scoring job wrote: the predictions snapshot, how many rows, by which model, from which input."""

    into: str
    snapshot_id: int
    rows: int
    already: bool
    model: ModelChoice
    scorer: Scorer
    scored: ScoredInput
    pinned: PinnedSnapshot
    files: int
    profile: ScoreProfile | None = None
    reference: ScoreProfile | None = None

    @property
    def drift(self) -> float | None:
        """PSI of these scores against the model's validation scores (None without a reference)."""
        if self.profile is None or self.reference is None or not self.profile.rows:
            return None
        return self.reference.psi(self.profile)

    def report(self) -> str:
        since = (
            f" (rows appended since snapshot {self.scored.since_snapshot_id})"
            if self.scored.since_snapshot_id is not None
            else ""
        )
        what = "already held" if self.already else "wrote"
        return (
            f"{self.into}: {what} {self.rows} predictions of {self.scorer.label} (run {self.model.run_id}) on"
            f" snapshot {self.pinned.snapshot_id} of {self.pinned.table}{since} in snapshot {self.snapshot_id}"
        )


def resolve_model(client: MlflowClient, asked: str) -> ModelChoice:
    """The run behind ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a run id.

    Raises:
        RegistryError: no such registered model, alias or version (what exists is named).
        RunNotFoundError: no such run.
        ConfigError: the text is none of the three forms.
        TrackingError: MLflow could not be asked.
    """
    text = asked.strip()
    if RUN_ID.fullmatch(text):
        return ModelChoice(asked, text)
    found = MODEL_URI.fullmatch(text)
    if not found:
        raise ConfigError(
            f"model {asked[:80]!r}: give models:/NAME@ALIAS, models:/NAME/VERSION or an MLflow run id (32 hex digits)"
        )
    name = found["name"]
    check_tracking_name(name, "registered model")
    try:
        registered = client.get_registered_model(name)
    except MlflowException as exc:
        if not is_absence(exc):
            raise tracking_error(f"look up registered model {name!r}", exc) from exc
        raise RegistryError(f"no registered model {name!r}") from exc
    try:
        if found["alias"]:
            version = client.get_model_version_by_alias(name, found["alias"])
        else:
            version = client.get_model_version(name, found["version"])
    except MlflowException as exc:
        if not is_absence(exc) and "INVALID_PARAMETER_VALUE" not in str(exc.error_code):
            raise tracking_error(f"look up {text}", exc) from exc
        if found["alias"]:
            aliases = ", ".join(sorted(registered.aliases)) or "none"
            raise RegistryError(
                f"registered model {name!r} has no alias {found['alias']!r} (aliases: {aliases}); set one with icetrain promote"
            ) from exc
        versions = ", ".join(sorted((str(v.version) for v in registered.latest_versions or ()), key=int)) or "none"
        raise RegistryError(
            f"registered model {name!r} has no version {found['version']!r} (latest: {versions})"
        ) from exc
    if not version.run_id:
        raise RegistryError(f"{text} was not logged by a run, so its data cannot be traced; register an icetrain run")
    return ModelChoice(asked, version.run_id, name, str(version.version))


def load_run_model(client: MlflowClient, run_id: str) -> torch.nn.Module:
    """A run's logged model (its ``model/`` artifact), through the explicit client (no global tracking URI)."""
    return mlflow.pytorch.load_model(_download_model(client, run_id))


def load_served_model(client: MlflowClient, run_id: str) -> ServedModel:
    """A run's logged model with its scoring spec (what it reads, its encoding, how its outputs are named).

    Raises:
        PredictionError: the model was saved without one (by an older icetrain).
    """
    return ServedModel.load(_download_model(client, run_id))


def load_scoring_spec(client: MlflowClient, run_id: str) -> ScoringSpec:
    """A run's scoring spec alone (``model/icetrain/scoring.json``: a small file, not the weights).

    Raises:
        PredictionError: the model was saved without one (by an older icetrain).
        TrackingError: MLflow could not be asked.
    """
    where = f"model/{SPEC_DIR}"
    folder = Path(tempfile.mkdtemp(prefix="icetrain-spec-"))
    try:
        if SPEC_FILE not in {Path(entry.path).name for entry in client.list_artifacts(run_id, where)}:
            raise PredictionError(
                f"the model of run {run_id} has no {where}/{SPEC_FILE} (saved by an older icetrain); train it again with icetrain train --from-run"
            )
        (folder / SPEC_DIR).mkdir()
        client.download_artifacts(run_id, f"{where}/{SPEC_FILE}", str(folder / SPEC_DIR))
    except MlflowException as exc:
        raise tracking_error(f"read the scoring spec of run {run_id}", exc) from exc
    return ScoringSpec.read(folder)


def _download_model(client: MlflowClient, run_id: str) -> str:
    return client.download_artifacts(run_id, "model", tempfile.mkdtemp(prefix="icetrain-model-"))


def predict(settings: Settings, request: PredictRequest) -> Predictions:
    """Score a pinned snapshot with a model and write the predictions into an Iceberg table, once.

    Raises:
        ConfigError, RegistryError, RunNotFoundError: the model cannot be found as asked.
        TableNotFoundError, SnapshotNotFoundError: the input cannot be pinned.
        ColumnError: the input lacks a feature the model needs (named), or identifier fields.
        EmptyDataError: nothing to score (nothing is written).
        PredictionError: the predictions table holds another schema or owner's predictions.
        EncodingError, TrackingError: the run's records cannot be read.
    """
    check_table_name(request.into)
    check_tracking(settings)  # an MLflow that does not answer is one line now, not minutes of retries
    if request.batch_rows < 1 or request.file_mb < 1:
        raise ConfigError(
            f"batch rows and file megabytes must be at least 1, not {request.batch_rows} and {request.file_mb}"
        )
    compute = init_compute(ComputeSection(device=request.device, precision="fp32"), seed=0)
    try:
        job, model = compute.share(lambda: _plan(settings, request))
        compute = replace(compute, precision=_precision(request.precision, compute.device))
        module = load_served_model(tracking_client(settings), model.run_id).module
        mine = score_into(job, module, compute, request.batch_rows, request.file_mb)
        everyone = _gathered(mine, compute)
        return compute.share(lambda: _commit(settings, job, model, everyone, request))
    finally:
        close_compute(compute)


@dataclass(frozen=True)
class ScoringJob:
    """A planned scoring job (what to read, with which spec, into which table), handed from rank 0 to every rank."""

    spec: ScoringSpec
    scorer: Scorer
    read: ScoringRead
    target: PredictionsTarget
    scored: ScoredInput
    decode_threads: int = 2


def plan_scoring(
    catalog: Catalog,
    table: Table,
    pinned: PinnedSnapshot,
    spec: ScoringSpec,
    scorer: Scorer,
    into: str,
    *,
    since_snapshot_id: int | None = None,
    key: tuple[str, ...] | None = None,
) -> ScoringJob:
    """Plan the read of the pinned snapshot for ``spec``'s model and check the predictions table (nothing is written).

    Raises:
        ColumnError, EmptyDataError, PredictionError: see ``predict``.
    """
    name = pinned.table
    trained_on = None
    if name == spec.data.table and spec.data.snapshot_id is not None:
        try:
            trained_on = schema_at(table, spec.data.snapshot_id)
        except SnapshotNotFoundError:
            trained_on = None  # expired since: features are matched by name
    read = prepare_scoring(
        table, pinned, spec.read_spec(since_snapshot_id), spec.encoding, trained_on=trained_on, key=key
    )
    keys = [pa.field(n, t) for n, t in zip(read.identifiers, read.identifier_types, strict=True)]
    target = open_predictions(catalog, into, predictions_schema(keys, scorer), scorer, name)
    scored = ScoredInput(name, str(table.metadata.table_uuid), pinned.snapshot_id, since_snapshot_id)
    return ScoringJob(spec, scorer, read, target, scored)


def _plan(settings: Settings, request: PredictRequest) -> tuple[ScoringJob, ModelChoice]:
    client = tracking_client(settings)
    model = resolve_model(client, request.model)
    run = get_run(settings, model.run_id)
    spec = load_scoring_spec(client, model.run_id)
    catalog = open_catalog(settings)
    name = request.table or spec.data.table
    assert name is not None, "a trained model's data section names its table"
    table = load_table(catalog, name)
    pinned = resolve_snapshot(
        table, SnapshotRequest(name, request.snapshot_id, request.ref, request.as_of), settings.catalog_name
    )
    scorer = Scorer(
        run_id=model.run_id,
        name=model.name,
        version=model.version,
        owner=run.data.tags.get(PIPELINE_TAG) or spec.data.table or name,
        task=spec.task,
        classes=spec.classes,
    )
    since = None
    if request.incremental:
        by = None if request.after_any_model else model.run_id
        since = _last_scored(catalog, request.into, str(table.metadata.table_uuid), by)
    job = plan_scoring(catalog, table, pinned, spec, scorer, request.into, since_snapshot_id=since, key=request.key)
    return job, model


def _last_scored(catalog: Catalog, into: str, input_uuid: str, run_id: str | None) -> int | None:
    try:
        predictions = catalog.load_table(into)
    except (NoSuchTableError, NoSuchNamespaceError):
        return None  # no predictions yet: every row is new
    return last_scored(predictions, input_uuid, run_id)


@dataclass(frozen=True)
class RankScored:
    """What one rank wrote: its data files, its rows, its scores' counts over the spec's bins, the seconds its model took."""

    paths: list[str]
    rows: int
    model_seconds: float
    score_counts: tuple[int, ...] = ()
    score_sum: float = 0.0

    def joined(self, others: list[RankScored]) -> RankScored:
        """Every rank's part together, in rank order."""
        parts = [self, *others]
        counts = np.sum([p.score_counts for p in parts], axis=0) if self.score_counts else ()
        return RankScored(
            [path for part in parts for path in part.paths],
            sum(part.rows for part in parts),
            max(part.model_seconds for part in parts),
            tuple(int(c) for c in counts),
            sum(part.score_sum for part in parts),
        )


def score_into(
    job: ScoringJob, module: torch.nn.Module, compute: Compute, batch_rows: int = BATCH_ROWS, file_mb: int = 128
) -> RankScored:
    """This rank's row groups scored by ``module`` and written into data files of the predictions table (not committed).

    A failure deletes the files written so far.
    """
    module = module.to(compute.device).eval()
    threads = torch.get_num_threads()
    if compute.device.type == "cpu":  # the model's threads and the decoding threads share the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - job.decode_threads))
    try:
        return _score_rows(job, module, compute, batch_rows, file_mb)
    finally:
        torch.set_num_threads(threads)


def _score_rows(
    job: ScoringJob, module: torch.nn.Module, compute: Compute, batch_rows: int, file_mb: int
) -> RankScored:
    writer = FileWriter(job.target, file_mb * 2**20)
    scored_at = pa.scalar(datetime.now(tz=UTC), pa.timestamp("us", tz="UTC"))
    model_seconds = 0.0
    edges = np.asarray(job.spec.score_edges)
    counts = np.zeros(len(edges) + 1, dtype=np.int64)
    score_sum = 0.0
    try:
        for chunk in scoring_chunks(job.read, compute.rank, compute.world_size, job.decode_threads):
            for start in range(0, chunk.rows, batch_rows):
                inputs = tuple(t[start : start + batch_rows] for t in chunk.inputs)
                began = time.perf_counter()
                outputs = _forward(module, inputs, compute)
                model_seconds += time.perf_counter() - began
                keys = chunk.keys.slice(start, batch_rows)
                columns, scores = job.spec.scored(outputs)
                counts += np.bincount(np.searchsorted(edges, scores, side="right"), minlength=len(counts))
                score_sum += float(scores.sum())
                writer.write(prediction_batch(keys, columns, job.scorer, job.scored, scored_at))
        writer.close()
    except BaseException:
        writer.discard()
        raise
    return RankScored(writer.paths, writer.rows, model_seconds, tuple(int(c) for c in counts), score_sum)


def _gathered(mine: RankScored, compute: Compute) -> RankScored:
    """Every rank's files, rows and score counts, in rank order."""
    if not compute.distributed:
        return mine
    import torch.distributed as dist

    parts: list[RankScored] = [mine] * compute.world_size
    dist.all_gather_object(parts, mine)
    return parts[0].joined(parts[1:])


def _forward(model: torch.nn.Module, inputs: tuple[torch.Tensor, ...], compute: Compute) -> torch.Tensor:
    with torch.inference_mode(), compute.autocast():
        outputs = model(*(t.to(compute.device, non_blocking=True) for t in inputs))
    return outputs.float().cpu()


def prediction_batch(
    keys: pa.RecordBatch, predicted: dict[str, pa.Array], scorer: Scorer, scored: ScoredInput, scored_at: pa.Scalar
) -> pa.RecordBatch:
    """The predictions of these rows: identifiers, ``predicted`` (``ScoringSpec.outputs``), who scored what."""
    rows = keys.num_rows
    columns = dict(zip(keys.schema.names, keys.columns, strict=True))
    columns.update(predicted)
    columns["model_name"] = pa.repeat(pa.scalar(scorer.name, pa.string()), rows)
    columns["model_version"] = pa.repeat(pa.scalar(scorer.version, pa.string()), rows)
    columns["model_run_id"] = pa.repeat(pa.scalar(scorer.run_id, pa.string()), rows)
    columns["input_snapshot_id"] = pa.repeat(pa.scalar(scored.snapshot_id, pa.int64()), rows)
    columns["scored_at"] = pa.repeat(scored_at, rows)
    return pa.RecordBatch.from_pydict(columns)


def _precision(asked: str, device: torch.device) -> str:
    if asked == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if asked not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"precision {asked!r}: use auto, fp32, bf16 or fp16")
    return asked


def _commit(
    settings: Settings, job: ScoringJob, model: ModelChoice, everyone: RankScored, request: PredictRequest
) -> Predictions:
    snapshot, already = commit_predictions(
        open_catalog(settings),
        job.target,
        everyone.paths,
        job.scorer,
        job.scored,
        everyone.rows,
        run_id=request.dagster_run_id,
    )
    rows = everyone.rows
    profile = ScoreProfile(job.spec.score_edges, everyone.score_counts, everyone.score_sum / rows if rows else 0.0)
    return Predictions(
        request.into,
        snapshot,
        rows,
        already,
        model,
        job.scorer,
        job.scored,
        job.read.pinned,
        len(everyone.paths),
        profile,
        job.spec.reference,
    )


__all__ = [
    "ModelChoice",
    "PredictRequest",
    "Predictions",
    "RankScored",
    "ScoringJob",
    "load_run_model",
    "load_scoring_spec",
    "load_served_model",
    "plan_scoring",
    "predict",
    "prediction_batch",
    "resolve_model",
    "score_into",
]
