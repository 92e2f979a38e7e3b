"""The train script: one pinned snapshot in, one MLflow run out. Read it top to bottom.

    python -m training.train --pipeline NAME [--config icetrain.yaml] [--set optim.lr=0.01 ...]
    torchrun --standalone --nproc-per-node 2 -m training.train --pipeline NAME

Steps: set up compute (seed, device, process group) -> pin the snapshot and open the loaders
(the data gate runs here, before anything is recorded) -> build the model -> start or reopen
the MLflow run (rank 0 only) -> fit, checkpointing every epoch and every N steps -> record
the model. ``train()`` is the same as a function for the CLI, the API and Dagster.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from mlflow.exceptions import MlflowException
from torch.nn.parallel import DistributedDataParallel

from pipeline.config.settings import Settings
from pipeline.config.tree import PipelineConfig, parse_config
from pipeline.data.encoding import ARTIFACT_PATH as ENCODING_ARTIFACT
from pipeline.data.loader import IcebergLoader
from pipeline.data.snapshots import PinnedSnapshot
from pipeline.errors import CheckpointError, ConfigError, IcetrainError
from pipeline.tracking.client import tracking_client
from pipeline.tracking.lineage import (
    IcebergDatasetSource,
    IcebergSnapshotDataset,
    get_run,
    lineage_tags,
    run_description,
    run_name,
    source_tags,
)
from pipeline.tracking.params import encoding_params, to_params
from pipeline.tracking.registry import check_registrable, register
from pipeline.tracking.tags import NOTE_TAG
from training import checkpoint
from training.compute import Compute, close_compute, init_compute
from training.data import TrainingData, feature_sample, open_training_data
from training.loop import EpochMetrics, Fit, Progress, fit
from training.models import build_model
from training.prepare import PreparedRun, RunOrigin, attached, prepare_run
from training.recorder import MlflowRecorder, NullRecorder
from training.serving import scoring_spec, validation_scores, with_validation
from training.tasks import Classification, Regression, Task, balanced_weights

# Steps a person waits for (MLflow answering, pinning, planning the read, training), as INFO;
# the CLI shows them on stderr when it is a terminal.
log = logging.getLogger("icetrain")


@dataclass(frozen=True)
class TrainResult:
    """What a training run produced and which data it saw."""

    run_id: str
    experiment_id: str
    pinned: PinnedSnapshot
    config: PipelineConfig
    row_count: int
    digest: str
    classes: tuple[object, ...]
    history: tuple[EpochMetrics, ...]
    world_size: int = 1
    model_version: str = ""
    model_id: str = ""
    experiment: str = ""

    @property
    def final_metrics(self) -> dict[str, float]:
        return self.history[-1].as_dict()

    def to_json(self) -> str:
        """The result as JSON (snapshot ids as text), as torchrun's rank 0 hands it to the launcher."""
        return json.dumps(
            {
                **{name: getattr(self, name) for name in _PLAIN_FIELDS},
                "pinned": self.pinned.to_dict(),
                "config": self.config.model_dump(mode="json"),
                "classes": list(self.classes),
                "history": [{"epoch": m.epoch, "values": m.values} for m in self.history],
            },
            default=lambda value: value.item(),  # NumPy scalars among the classes
        )

    @classmethod
    def from_json(cls, text: str) -> TrainResult:
        values = json.loads(text)
        return cls(
            **{name: values[name] for name in _PLAIN_FIELDS},
            pinned=PinnedSnapshot.from_dict(values["pinned"]),
            config=parse_config(values["config"]),
            classes=tuple(values["classes"]),
            history=tuple(EpochMetrics(m["epoch"], m["values"]) for m in values["history"]),
        )


_PLAIN_FIELDS = (
    "run_id",
    "experiment_id",
    "row_count",
    "digest",
    "world_size",
    "model_version",
    "model_id",
    "experiment",
)


@dataclass(frozen=True)
class Resume:
    """A killed run to continue: its id and its latest checkpoint."""

    run_id: str
    state: dict[str, Any]


def train(
    settings: Settings,
    config: PipelineConfig,
    *,
    pipeline: str | None = None,
    dagster_run_id: str | None = None,
    progress_bar: bool = True,
    launched_by: str = "api",
    tags: Mapping[str, str] | None = None,
) -> TrainResult:
    """Pin the config's snapshot once, train on it, and record the run in MLflow (the Python API).

    Under torchrun, rank 0 prepares the run (``training.prepare.prepare_run``) and every rank
    trains that one.

    Args:
        pipeline: the declared pipeline's name, recorded as a tag.
        dagster_run_id: recorded as a tag, linking the MLflow run to the Dagster run.
        launched_by: which front end started the run ('cli', 'dagster', 'api'), a tag.
        tags: extra tags for the run (e.g. ``icetrain.reproduces``).

    Raises:
        IcetrainError: any user mistake, raised before an MLflow run is created.
    """
    origin = RunOrigin(pipeline, launched_by, dagster_run_id, dict(tags or {}))
    compute = init_compute(config.compute, config.seed)
    try:
        prepared = compute.share(lambda: prepare_run(settings, config, origin))
        return _train(settings, prepared, compute, None, progress_bar)
    finally:
        close_compute(compute)


def run_prepared(
    settings: Settings, prepared: PreparedRun, *, resume: Resume | None = None, progress_bar: bool = True
) -> TrainResult:
    """Train a prepared run in this process (one of torchrun's ranks, or the only one).

    A run prepared to resume (``origin.resume_run_id``) continues from its checkpoint
    (``resume``, else read here) in the same MLflow run.

    Raises:
        IcetrainError: a gate blocks the data, or any user mistake, before an MLflow run is created or reopened.
    """
    compute = init_compute(prepared.config.compute, prepared.config.seed)
    try:
        if resume is None and prepared.origin.resume_run_id:
            _, resume = resume_from(settings, prepared.origin.resume_run_id)
        return _train(settings, prepared, compute, resume, progress_bar)
    finally:
        close_compute(compute)


def _train(
    settings: Settings,
    prepared: PreparedRun,
    compute: Compute,
    resume: Resume | None,
    progress_bar: bool,
) -> TrainResult:
    # 1. Data: every rank reads the one pinned, judged snapshot (loading the table once, unless preparing did).
    prepared.raise_if_blocked()
    prepared = attached(settings, prepared)
    data = open_training_data(prepared)
    pinned = prepared.pinned
    config = resolved_config(prepared.config, data, compute)
    task = make_task(config, data)
    check_early_stopping(config, task, data)
    client = tracking_client(settings) if compute.is_main else None
    if config.tracking.registered_model and client is not None:
        check_registrable(client, config.tracking.registered_model, pinned.table)

    # 2. Model, optimizer, schedule; a resumed run takes every state from its checkpoint.
    sample = feature_sample(data.train)
    encoding = data.layout.encoding
    model = build_model(
        config.model,
        data.layout.numeric_shape,
        task.num_outputs,
        sample[0],
        encoding.cardinalities if encoding is not None else None,
    ).to(compute.device)
    optimizer = make_optimizer(config, model)
    scheduler = make_scheduler(config, optimizer)
    scaler = compute.grad_scaler()
    progress = Progress()
    if resume is not None:
        progress = restore(resume.state, model, optimizer, scheduler, scaler, data, compute)
    wrapped = (
        DistributedDataParallel(model, device_ids=[compute.device.index] if compute.device.type == "cuda" else None)
        if compute.distributed
        else model
    )

    # 3. The record: only now, with every check passed, does an MLflow run start (rank 0);
    # from here on any failure ends it FAILED (KILLED on Ctrl-C), never left RUNNING.
    recorder = MlflowRecorder(client, settings, config.tracking.experiment) if client is not None else NullRecorder()
    try:
        if resume is not None:
            recorder.reopen(resume.run_id)
        else:
            start_record(recorder, settings, config, data, model, compute, prepared)
        run_id = compute.share(lambda: recorder.run_id)
        recorded = replace(prepared, config=config).to_json()  # once: every checkpoint carries the same text

        def save_checkpoint(position: Progress) -> None:
            if compute.is_main:
                state = checkpoint_state(recorded, data, model, optimizer, scheduler, scaler, position)
                path = checkpoint.local_path(settings, run_id)
                checkpoint.save(state, path)
                recorder.log_file(path, checkpoint.ARTIFACT_DIR)

        # 4. Fit, then record the model.
        log.info("training %d epochs on %d rows (MLflow run %s)", config.optim.epochs, data.row_count, run_id)
        run = Fit(
            wrapped,
            optimizer,
            scheduler,
            scaler,
            task,
            compute,
            config.optim.epochs,
            config.optim.early_stopping,
            config.checkpoint.every_steps,
            progress_bar,
            data.layout.numeric_columns if data.layout.image_shape is None else data.layout.features,
        )
        progress = fit(
            run, data.train, data.val, progress, lambda m: recorder.log_metrics(m.as_dict(), m.epoch), save_checkpoint
        )
        served = scoring_spec(
            config,
            data.read.plan.snapshot_schema,
            data.layout.encoding,
            task.class_weights if isinstance(task, Classification) else None,
        )
        if data.val is not None:  # the reference profile of its scores, and the decision threshold
            data.val.set_epoch(0)
            served, chosen = with_validation(served, validation_scores(model, served, data.val, compute))
            if chosen:
                recorder.log_metrics(chosen, progress.epoch)
        model.to("cpu").eval()
        recorder.log_model(model, tuple(t[:4] for t in sample), progress.epoch, served)
        recorder.finish("FINISHED")
    except BaseException as exc:
        recorder.finish("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    version = ""
    if config.tracking.registered_model and compute.is_main:
        version = register(settings, run_id, config.tracking.registered_model).version
    return TrainResult(
        run_id=run_id,
        experiment_id=recorder.experiment_id,
        pinned=pinned,
        config=config,
        row_count=data.row_count,
        digest=data.digest,
        classes=data.classes,
        history=tuple(progress.history),
        world_size=compute.world_size,
        model_version=version,
        model_id=recorder.model_id,
        experiment=config.tracking.experiment or settings.experiment,
    )


def resolved_config(config: PipelineConfig, data: TrainingData, compute: Compute) -> PipelineConfig:
    """The config with everything the run found filled in, so replay needs no table properties:
    the pinned snapshot id, the feature columns, the label classes, the image layout, the world size."""
    layout = data.layout
    return config.updated(
        {
            "data.table": data.pinned.table,
            "data.snapshot_id": data.pinned.snapshot_id,
            "data.ref": None,
            "data.as_of": None,
            "data.features": list(layout.features),
            "data.classes": [str(c) for c in data.classes] if config.data.task == "classification" else None,
            "data.image_shape": list(layout.image_shape) if layout.image_shape else None,
            "data.image_max": layout.image_scale if layout.image_shape else None,
            "data.split_by": "identifier" if data.read.plan.split_key else "position",
            "compute.nproc": compute.world_size,
        }
    )


def make_task(config: PipelineConfig, data: TrainingData) -> Task:
    """Classification over the vocabulary (balanced class weights when asked), or regression."""
    if config.data.task == "regression":
        return Regression()
    weights = None
    if config.optim.class_weights == "balanced":
        assert data.report.class_counts is not None
        weights = balanced_weights(data.report.class_counts, data.classes)
    return Classification(len(data.classes), weights)


def check_early_stopping(config: PipelineConfig, task: Task, data: TrainingData) -> None:
    """Raises ConfigError when early stopping names a metric this run will not have."""
    metric = config.optim.early_stopping.metric
    if metric is None:
        return
    known = [f"train_{name}" for name in task.metric_names] + (
        [f"val_{name}" for name in (*task.metric_names, *task.ranking_metric_names)] if data.val else []
    )
    if metric not in known:
        raise ConfigError(
            f"optim.early_stopping.metric: {metric!r} is not a metric of this run; choose from {', '.join(known)}"
        )


def make_optimizer(config: PipelineConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    optim = config.optim
    if optim.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=optim.lr, momentum=optim.momentum, weight_decay=optim.weight_decay
        )
    kind = torch.optim.AdamW if optim.optimizer == "adamw" else torch.optim.Adam
    return kind(model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)


def make_scheduler(config: PipelineConfig, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch: constant, cosine to zero over the epochs, or step decay."""
    optim = config.optim
    if optim.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=optim.epochs)
    if optim.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=optim.step_epochs, gamma=optim.step_gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def start_record(
    recorder: MlflowRecorder,
    settings: Settings,
    config: PipelineConfig,
    data: TrainingData,
    model: torch.nn.Module,
    compute: Compute,
    prepared: PreparedRun,
) -> None:
    """Create the MLflow run: lineage and source tags, a description, the full config as params, the datasets."""
    spec, pinned, context = data.read.spec, data.pinned, prepared.origin
    tags = {
        **lineage_tags(
            pinned,
            spec,
            data.layout,
            row_count=data.row_count,
            digest=data.digest,
            dagster_run_id=context.dagster_run_id,
            pipeline=context.pipeline,
            split_key=data.read.plan.split_key,
        ),
        **source_tags(context.launched_by),
        NOTE_TAG: run_description(
            pinned, context.pipeline, context.dagster_run_id, settings.dagster_ui_address, data.row_count
        ),
        **prepared.gates_tag(),
        **context.tags,
    }
    recorder.start(tags, config.tracking.run_name or run_name(pinned, context.pipeline))
    described = data.train.describe()
    recorder.log_params(
        {
            **to_params(config),
            "resolved.world_size": str(compute.world_size),
            "resolved.device": str(compute.device),
            "resolved.train_rows": str(data.train.profile.total_rows),
            "resolved.val_rows": str(data.val.profile.total_rows if data.val else 0),
            "resolved.row_groups": str(described["row_groups"]),
            "resolved.block_rows": str(described["block_rows"]),
            "resolved.rows_per_epoch_per_rank": str(described["rows_per_epoch"]),
            "resolved.dropped_rows_per_epoch": str(described["dropped_rows_per_epoch"]),
            "resolved.model_class": type(model).__name__,
            "resolved.parameters": str(sum(p.numel() for p in model.parameters())),
            **encoding_params(data.layout.encoding),
        }
    )
    if data.layout.encoding is not None:
        recorder.log_json(data.layout.encoding.to_dict(), ENCODING_ARTIFACT)
    datasets = {
        name: _dataset(data, config, loader)
        for loader, name in ((data.train, "training"), (data.val, "validation"))
        if loader is not None
    }
    for name, dataset in datasets.items():
        recorder.log_dataset(dataset, name)
    identities = {"training": (datasets["training"].name, data.digest)}
    if "validation" in datasets:
        identities["validation"] = (datasets["validation"].name, datasets["validation"].digest)
    recorder.start_model(context.pipeline or pinned.table, identities)


def _dataset(data: TrainingData, config: PipelineConfig, loader: IcebergLoader) -> IcebergSnapshotDataset:
    """One split of the run's rows as an MLflow dataset whose source can load exactly those rows."""
    spec, pinned = data.read.spec, data.pinned
    split = loader.config.split
    source = IcebergDatasetSource(
        pinned.catalog,
        pinned.table,
        pinned.snapshot_id,
        spec.row_filter or "",
        spec.sql or "",
        config.data.model_dump(mode="json"),
        split,
    )
    name = f"{pinned.table}@{pinned.snapshot_id}" + (f" ({split})" if split != "all" else "")
    return IcebergSnapshotDataset(
        source, name=name, digest=loader.plan_digest, schema=data.read.output_schema, num_rows=loader.profile.total_rows
    )


def checkpoint_state(
    prepared: str,
    data: TrainingData,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    progress: Progress,
) -> dict[str, Any]:
    """Everything a resumed run needs (see ``training.checkpoint``): the prepared run (its JSON, with the
    resolved config) and the states."""
    return {
        "prepared": prepared,
        "classes": list(data.classes),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": checkpoint.rng_states(),
        "loader": data.train.state_dict(),
        "progress": progress.to_state(),
    }


def restore(
    state: dict[str, Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    data: TrainingData,
    compute: Compute,
) -> Progress:
    """Put a checkpoint's states back, in the order a fresh run would have reached them."""
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    checkpoint.restore_rng(state["rng"])
    data.train.load_state_dict({**state["loader"], "rank": compute.rank})
    return Progress.from_state(state["progress"])


def resume_from(settings: Settings, run_id: str) -> tuple[PreparedRun, Resume]:
    """The prepared run (as its checkpoint recorded it) and the checkpoint of a killed run, to continue it.

    Raises:
        RunNotFoundError: no such run. CheckpointError: it has no readable checkpoint.
    """
    run = get_run(settings, run_id)
    if run.info.status == "FINISHED":
        raise CheckpointError(
            f"run {run_id} already finished; there is nothing to resume (train again with --from-run {run_id})"
        )
    path = checkpoint.local_path(settings, run_id)
    if not path.is_file():
        recorder = MlflowRecorder(tracking_client(settings), settings)
        recorder.run_id = run_id
        try:
            path = recorder.download(
                f"{checkpoint.ARTIFACT_DIR}/{checkpoint.ARTIFACT_NAME}",
                Path(tempfile.mkdtemp(prefix="icetrain-resume-")),
            )
        except (MlflowException, OSError) as exc:  # no such artifact
            raise CheckpointError(
                f"run {run_id} has no checkpoint to resume from (it stopped before its first one)"
            ) from exc
    state = checkpoint.load(path, run_id)
    if "prepared" not in state:
        raise CheckpointError(
            f"run {run_id}'s checkpoint was written by an older icetrain; train again with --from-run {run_id}"
        )
    return PreparedRun.from_json(state["prepared"]).resuming(run_id), Resume(run_id, state)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point for ``python -m training.train`` and torchrun: one line and exit 1 on a user mistake."""
    parser = argparse.ArgumentParser(prog="python -m training.train", description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", help="a pipeline declared in the pipelines file")
    parser.add_argument("--config", help="the pipelines file (default: $ICETRAIN_CONFIG or ./icetrain.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--prepared", help=argparse.SUPPRESS)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    rank = _env_rank()
    try:
        result = _run_from_args(args)
    except IcetrainError as exc:
        if rank == 0:
            print(f"icetrain: error: {exc}", file=sys.stderr)
            if args.prepared:  # tell the launching process what went wrong, as one line
                Path(args.prepared).with_suffix(".error").write_text(str(exc))
        return 1
    if rank == 0:
        print(
            f"trained on {result.pinned.table} snapshot {result.pinned.snapshot_id} with {result.world_size} process(es); MLflow run {result.run_id}"
        )
        if args.prepared:
            Path(args.prepared).with_suffix(".result.json").write_text(result.to_json())
    return 0


def _run_from_args(args: argparse.Namespace) -> TrainResult:
    settings = Settings.from_env()
    if args.prepared:
        prepared = PreparedRun.from_json(Path(args.prepared).read_text())
        return run_prepared(settings, prepared, progress_bar=not args.no_progress)
    from pipeline.config.project import load_project

    if not args.pipeline:
        raise ConfigError("give --pipeline NAME (declared in the pipelines file)")
    pipeline = load_project(args.config).pipeline(args.pipeline)
    return train(
        settings,
        pipeline.with_overrides(args.overrides),
        pipeline=pipeline.name,
        progress_bar=not args.no_progress,
        launched_by="torchrun",
    )


def _env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


if __name__ == "__main__":
    sys.exit(main())
