"""Comparing runs side by side: which snapshot each saw, how the data changed between them, their metrics.

``compare_runs`` gathers it, draws the metrics against each run's snapshot and data size
(a PNG), and logs the picture to the last run in MLflow, so the comparison stays with the runs.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from pipeline.config.settings import Settings
from pipeline.lake.catalog import load_table, open_catalog
from pipeline.lake.diff import SnapshotDiff, diff_snapshots
from pipeline.tracking.client import tracking_client
from pipeline.tracking.lineage import SNAPSHOT_ID_TAG, TABLE_TAG, get_run
from training.plots import figure_png, pyplot

ARTIFACT_DIR = "comparisons"


@dataclass(frozen=True)
class ComparedRun:
    """One run of a comparison, and how its data differs from the previous run's (same table)."""

    run_id: str
    name: str
    table: str
    snapshot_id: int
    rows: int
    metrics: dict[str, float]
    change: SnapshotDiff | None
    change_note: str = ""


@dataclass(frozen=True)
class Comparison:
    runs: tuple[ComparedRun, ...]
    png: bytes

    def table_lines(self) -> list[str]:
        """The runs side by side, one line each."""
        metric_names = sorted({name for run in self.runs for name in run.metrics})
        header = ["run", "snapshot", "rows", "data since previous", *metric_names]
        lines = [header]
        for run in self.runs:
            if run.change is not None:
                schema = f", {len(run.change.schema_changes)} schema change(s)" if run.change.schema_changes else ""
                change = f"+{run.change.rows_added} -{run.change.rows_deleted}{schema}"
            else:
                change = run.change_note
            values = [f"{run.metrics[n]:.4f}" if n in run.metrics else "" for n in metric_names]
            lines.append([run.run_id[:12], str(run.snapshot_id), str(run.rows), change, *values])
        widths = [max(len(row[i]) for row in lines) for i in range(len(header))]
        return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in lines]


def compare_runs(settings: Settings, run_ids: list[str], *, log_to_mlflow: bool = True) -> Comparison:
    """Gather the runs, diff consecutive snapshots of the same table, draw and (optionally) log the picture.

    Raises:
        RunNotFoundError: a run is unknown or not icetrain's.
    """
    runs = [get_run(settings, run_id) for run_id in run_ids]
    catalog = open_catalog(settings)
    compared: list[ComparedRun] = []
    for index, run in enumerate(runs):
        table_name, snapshot_id = run.data.tags[TABLE_TAG], int(run.data.tags[SNAPSHOT_ID_TAG])
        change, note = None, "first" if index == 0 else ""
        if index:
            previous = compared[-1]
            if previous.table != table_name:
                note = f"other table ({table_name})"
            else:
                table = load_table(catalog, table_name)
                if table.snapshot_by_id(previous.snapshot_id) is None or table.snapshot_by_id(snapshot_id) is None:
                    note = "a snapshot was expired"
                else:
                    change = diff_snapshots(table, table_name, previous.snapshot_id, snapshot_id)
        metrics = {k: v for k, v in run.data.metrics.items() if not k.startswith("system/")}
        compared.append(
            ComparedRun(
                run.info.run_id,
                run.info.run_name or "",
                table_name,
                snapshot_id,
                int(run.data.tags.get("icetrain.row_count", 0)),
                metrics,
                change,
                note,
            )
        )
    png = _draw(compared)
    if log_to_mlflow and compared:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"compare-{'-'.join(r.run_id[:8] for r in compared)}.png"
            path.write_bytes(png)
            tracking_client(settings).log_artifact(compared[-1].run_id, str(path), ARTIFACT_DIR)
    return Comparison(tuple(compared), png)


def _draw(runs: list[ComparedRun]) -> bytes:
    plt = pyplot()
    names = sorted({name for run in runs for name in run.metrics})
    figure, (by_snapshot, by_size) = plt.subplots(1, 2, figsize=(10, 3.5))
    labels = [f"{str(r.snapshot_id)[:6]}…\n{r.run_id[:6]}" for r in runs]
    for name in names:
        values = [run.metrics.get(name, float("nan")) for run in runs]
        by_snapshot.plot(range(len(runs)), values, marker="o", label=name)
        by_size.plot([run.rows for run in runs], values, marker="o", linestyle="", label=name)
    by_snapshot.set_xticks(range(len(runs)), labels, fontsize=7)
    by_snapshot.set_xlabel("run (snapshot)")
    by_size.set_xlabel("rows trained on")
    for axis in (by_snapshot, by_size):
        axis.set_ylabel("metric")
        axis.legend(fontsize=7)
    return figure_png(figure)


__all__ = ["ComparedRun", "Comparison", "compare_runs"]
