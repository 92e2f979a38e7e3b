"""Models by name: built-ins and users' own factories, all called the same way.

A factory is ``function(feature_shape, num_classes, **kwargs)`` returning a ``torch.nn.Module``;
``feature_shape`` is the per-row shape (``(1, 8, 8)`` for an image, ``(F,)`` for F numeric
columns) and ``num_classes`` is 1 for regression. A factory that declares a ``sample``
parameter also gets a tensor of training features (for input statistics). With categorical
features the factory must declare ``cardinalities`` (``{column: number of indices}``, in the
order of the categories tensor's columns) and its module is called ``model(numeric,
categories)``. ``model.factory`` names one: a built-in name from ``BUILTIN_FACTORIES`` or
``"package.module:function"``; the built-in ``mlp``, ``linear`` and ``auto`` embed each
categorical column (``model.kwargs.embedding_dims: {column: size}`` overrides the default size).
"""

from __future__ import annotations

import importlib
import inspect
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from pipeline.config.tree import ModelSection
from pipeline.errors import ModelError

ModelFactory = Callable[..., nn.Module]

BUILTIN_FACTORIES = {
    "auto": "training.models:auto",
    "cnn": "training.models:small_cnn",
    "mlp": "training.models:tabular_mlp",
    "linear": "training.models:linear",
}


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


class Standardize(nn.Module):
    """Subtracts the training split's column means and divides by their deviations.

    Stored in the model, so users need not scale columns and the logged model carries its
    own preprocessing.
    """

    def __init__(self, in_features: int, sample: torch.Tensor | None = None):
        super().__init__()
        if sample is not None and len(sample):
            flat = sample.reshape(len(sample), -1).float()
            mean, std = flat.mean(0), flat.std(0, unbiased=False).clamp_min(1e-6)
        else:
            mean, std = torch.zeros(in_features), torch.ones(in_features)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.reshape(len(x), -1) - self.mean) / self.std


def embedding_size(cardinality: int) -> int:
    """The default embedding width for a column of ``cardinality`` indices (fast.ai's rule, at most 50)."""
    return max(2, min(50, round(1.6 * cardinality**0.56)))


class CategoryEmbeddings(nn.Module):
    """One embedding per categorical column, concatenated: ``[B, C]`` int64 indices -> ``[B, width]``."""

    def __init__(self, cardinalities: Mapping[str, int], sizes: Mapping[str, int] | None = None):
        super().__init__()
        sizes = dict(sizes or {})
        unknown = sorted(set(sizes) - set(cardinalities))
        if unknown:
            raise ModelError(
                f"model.kwargs.embedding_dims names {', '.join(unknown)}, not categorical columns ({', '.join(cardinalities)})"
            )
        self.tables = nn.ModuleList(
            nn.Embedding(count, int(sizes.get(name) or embedding_size(count))) for name, count in cardinalities.items()
        )
        self.width = sum(table.embedding_dim for table in self.tables)

    def forward(self, categories: torch.Tensor) -> torch.Tensor:
        return torch.cat([table(categories[:, j]) for j, table in enumerate(self.tables)], dim=1)


class Tabular(nn.Module):
    """Standardised numeric features beside embedded categories, into a head (``forward(numeric, categories)``)."""

    def __init__(
        self,
        in_features: int,
        cardinalities: Mapping[str, int],
        head: Callable[[int], nn.Module],
        sample: torch.Tensor | None = None,
        embedding_dims: Mapping[str, int] | None = None,
    ):
        super().__init__()
        self.in_features = in_features
        self.standardize = Standardize(in_features, sample)
        self.embed = CategoryEmbeddings(cardinalities, embedding_dims)
        self.head = head(in_features + self.embed.width)

    def forward(self, x: torch.Tensor, categories: torch.Tensor) -> torch.Tensor:
        parts = [self.standardize(x)] if self.in_features else []
        return self.head(torch.cat([*parts, self.embed(categories)], dim=1))


def _mlp_head(num_classes: int, hidden: int) -> Callable[[int], nn.Module]:
    def head(width: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(width, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
            nn.Linear(hidden // 2, num_classes),
        )

    return head


class TabularMLP(nn.Module):
    """Standardised inputs into two hidden layers."""

    def __init__(self, in_features: int, num_classes: int, hidden: int = 128, sample: torch.Tensor | None = None):
        super().__init__()
        self.standardize = Standardize(in_features, sample)
        self.net = _mlp_head(num_classes, hidden)(in_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.standardize(x))


def small_cnn(feature_shape: tuple[int, ...], num_classes: int, width: int = 32) -> nn.Module:
    """A small CNN for image features ``[C, H, W]``."""
    if len(feature_shape) != 3:
        raise ModelError(f"model 'cnn' needs image features [C, H, W], got per-row shape {list(feature_shape)}")
    return SmallCNN(feature_shape[0], num_classes, width)


def tabular_mlp(
    feature_shape: tuple[int, ...],
    num_classes: int,
    hidden: int = 128,
    sample: torch.Tensor | None = None,
    cardinalities: Mapping[str, int] | None = None,
    embedding_dims: Mapping[str, int] | None = None,
) -> nn.Module:
    """An MLP over the flattened features, standardised with the training sample's statistics,
    and over one embedding per categorical column."""
    if cardinalities:
        return Tabular(math.prod(feature_shape), cardinalities, _mlp_head(num_classes, hidden), sample, embedding_dims)
    return TabularMLP(math.prod(feature_shape), num_classes, hidden, sample)


def linear(
    feature_shape: tuple[int, ...],
    num_classes: int,
    sample: torch.Tensor | None = None,
    cardinalities: Mapping[str, int] | None = None,
    embedding_dims: Mapping[str, int] | None = None,
) -> nn.Module:
    """Standardised features (and embedded categories) into one linear layer (logistic or linear regression)."""
    in_features = math.prod(feature_shape)
    if cardinalities:
        return Tabular(in_features, cardinalities, lambda width: nn.Linear(width, num_classes), sample, embedding_dims)
    return nn.Sequential(Standardize(in_features, sample), nn.Linear(in_features, num_classes))


def auto(
    feature_shape: tuple[int, ...],
    num_classes: int,
    sample: torch.Tensor | None = None,
    cardinalities: Mapping[str, int] | None = None,
) -> nn.Module:
    """The CNN for image features, else the MLP."""
    if len(feature_shape) == 3:
        return small_cnn(feature_shape, num_classes)
    return tabular_mlp(feature_shape, num_classes, sample=sample, cardinalities=cardinalities)


def resolve_factory(name: str) -> ModelFactory:
    """The callable ``model.factory`` names.

    Raises:
        ModelError: not a built-in name nor an importable ``module:function``.
    """
    target = BUILTIN_FACTORIES.get(name, name)
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ModelError(
            f"model.factory {name!r} is neither a built-in ({', '.join(BUILTIN_FACTORIES)}) nor 'package.module:function'"
        )
    _importable_from_project()
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # any import-time failure of user code means the same to the user
        raise ModelError(
            f"model.factory {name!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})"
        ) from exc
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ModelError(f"model.factory {name!r}: module {module_name!r} has no function {attribute!r}")
    return factory


def build_model(
    section: ModelSection,
    feature_shape: tuple[int, ...],
    num_classes: int,
    sample: torch.Tensor | None = None,
    cardinalities: Mapping[str, int] | None = None,
) -> nn.Module:
    """Call the configured factory and check that it returned a module.

    Raises:
        ModelError: the factory cannot be imported, rejects its arguments, takes no
            ``cardinalities`` while some features are categories, fails, or returns something
            that is not a ``torch.nn.Module``.
    """
    factory = resolve_factory(section.factory)
    kwargs = dict(section.kwargs)
    if sample is not None and _accepts(factory, "sample"):
        kwargs["sample"] = sample
    if cardinalities:
        if not _accepts(factory, "cardinalities"):
            raise ModelError(
                f"model.factory {section.factory!r} takes no 'cardinalities', but {', '.join(cardinalities)} are categorical features;"
                " declare a cardinalities parameter ({column: number of indices}) and forward(numeric, categories), or use 'mlp' or 'linear'"
            )
        kwargs["cardinalities"] = dict(cardinalities)
    try:
        model = factory(tuple(feature_shape), num_classes, **kwargs)
    except ModelError:
        raise
    except TypeError as exc:
        raise ModelError(
            f"model.factory {section.factory!r} rejected its arguments (feature_shape, num_classes, **model.kwargs {sorted(section.kwargs)}): {exc}"
        ) from exc
    except Exception as exc:
        raise ModelError(f"model.factory {section.factory!r} failed: {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ModelError(f"model.factory {section.factory!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _accepts(factory: ModelFactory, parameter: str) -> bool:
    try:
        return parameter in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False


def _importable_from_project() -> None:
    """Let ``mypkg.models:f`` import from the directory icetrain runs in, as ``python -m`` would."""
    here = str(Path.cwd())
    if here not in sys.path:
        sys.path.insert(0, here)


__all__ = ["BUILTIN_FACTORIES", "ModelFactory", "build_model", "resolve_factory"]
