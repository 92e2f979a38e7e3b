"""The training loop: epochs over a train loader, evaluation on a validation loader."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from pipeline.config import TrainConfig

Batch = tuple[torch.Tensor, torch.Tensor]


class EpochLoader(Iterable[Batch], Sized, Protocol):
    """What the loop needs from a loader: batches, a length, and a per-epoch reshuffle."""

    def set_epoch(self, epoch: int) -> None: ...


@dataclass(frozen=True)
class EpochMetrics:
    """Loss and accuracy of one epoch; validation values are None without a validation split."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None

    def as_dict(self) -> dict[str, float]:
        values = {"train_loss": self.train_loss, "train_accuracy": self.train_accuracy}
        if self.val_loss is not None and self.val_accuracy is not None:
            values.update(val_loss=self.val_loss, val_accuracy=self.val_accuracy)
        return values

    def describe(self) -> str:
        text = f"epoch {self.epoch}: train loss {self.train_loss:.4f} acc {self.train_accuracy:.3f}"
        if self.val_loss is not None:
            text += f" | val loss {self.val_loss:.4f} acc {self.val_accuracy:.3f}"
        return text


def fit(
    model: nn.Module,
    train: EpochLoader,
    val: EpochLoader | None,
    config: TrainConfig,
    device: torch.device,
    on_epoch: Callable[[EpochMetrics], None] = lambda metrics: None,
) -> list[EpochMetrics]:
    """Train ``model`` for ``config.epochs`` epochs, calling ``on_epoch`` after each.

    The loader decides the order (seeded, per epoch), so the same seed trains the same model.
    """
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    history = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        train.set_epoch(epoch - 1)
        total_loss, correct, seen = 0.0, 0, 0
        batches = tqdm(train, total=len(train), desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=None if config.progress else True)
        for features, labels in batches:
            features, labels = features.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            logits = model(features)
            loss = loss_fn(logits, labels)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(labels)
            correct += int((logits.argmax(1) == labels).sum())
            seen += len(labels)
        val_loss, val_accuracy = evaluate(model, val, device) if val is not None else (None, None)
        metrics = EpochMetrics(epoch, total_loss / seen, correct / seen, val_loss, val_accuracy)
        if config.progress:
            tqdm.write(metrics.describe())
        on_epoch(metrics)
        history.append(metrics)
    return history


@torch.no_grad()
def evaluate(model: nn.Module, data: EpochLoader, device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` over one pass of ``data``."""
    model.eval()
    data.set_epoch(0)
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct, seen = 0.0, 0, 0
    for features, labels in data:
        features, labels = features.to(device), labels.to(device)
        logits = model(features)
        total_loss += float(loss_fn(logits, labels))
        correct += int((logits.argmax(1) == labels).sum())
        seen += len(labels)
    return total_loss / seen, correct / seen
