"""Pictures of runs: learning curves, for Dagster's materialization metadata and MLflow."""

from __future__ import annotations

import io
import itertools
from collections.abc import Mapping, Sequence
from typing import Any


def learning_curves_png(history: Sequence[Mapping[str, float]], title: str = "") -> bytes:
    """Loss and every other metric per epoch, as a small PNG (matplotlib's Agg backend, no display)."""
    plt = pyplot()
    epochs = list(range(1, len(history) + 1))
    names = sorted({name for values in history for name in values})
    losses = [n for n in names if n.endswith("loss")]
    others = [n for n in names if n not in losses]
    figure, axes = plt.subplots(1, 2 if others else 1, figsize=(8 if others else 4, 3), squeeze=False)
    for axis, group, label in ((axes[0][0], losses, "loss"), *(((axes[0][1], others, "metric"),) if others else ())):
        for name in group:
            axis.plot(epochs, [values.get(name, float("nan")) for values in history], marker="o", label=name)
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.legend(fontsize=7)
    if title:
        figure.suptitle(title, fontsize=9)
    return figure_png(figure)


def score_distribution_png(profile: Any, reference: Any | None = None, title: str = "") -> bytes:
    """The share of scores in each bin of a ``ScoreProfile``, beside a reference profile's (the validation scores)."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5, 3))
    bins = range(len(profile.counts))
    labels = _bin_labels(profile.edges)
    if reference is not None:
        axis.bar([b - 0.2 for b in bins], reference.fractions(), width=0.4, label="validation (reference)", alpha=0.7)
    axis.bar([b + (0.2 if reference is not None else 0) for b in bins], profile.fractions(), width=0.4, label="scored")
    axis.set_xticks(list(bins), labels, rotation=45, fontsize=6)
    axis.set_ylabel("share of rows")
    axis.legend(fontsize=7)
    if title:
        axis.set_title(title, fontsize=9)
    return figure_png(figure)


def monitoring_png(
    windows: Sequence[str],
    realized: Sequence[float | None],
    validation: Sequence[float | None],
    psi: Sequence[float | None],
    metric: str,
    max_psi: float,
    title: str = "",
) -> bytes:
    """Per scoring window: the realized metric beside the scoring model's validation score, and the prediction PSI."""
    plt = pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(7, 4.5), sharex=True)
    places = list(range(len(windows)))

    def series(values: Sequence[float | None]) -> list[float]:
        return [float("nan") if v is None else float(v) for v in values]

    top.plot(places, series(realized), marker="o", label=f"realized {metric}")
    top.plot(places, series(validation), linestyle="--", label=f"validation {metric} (the scoring model's)")
    top.set_ylabel(metric)
    top.legend(fontsize=7)
    bottom.bar(places, series(psi), label="prediction PSI")
    bottom.axhline(max_psi, color="red", linewidth=1, label=f"max {max_psi}")
    bottom.set_ylabel("PSI")
    bottom.legend(fontsize=7)
    bottom.set_xticks(places, [w[-8:] for w in windows], rotation=45, fontsize=6)
    bottom.set_xlabel("scoring window")
    if title:
        figure.suptitle(title, fontsize=9)
    return figure_png(figure)


def _bin_labels(edges: Sequence[float]) -> list[str]:
    bounds = ["-inf", *(f"{e:.3g}" for e in edges), "inf"]
    return [f"[{low}, {high})" for low, high in itertools.pairwise(bounds)]


def figure_png(figure: Any) -> bytes:
    """A matplotlib figure as PNG bytes; the figure is closed."""
    from matplotlib import pyplot as plt

    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()


def pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


__all__ = ["figure_png", "learning_curves_png", "pyplot", "score_distribution_png"]
