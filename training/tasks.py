"""What is learned: the loss and the metrics of classification and regression.

Metrics are built from per-batch sums (a small float64 vector), so they add up across
batches, DDP ranks and a resumed epoch without loss of exactness.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.data.scores import ranking_metrics


@dataclass(frozen=True)
class Classification:
    """Cross-entropy over class indices, optionally weighted; accuracy, and precision/recall of class 1 when binary."""

    num_classes: int
    class_weights: torch.Tensor | None = None

    @property
    def num_outputs(self) -> int:
        return self.num_classes

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("loss", "accuracy", "precision", "recall") if self.num_classes == 2 else ("loss", "accuracy")

    @property
    def ranking_metric_names(self) -> tuple[str, ...]:
        """Metrics of the whole ranking of scores, reported on the validation split of binary tasks."""
        return ("roc_auc", "pr_auc") if self.num_classes == 2 else ()

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        """The positive class's probability, for ranking metrics."""
        return torch.softmax(outputs.detach().float(), dim=1)[:, 1]

    def loss_fn(self, device: torch.device) -> nn.Module:
        weight = self.class_weights.to(device) if self.class_weights is not None else None
        return nn.CrossEntropyLoss(weight=weight)

    sums_width = 6

    def sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[loss sum, correct, rows, true positives, predicted positives, actual positives]."""
        logits = outputs.detach().float()
        predicted = logits.argmax(1)
        loss = F.cross_entropy(logits, targets, reduction="sum")
        positive, actual = predicted == 1, targets == 1
        return torch.stack(
            [loss.double(), (predicted == targets).sum().double(), torch.tensor(float(len(targets)), dtype=torch.float64, device=logits.device),
             (positive & actual).sum().double(), positive.sum().double(), actual.sum().double()]
        )  # fmt: skip

    def metrics(self, sums: torch.Tensor) -> dict[str, float]:
        loss, correct, rows, true_pos, predicted_pos, actual_pos = sums.tolist()
        values = {"loss": loss / rows, "accuracy": correct / rows}
        if self.num_classes == 2:
            values["precision"] = true_pos / predicted_pos if predicted_pos else 0.0
            values["recall"] = true_pos / actual_pos if actual_pos else 0.0
        return values


@dataclass(frozen=True)
class Regression:
    """Mean squared error on a float target; reports MSE as the loss, and MAE."""

    @property
    def num_outputs(self) -> int:
        return 1

    @property
    def metric_names(self) -> tuple[str, ...]:
        return ("loss", "mae")

    @property
    def ranking_metric_names(self) -> tuple[str, ...]:
        return ()

    def scores(self, outputs: torch.Tensor) -> torch.Tensor:
        return outputs.detach().float().reshape(-1)

    def loss_fn(self, device: torch.device) -> nn.Module:
        return _SquaredError()

    sums_width = 3

    def sums(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[squared error sum, absolute error sum, rows]."""
        error = outputs.detach().float().reshape(-1) - targets.float()
        rows = torch.tensor(float(len(targets)), dtype=torch.float64, device=error.device)
        return torch.stack([(error * error).sum().double(), error.abs().sum().double(), rows])

    def metrics(self, sums: torch.Tensor) -> dict[str, float]:
        squared, absolute, rows = sums.tolist()
        return {"loss": squared / rows, "mae": absolute / rows}


class _SquaredError(nn.Module):
    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(outputs.reshape(-1).float(), targets.float())


Task = Classification | Regression


def lower_is_better(metric: str) -> bool:
    """Losses and errors improve downwards; accuracy, precision, recall and AUCs upwards."""
    return any(word in metric for word in ("loss", "mae", "error"))


def balanced_weights(class_counts: dict[object, int], classes: tuple[object, ...]) -> torch.Tensor:
    """Weight of class k: rows / (classes * rows of k); a class with no rows gets weight 0."""
    counts = torch.tensor([float(_count_of(class_counts, c)) for c in classes], dtype=torch.float32)
    total = counts.sum()
    weights = torch.where(counts > 0, total / (len(classes) * counts.clamp_min(1)), torch.zeros_like(counts))
    return weights


def _count_of(counts: dict[object, int], cls: object) -> int:
    for value, count in counts.items():
        if value == cls or str(value) == str(cls):
            return count
    return 0


__all__ = ["Classification", "Regression", "Task", "balanced_weights", "lower_is_better", "ranking_metrics"]
