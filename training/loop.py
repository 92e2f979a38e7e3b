"""The training loop: epochs over a train split, evaluation on a validation split."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from pipeline.config import TrainConfig


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


def split_indices(num_rows: int, val_fraction: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A train/validation split of row positions, the same for the same seed and row count."""
    order = torch.randperm(num_rows, generator=generator)
    val_count = int(round(num_rows * val_fraction))
    return order[val_count:], order[:val_count]


def fit(
    model: nn.Module,
    train: TensorDataset,
    val: TensorDataset | None,
    config: TrainConfig,
    device: torch.device,
    generator: torch.Generator,
    on_epoch: Callable[[EpochMetrics], None] = lambda metrics: None,
) -> list[EpochMetrics]:
    """Train ``model`` for ``config.epochs`` epochs, calling ``on_epoch`` after each.

    Batches are shuffled by ``generator``, so the same seed gives the same order.
    """
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    loader = DataLoader(train, batch_size=config.batch_size, shuffle=True, generator=generator, drop_last=False)
    history = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        total_loss, correct, seen = 0.0, 0, 0
        batches = tqdm(loader, desc=f"epoch {epoch}/{config.epochs}", leave=False, disable=None if config.progress else True)
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
        val_loss, val_accuracy = evaluate(model, val, config.batch_size, device) if val is not None and len(val) else (None, None)
        metrics = EpochMetrics(epoch, total_loss / seen, correct / seen, val_loss, val_accuracy)
        if config.progress:
            tqdm.write(metrics.describe())
        on_epoch(metrics)
        history.append(metrics)
    return history


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorDataset, batch_size: int, device: torch.device) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` on ``data``."""
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct = 0.0, 0
    for features, labels in DataLoader(data, batch_size=batch_size):
        features, labels = features.to(device), labels.to(device)
        logits = model(features)
        total_loss += float(loss_fn(logits, labels))
        correct += int((logits.argmax(1) == labels).sum())
    return total_loss / len(data), correct / len(data)
