"""Realized performance: predictions joined to the outcomes that arrived since, over pinned snapshots of both.

Outcomes come late (a chargeback days after the transaction): a declared outcomes table keyed
by the input's identifier, or the label in a later snapshot of the scored table. Both tables
are read at one snapshot each (the caller pins them), joined in DuckDB on the key, and
measured per scoring window: each predictions snapshot's input snapshot (``window='snapshot'``)
or the day the rows were scored (``window='day'``). A window's coverage is the share of its
predictions that have an outcome yet.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import pairwise

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.table import Table

from pipeline.data.scores import ranking_metrics
from pipeline.errors import ColumnError, ConfigError


@dataclass(frozen=True)
class Window:
    """One scoring window's predictions by one model, and how they turned out.

    ``scores`` holds every prediction's score (the positive class's probability for two
    classes, the class index for more, the value for regression), outcome or not: the
    window's prediction drift is measured on them.
    """

    window: str
    model_run_id: str
    model_version: str
    first_scored_ms: int
    predictions: int
    with_outcome: int
    metrics: dict[str, float] = field(default_factory=dict)
    scores: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)

    @property
    def coverage(self) -> float:
        return self.with_outcome / self.predictions if self.predictions else 0.0


def realized(
    predictions: Table,
    predictions_snapshot: int,
    outcomes: Table | None,
    outcomes_snapshot: int | None,
    key: tuple[str, ...],
    outcome: str,
    *,
    window: str = "snapshot",
    positive: object = 1,
) -> list[Window]:
    """Per window and model, the realized metrics of the predictions that have an outcome, oldest window first.

    Two classes: ROC AUC and PR AUC of the positive class's probability, precision and
    recall of the predicted label (the model's decision threshold); more classes: accuracy;
    a regression: MAE. Without an outcomes table (or snapshot) yet, every window has
    coverage 0 and no metrics.

    Raises:
        ColumnError: a table lacks the key or the outcome column (named).
        ConfigError: ``window`` is neither 'snapshot' nor 'day'.
    """
    if window not in ("snapshot", "day"):
        raise ConfigError(f"monitoring window {window!r}: use snapshot or day")
    scored = _read(
        predictions,
        predictions_snapshot,
        (*key, "prediction", "probabilities", "input_snapshot_id", "scored_at", "model_run_id", "model_version"),
    )
    if outcomes is not None and outcomes_snapshot is not None:
        truth = _read(outcomes, outcomes_snapshot, (*key, outcome))
    else:
        truth = pa.table({**{name: scored.column(name).slice(0, 0) for name in key}, outcome: pa.array([], pa.int64())})
    regression = "probabilities" not in scored.column_names
    grouping = "CAST(p.input_snapshot_id AS VARCHAR)" if window == "snapshot" else "strftime(p.scored_at, '%Y-%m-%d')"
    joined = " AND ".join(f'p."{name}" = o."{name}"' for name in key)
    score = (
        "CAST(p.prediction AS DOUBLE)"
        if regression
        else "CASE WHEN len(p.probabilities) = 2 THEN p.probabilities[2]"
        " ELSE list_position(p.probabilities, list_max(p.probabilities)) - 1 END"
    )
    classes = "0" if regression else "len(p.probabilities)"
    query = f"""
        WITH rows AS (
            SELECT {grouping} AS scoring_window, p.model_run_id AS run_id, coalesce(p.model_version, '') AS version,
                   epoch_ms(p.scored_at) AS scored_ms, p.prediction AS prediction, {score} AS score,
                   {classes} AS classes,
                   o."{outcome}" AS outcome
            FROM scored p
            LEFT JOIN (SELECT DISTINCT ON ({", ".join(f'"{k}"' for k in key)}) * FROM truth) o ON {joined}
        )
        SELECT *, min(scored_ms) OVER (PARTITION BY scoring_window, run_id) AS first_ms FROM rows
        ORDER BY first_ms, scoring_window, run_id
    """
    connection = duckdb.connect()
    connection.register("scored", scored)
    connection.register("truth", truth)
    rows = connection.sql(query).to_arrow_table()
    windows = []
    for part in _groups(rows):
        known = part.filter(pc.is_valid(part.column("outcome")))
        windows.append(
            Window(
                part.column("scoring_window")[0].as_py(),
                part.column("run_id")[0].as_py(),
                part.column("version")[0].as_py(),
                int(part.column("first_ms")[0].as_py()),
                part.num_rows,
                known.num_rows,
                _metrics(known, regression, positive),
                part.column("score").to_numpy(zero_copy_only=False).astype(np.float64),
            )
        )
    return windows


def _groups(rows: pa.Table) -> list[pa.Table]:
    """``rows`` (ordered by window and model) cut where the window or the model changes."""
    if rows.num_rows == 0:
        return []
    windows = rows.column("scoring_window").to_numpy(zero_copy_only=False)
    runs = rows.column("run_id").to_numpy(zero_copy_only=False)
    cuts = np.flatnonzero((windows[1:] != windows[:-1]) | (runs[1:] != runs[:-1])) + 1
    bounds = [0, *cuts.tolist(), rows.num_rows]
    return [rows.slice(start, stop - start) for start, stop in pairwise(bounds)]


def _metrics(known: pa.Table, regression: bool, positive: object) -> dict[str, float]:
    if known.num_rows == 0:
        return {}
    outcome, predicted = known.column("outcome"), known.column("prediction")
    if regression:
        error = pc.abs(pc.subtract(pc.cast(predicted, pa.float64()), pc.cast(outcome, pa.float64())))
        return {"mae": float(pc.mean(error).as_py())}
    if pc.max(known.column("classes")).as_py() > 2:
        same = pc.equal(pc.cast(predicted, pa.string()), pc.cast(outcome, pa.string()))
        return {"accuracy": float(pc.mean(pc.cast(same, pa.float64())).as_py())}
    actual = pc.equal(pc.cast(outcome, pa.string()), str(positive)).to_numpy(zero_copy_only=False)
    called = pc.equal(pc.cast(predicted, pa.string()), str(positive)).to_numpy(zero_copy_only=False)
    values = ranking_metrics(
        known.column("score").to_numpy(zero_copy_only=False).astype(np.float64), actual.astype(np.int64)
    )
    hits = int((actual & called).sum())
    values["precision"] = hits / int(called.sum()) if called.any() else 0.0
    values["recall"] = hits / int(actual.sum()) if actual.any() else 0.0
    return values


def _read(table: Table, snapshot_id: int, columns: tuple[str, ...]) -> pa.Table:
    names = table.schema().column_names
    missing = [name for name in columns if name not in names and name != "probabilities"]
    if missing:
        raise ColumnError(
            f"table {'.'.join(table.name()[-2:])!r} has no column(s) {', '.join(missing)}; columns: {', '.join(names)}"
        )
    return table.scan(snapshot_id=snapshot_id, selected_fields=tuple(c for c in columns if c in names)).to_arrow()


__all__ = ["Window", "realized"]
