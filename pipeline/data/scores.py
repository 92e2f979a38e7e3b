"""How a model's scores are spread, so that later scores can be binned the same way and compared (prediction drift).

A model's score of a row is one number: the positive class's probability for two classes,
the predicted class's index for more, the predicted value for a regression. Its reference
profile is recorded at training time from the validation rows; the scores of every later
scoring job are counted over the same bins, and the two compared by the population stability
index that the drift gate uses (``pipeline.data.quality.psi``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.data.quality import BINS, FeatureProfile, psi


@dataclass(frozen=True)
class ScoreProfile:
    """Counts of scores over fixed bins: ``edges`` (ascending; the outer bins are open-ended)."""

    edges: tuple[float, ...]
    counts: tuple[int, ...]
    mean: float

    @property
    def rows(self) -> int:
        return int(sum(self.counts))

    @classmethod
    def reference(cls, scores: np.ndarray, kind: str, classes: int = 0) -> ScoreProfile:
        """The profile of validation scores, with bins chosen for ``kind``.

        Args:
            kind: 'probability' (10 bins over [0, 1]), 'class' (one bin per class index,
                ``classes`` of them) or 'value' (10 bins between the smallest and largest).
        """
        if kind == "probability":
            inner = np.linspace(0.0, 1.0, BINS + 1)[1:-1]
        elif kind == "class":
            inner = np.arange(classes - 1) + 0.5
        else:
            low, high = (float(scores.min()), float(scores.max())) if len(scores) else (0.0, 1.0)
            inner = np.linspace(low, high if high > low else low + 1.0, BINS + 1)
        return cls.over(tuple(float(e) for e in inner), scores)

    @classmethod
    def over(cls, edges: tuple[float, ...], scores: np.ndarray) -> ScoreProfile:
        """``scores`` counted over ``edges`` (a score equal to an edge falls in the bin above it)."""
        scores = np.asarray(scores, dtype=np.float64)
        counts = np.bincount(np.searchsorted(np.asarray(edges), scores, side="right"), minlength=len(edges) + 1)
        return cls(edges, tuple(int(c) for c in counts), float(scores.mean()) if len(scores) else float("nan"))

    def same_bins(self, scores: np.ndarray) -> ScoreProfile:
        """Other scores, counted over this profile's bins."""
        return ScoreProfile.over(self.edges, scores)

    def psi(self, current: ScoreProfile) -> float:
        """Population stability index of ``current`` against this profile (the drift gate's formula)."""
        return psi(self._as_feature(), current._as_feature())

    def fractions(self) -> list[float]:
        total = self.rows
        return [c / total if total else 0.0 for c in self.counts]

    def _as_feature(self) -> FeatureProfile:
        return FeatureProfile("score", self.rows, 0, 0, self.mean, self.counts)

    def to_dict(self) -> dict[str, Any]:
        return {"edges": list(self.edges), "counts": list(self.counts), "mean": self.mean}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ScoreProfile:
        return cls(
            tuple(float(e) for e in values["edges"]), tuple(int(c) for c in values["counts"]), float(values["mean"])
        )


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float, float]:
    """The positive-class probability above which rows are called positive that gives the largest F1 on these rows.

    Returns:
        (threshold, precision, recall) there; (0.5, 0, 0) when there is no positive row.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    positives = int(labels.sum())
    if positives == 0 or len(scores) == 0:
        return 0.5, 0.0, 0.0
    order = np.argsort(-scores, kind="mergesort")
    ranked, hits = scores[order], np.cumsum(labels[order])
    last_of_tie = np.r_[ranked[1:] != ranked[:-1], True]  # a threshold can only fall between distinct scores
    called = np.arange(1, len(scores) + 1)[last_of_tie]
    true_positive = hits[last_of_tie]
    precision, recall = true_positive / called, true_positive / positives
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-12), 0.0)
    best = int(np.argmax(f1))
    return float(ranked[last_of_tie][best]), float(precision[best]), float(recall[best])


def ranking_metrics(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """ROC AUC (ties share their average rank) and PR AUC (average precision) of scores for label 1."""
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return {"roc_auc": float("nan"), "pr_auc": float("nan")}
    order = np.argsort(scores, kind="mergesort")
    _, inverse, counts = np.unique(scores[order], return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = (ends - (counts - 1) / 2.0)[inverse]
    ranks = np.empty(len(scores))
    ranks[order] = average_rank
    roc_auc = (ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    descending = labels[np.argsort(-scores, kind="mergesort")]
    hits = np.cumsum(descending)
    precision_at_hits = hits[descending == 1] / (np.flatnonzero(descending == 1) + 1)
    return {"roc_auc": float(roc_auc), "pr_auc": float(precision_at_hits.mean())}


__all__ = ["ScoreProfile", "best_threshold", "ranking_metrics"]
