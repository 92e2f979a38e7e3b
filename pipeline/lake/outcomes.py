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

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pyiceberg.table import Table

from pipeline.data.scores import ranking_metrics
from pipeline.errors import ColumnError, ConfigError


@dataclass(frozen=True)
class Window:
    """One scoring window's predictions and how they turned out."""

    window: str
    predictions: int
    with_outcome: int
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def coverage(self) -> float:
        return self.with_outcome / self.predictions if self.predictions else 0.0


def realized(
    predictions: Table,
    predictions_snapshot: int,
    outcomes: Table,
    outcomes_snapshot: int,
    key: tuple[str, ...],
    outcome: str,
    *,
    window: str = "snapshot",
    positive: object = 1,
) -> list[Window]:
    """Per window, the realized metrics of the predictions that have an outcome.

    Two classes: ROC AUC and PR AUC of the positive class's probability, precision and
    recall of the predicted label (the model's decision threshold); a regression: MAE.

    Raises:
        ColumnError: a table lacks the key or the outcome column (named).
        ConfigError: ``window`` is neither 'snapshot' nor 'day'.
    """
    if window not in ("snapshot", "day"):
        raise ConfigError(f"monitoring window {window!r}: use snapshot or day")
    scored = _read(
        predictions, predictions_snapshot, (*key, "prediction", "probabilities", "input_snapshot_id", "scored_at")
    )
    truth = _read(outcomes, outcomes_snapshot, (*key, outcome))
    regression = "probabilities" not in scored.column_names
    grouping = "CAST(p.input_snapshot_id AS VARCHAR)" if window == "snapshot" else "strftime(p.scored_at, '%Y-%m-%d')"
    joined = " AND ".join(f'p."{name}" = o."{name}"' for name in key)
    score = "NULL" if regression else "p.probabilities[2]"
    query = f"""
        SELECT {grouping} AS window, p.prediction AS prediction, {score} AS score, o."{outcome}" AS outcome
        FROM scored p LEFT JOIN (SELECT DISTINCT ON ({", ".join(f'"{k}"' for k in key)}) * FROM truth) o ON {joined}
    """
    connection = duckdb.connect()
    connection.register("scored", scored)
    connection.register("truth", truth)
    rows = connection.sql(query).to_arrow_table()
    windows = []
    for name in sorted(set(rows.column("window").to_pylist())):
        part = rows.filter(pc.equal(rows.column("window"), name))
        known = part.filter(pc.is_valid(part.column("outcome")))
        windows.append(Window(name, part.num_rows, known.num_rows, _metrics(known, regression, positive)))
    return windows


def _metrics(known: pa.Table, regression: bool, positive: object) -> dict[str, float]:
    if known.num_rows == 0:
        return {}
    outcome = known.column("outcome").to_numpy(zero_copy_only=False)
    predicted = known.column("prediction").to_numpy(zero_copy_only=False)
    if regression:
        return {"mae": float(np.mean(np.abs(predicted.astype(np.float64) - outcome.astype(np.float64))))}
    actual = np.asarray([str(v) == str(positive) for v in outcome])
    called = np.asarray([str(v) == str(positive) for v in predicted])
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
