"""The training loop: epochs over the train loader, evaluation on the validation loader.

The loop owns no policy about where things are recorded: it calls ``on_epoch`` with each
epoch's metrics and ``on_checkpoint`` with its resumable position, and the train script
decides what to do with them. Its position (``Progress``) plus the model, optimizer,
scheduler, scaler, RNG and loader states is all a resumed run needs to continue exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.config.tree import EarlyStopping
from pipeline.errors import DivergedError
from training.compute import Compute
from training.tasks import Task, lower_is_better, ranking_metrics

Batch = tuple[torch.Tensor, torch.Tensor]


class EpochLoader(Iterable[Batch], Sized, Protocol):
    """What the loop needs from a loader: batches, a length, a per-epoch reshuffle, a position."""

    def set_epoch(self, epoch: int) -> None: ...
    def state_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch's metrics: ``train_<name>`` and, with a validation split, ``val_<name>``."""

    epoch: int
    values: dict[str, float]

    def as_dict(self) -> dict[str, float]:
        return dict(self.values)

    def describe(self) -> str:
        return f"epoch {self.epoch}: " + "  ".join(f"{name} {value:.4f}" for name, value in self.values.items())


@dataclass
class Progress:
    """Where the loop is: the epoch in progress (0-based), optimizer steps so far, this
    epoch's metric sums, finished epochs, and the early-stopping state."""

    epoch: int = 0
    step: int = 0
    sums: torch.Tensor | None = None
    history: list[EpochMetrics] = field(default_factory=list)
    best: float | None = None
    stale_epochs: int = 0
    stopped_early: bool = False

    def to_state(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "step": self.step,
            "sums": None if self.sums is None else self.sums.cpu(),
            "history": [(m.epoch, m.values) for m in self.history],
            "best": self.best,
            "stale_epochs": self.stale_epochs,
            "stopped_early": self.stopped_early,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        return cls(
            epoch=state["epoch"],
            step=state["step"],
            sums=state["sums"],
            history=[EpochMetrics(epoch, values) for epoch, values in state["history"]],
            best=state["best"],
            stale_epochs=state["stale_epochs"],
            stopped_early=state["stopped_early"],
        )


@dataclass
class Fit:
    """What one training run optimises, and how."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    task: Task
    compute: Compute
    epochs: int
    early_stopping: EarlyStopping
    checkpoint_every: int | None = None
    show_progress: bool = True
    feature_names: tuple[str, ...] = ()


class Health:
    """Watches every step's loss and inputs on the device, without a host sync per step.

    The first step whose loss is not finite, and which feature columns held NaN or
    infinities, are kept as device tensors and read once an epoch, when the loop syncs for
    its metrics anyway; a non-finite loss then ends the run in one line.
    """

    def __init__(self, device: torch.device):
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.bad_columns: torch.Tensor | None = None

    def watch(self, step: int, loss: torch.Tensor, features: torch.Tensor) -> None:
        unseen = self.first_bad_step < 0
        self.first_bad_step = torch.where(unseen & ~torch.isfinite(loss.detach()), step, self.first_bad_step)
        flat = (
            features.detach().reshape(features.shape[0], -1)
            if features.is_floating_point() and features.numel()
            else None
        )
        if flat is not None:
            bad = (~torch.isfinite(flat)).any(dim=0)
            self.bad_columns = (
                bad if self.bad_columns is None or self.bad_columns.shape != bad.shape else self.bad_columns | bad
            )

    def check(self, metrics: EpochMetrics, feature_names: tuple[str, ...]) -> None:
        """Raise when this epoch's losses are not finite.

        Raises:
            DivergedError: the step and the features that held NaN or infinities.
        """
        losses = {
            name: value for name, value in metrics.values.items() if name.endswith("_loss") and not math.isfinite(value)
        }
        if not losses:
            return
        name, value = next(iter(losses.items()))
        step = int(self.first_bad_step.item())
        where = f"at step {step} (epoch {metrics.epoch})" if step >= 0 else f"in epoch {metrics.epoch}"
        columns = self._bad_feature_names(feature_names)
        if columns:
            why = f"features holding NaN or infinite values: {', '.join(columns)}"
        elif name.startswith("val_"):
            why = "the validation rows' features hold NaN or infinite values"
        else:
            why = "no feature held NaN or infinities (a learning rate too high?)"
        raise DivergedError(f"{name} is {value} {where}; {why}; the run is ended FAILED")

    def _bad_feature_names(self, names: tuple[str, ...]) -> list[str]:
        if self.bad_columns is None or not bool(self.bad_columns.any()):
            return []
        flags = self.bad_columns.cpu().tolist()
        if len(names) == len(flags):
            return [n for n, bad in zip(names, flags) if bad]
        return [
            f"{names[0]} ({sum(flags)} of {len(flags)} values)"
            if len(names) == 1
            else f"{sum(flags)} of {len(flags)} feature values"
        ]


def fit(
    run: Fit,
    train: EpochLoader,
    val: EpochLoader | None,
    progress: Progress,
    on_epoch: Callable[[EpochMetrics], None] = lambda metrics: None,
    on_checkpoint: Callable[[Progress], None] = lambda progress: None,
) -> Progress:
    """Train from ``progress`` (a fresh one, or a resumed one mid-epoch) to the last epoch or an early stop.

    The loader decides the order (seeded, per epoch), so the same seed trains the same
    model, and a resumed run the same one as an uninterrupted run.
    """
    model, compute = run.model, run.compute
    loss_fn = run.task.loss_fn(compute.device)
    health = Health(compute.device)
    while progress.epoch < run.epochs and not progress.stopped_early:
        model.train()
        train.set_epoch(progress.epoch)
        sums = progress.sums.to(compute.device) if progress.sums is not None else None
        batches = tqdm(
            train,
            total=len(train),
            desc=f"epoch {progress.epoch + 1}/{run.epochs}",
            leave=False,
            disable=None if run.show_progress and compute.is_main else True,
        )
        for *inputs, targets in batches:  # (features, targets) or (numeric, categories, targets)
            inputs = [t.to(compute.device, non_blocking=True) for t in inputs]
            targets = targets.to(compute.device, non_blocking=True)
            run.optimizer.zero_grad(set_to_none=True)
            with compute.autocast():
                outputs = model(*inputs)
                loss = loss_fn(outputs, targets)
            health.watch(progress.step + 1, loss, inputs[0])
            run.scaler.scale(loss).backward()
            run.scaler.step(run.optimizer)
            run.scaler.update()
            batch_sums = run.task.sums(outputs, targets)
            sums = batch_sums if sums is None else sums + batch_sums
            progress.step += 1
            if run.checkpoint_every and progress.step % run.checkpoint_every == 0:
                progress.sums = sums
                on_checkpoint(progress)
        metrics = _epoch_metrics(run, progress.epoch + 1, sums, val)
        health.check(metrics, run.feature_names)
        if compute.is_main and run.show_progress:
            tqdm.write(metrics.describe())
        on_epoch(metrics)
        run.scheduler.step()
        progress.history.append(metrics)
        _early_stopping(run.early_stopping, metrics, progress)
        progress.epoch, progress.sums = progress.epoch + 1, None
        on_checkpoint(progress)
    return progress


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, data: EpochLoader, compute: Compute) -> dict[str, float]:
    """The task's metrics of ``model`` over one pass of ``data``, summed across ranks."""
    model.eval()
    data.set_epoch(0)
    sums: torch.Tensor | None = None
    scores: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for *inputs, targets in data:
        inputs = [t.to(compute.device, non_blocking=True) for t in inputs]
        targets = targets.to(compute.device, non_blocking=True)
        with compute.autocast():
            outputs = model(*inputs)
        batch_sums = task.sums(outputs, targets)
        sums = batch_sums if sums is None else sums + batch_sums
        if task.ranking_metric_names:
            scores.append(task.scores(outputs).cpu())
            labels.append(targets.cpu())
    values = task.metrics(compute.all_sum(_or_zeros(sums, task, compute)))
    if task.ranking_metric_names:
        all_scores, all_labels = (
            compute.gather(torch.cat(scores) if scores else torch.empty(0)),
            compute.gather(torch.cat(labels) if labels else torch.empty(0)),
        )
        values.update(ranking_metrics(all_scores.numpy(), all_labels.numpy()))
    return values


def _epoch_metrics(run: Fit, epoch: int, sums: torch.Tensor | None, val: EpochLoader | None) -> EpochMetrics:
    train_sums = run.compute.all_sum(_or_zeros(sums, run.task, run.compute))
    values = {f"train_{name}": value for name, value in run.task.metrics(train_sums).items()}
    if val is not None:
        inner = run.model.module if isinstance(run.model, nn.parallel.DistributedDataParallel) else run.model
        values.update({f"val_{name}": value for name, value in evaluate(inner, run.task, val, run.compute).items()})
    return EpochMetrics(epoch, values)


def _or_zeros(sums: torch.Tensor | None, task: Task, compute: Compute) -> torch.Tensor:
    """A rank with no batches still joins the all-reduce, with zero sums of the right length."""
    return sums if sums is not None else torch.zeros(task.sums_width, dtype=torch.float64, device=compute.device)


def _early_stopping(rule: EarlyStopping, metrics: EpochMetrics, progress: Progress) -> None:
    if rule.metric is None:
        return
    value = metrics.values[rule.metric]
    downwards = rule.mode == "min" or (rule.mode == "auto" and lower_is_better(rule.metric))
    improved = progress.best is None or (value < progress.best if downwards else value > progress.best)
    if improved and not math.isnan(value):
        progress.best, progress.stale_epochs = value, 0
    else:
        progress.stale_epochs += 1
        progress.stopped_early = progress.stale_epochs >= rule.patience


__all__ = ["EpochMetrics", "Fit", "Progress", "evaluate", "fit"]
