"""Small models for icetrain's two kinds of feature: images and tabular rows."""

from __future__ import annotations

import torch
from torch import nn

from pipeline.errors import ConfigError


class SmallCNN(nn.Module):
    """Two conv blocks and a linear head, for small images such as 8x8 digits."""

    def __init__(self, in_channels: int, num_classes: int, width: int = 32):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width // 2, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(width // 2, width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
        )
        self.head = nn.Linear(width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


class TabularMLP(nn.Module):
    """Standardised inputs into two hidden layers.

    The column means and deviations of the training split are stored in the model, so users
    need not scale columns and the logged model carries its own preprocessing.
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128, train_features: torch.Tensor | None = None):
        super().__init__()
        if train_features is not None and len(train_features):
            mean = train_features.mean(0)
            std = train_features.std(0, unbiased=False).clamp_min(1e-6)
        else:
            mean, std = torch.zeros(in_features), torch.ones(in_features)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)


def build_model(
    kind: str,
    feature_shape: tuple[int, ...],
    num_classes: int,
    train_features: torch.Tensor | None = None,
) -> nn.Module:
    """A model for per-row features of ``feature_shape``: 'cnn' for [C, H, W], 'mlp' for [F].

    ``train_features`` (the training split) lets the MLP standardise its inputs.

    Raises:
        ConfigError: the kind does not fit the feature shape, or there are fewer than 2 classes.
    """
    if num_classes < 2:
        raise ConfigError(f"need at least 2 label classes to train a classifier, found {num_classes}")
    chosen = kind if kind != "auto" else ("cnn" if len(feature_shape) == 3 else "mlp")
    if chosen == "cnn":
        if len(feature_shape) != 3:
            raise ConfigError(f"model 'cnn' needs image features [C, H, W], got per-row shape {list(feature_shape)}")
        return SmallCNN(feature_shape[0], num_classes)
    if chosen == "mlp":
        in_features = 1
        for dim in feature_shape:
            in_features *= dim
        flat = train_features.reshape(len(train_features), -1) if train_features is not None else None
        model: nn.Module = TabularMLP(in_features, num_classes, train_features=flat)
        return nn.Sequential(nn.Flatten(), model) if len(feature_shape) > 1 else model
    raise ConfigError(f"unknown model kind {kind!r}; choose auto, cnn or mlp")
