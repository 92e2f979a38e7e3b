"""Realized performance: predictions joined to outcomes over pinned snapshots, per scoring window, with coverage."""

import numpy as np
import pytest

from icetrain.cli import main
from pipeline.data.scores import ranking_metrics
from pipeline.demo.applications import applications
from pipeline.errors import ColumnError
from pipeline.lake.catalog import load_table
from pipeline.lake.ingest import append_arrow
from pipeline.lake.outcomes import realized

TABLE = "bank.applications"


def test_predictions_joined_to_outcomes_give_each_windows_realized_metrics_and_coverage(
    settings, catalog, loans_champion
) -> None:
    assert main(["predict", "--pipeline", "loans"]) == 0
    append_arrow(catalog, TABLE, applications(3500).slice(3000), source="test")
    assert main(["predict", "--pipeline", "loans", "--incremental"]) == 0
    predictions = load_table(catalog, "bank.loans_predictions")
    # outcomes so far: the first 3,200 applications' defaults (the newest 300 have none yet)
    rows = load_table(catalog, TABLE).scan().to_arrow().sort_by("application_id")
    append_arrow(catalog, "bank.outcomes", rows.slice(0, 3200).select(["application_id", "defaulted"]), source="test")
    outcomes = load_table(catalog, "bank.outcomes")
    windows = realized(
        predictions,
        predictions.current_snapshot().snapshot_id,
        outcomes,
        outcomes.current_snapshot().snapshot_id,
        ("application_id",),
        "defaulted",
    )
    first, second = windows if windows[0].predictions == 3000 else reversed(windows)
    assert (first.predictions, first.with_outcome, first.coverage) == (3000, 3000, 1.0)
    assert (second.predictions, second.with_outcome) == (500, 200)
    scored = predictions.scan().to_arrow().sort_by("application_id").slice(0, 3000)
    truth = rows.slice(0, 3000).column("defaulted").to_numpy()
    positive = np.stack(scored.column("probabilities").to_numpy(zero_copy_only=False))[:, 1]
    expected = ranking_metrics(positive.astype(np.float64), truth)
    assert first.metrics["roc_auc"] == pytest.approx(expected["roc_auc"])
    assert first.metrics["pr_auc"] == pytest.approx(expected["pr_auc"])
    called = scored.column("prediction").to_numpy() == 1
    assert first.metrics["recall"] == pytest.approx((called & (truth == 1)).sum() / (truth == 1).sum())

    keyless = load_table(catalog, TABLE)
    with pytest.raises(ColumnError, match="has no column\\(s\\) customer"):
        realized(
            predictions,
            predictions.current_snapshot().snapshot_id,
            keyless,
            keyless.current_snapshot().snapshot_id,
            ("customer",),
            "defaulted",
        )


def test_a_window_whose_outcomes_have_not_arrived_has_no_metrics_and_no_coverage(
    settings, catalog, loans_champion
) -> None:
    assert main(["predict", "--pipeline", "loans"]) == 0
    predictions = load_table(catalog, "bank.loans_predictions")
    append_arrow(
        catalog, "bank.outcomes", applications(4000).slice(3500).select(["application_id", "defaulted"]), source="test"
    )
    outcomes = load_table(catalog, "bank.outcomes")
    (window,) = realized(
        predictions, predictions.current_snapshot().snapshot_id, outcomes, outcomes.current_snapshot().snapshot_id,
        ("application_id",), "defaulted", window="day",
    )  # fmt: skip
    assert (window.predictions, window.with_outcome, window.coverage, window.metrics) == (3000, 0, 0.0, {})
