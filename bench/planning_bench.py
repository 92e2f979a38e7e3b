"""Planning as snapshots pile up: time from a pinned snapshot to the list of row groups.

One table is appended to 1,000 times (one small file per append, as a daily job would), as
icetrain creates tables now (PyIceberg's manifest merging on), and planning of the current
snapshot is timed at 10, 100 and 1,000 snapshots; a table without manifest merging (PyIceberg's
default, and icetrain's before) is the baseline measured in the same run; then
``icetrain maintain`` compacts the 1,000-append table and planning is timed again.

    python bench/planning_bench.py [--appends 1000] [--out bench/results.json]

Building the two 1,000-append tables takes about 20 minutes here (appends slow down as the
metadata grows); ``--appends 300`` is a quick look.

Rows ``plan_10``, ``plan_100``, ``plan_1000``, ``plan_1000_unmerged``, ``plan_1000_maintained``
(``plan_s``, best of 5) are merged into ``results.json`` by name.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

ROWS_PER_APPEND = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--appends", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results.json")
    args = parser.parse_args()

    from pipeline.lake.catalog import connect_catalog
    from pipeline.lake.ingest import append_arrow
    from pipeline.lake.maintenance import maintain
    from tests.conftest import tabular_rows

    folder = Path(tempfile.mkdtemp(prefix="icetrain-plan-"))
    catalog = connect_catalog(
        "bench",
        {"type": "sql", "uri": f"sqlite:///{folder / 'catalog.db'}", "warehouse": (folder / "warehouse").as_uri()},
    )
    marks = [n for n in (10, 100, 1000) if n <= args.appends]
    results: list[dict] = []
    timings: dict[str, float] = {}

    started = time.perf_counter()
    for n in range(1, args.appends + 1):
        append_arrow(
            catalog,
            "bench.merged",
            tabular_rows((n - 1) * ROWS_PER_APPEND, ROWS_PER_APPEND),
            source="bench",
            identifier_fields=("id",),
            check=False,
        )
        if n in marks:
            timings[f"plan_{n}"] = plan_seconds(catalog, "bench.merged")
    timings["append_s_merged"] = (time.perf_counter() - started) / args.appends

    started = time.perf_counter()
    unmerged = {"commit.manifest-merge.enabled": "false"}
    for n in range(1, args.appends + 1):
        append_arrow(
            catalog,
            "bench.unmerged",
            tabular_rows((n - 1) * ROWS_PER_APPEND, ROWS_PER_APPEND),
            source="bench",
            identifier_fields=("id",),
            check=False,
            table_properties=unmerged,
        )
    timings["append_s_unmerged"] = (time.perf_counter() - started) / args.appends
    timings[f"plan_{args.appends}_unmerged"] = plan_seconds(catalog, "bench.unmerged")

    started = time.perf_counter()
    done = maintain(catalog.load_table("bench.merged"))
    timings["maintain_s"] = time.perf_counter() - started
    timings[f"plan_{args.appends}_maintained"] = plan_seconds(catalog, "bench.merged")

    base = timings[f"plan_{marks[0]}"]
    print(f"{'name':<24} {'plan_s':>8} {'x plan_' + str(marks[0]):>10}")
    for name in [*(f"plan_{n}" for n in marks), f"plan_{args.appends}_unmerged", f"plan_{args.appends}_maintained"]:
        print(f"{name:<24} {timings[name]:>8.4f} {timings[name] / base:>10.2f}")
        results.append(
            {"name": name, "plan_s": round(timings[name], 5), "rows_per_s": None, "ttfb_s": None, "peak_rss_mb": None}
        )
    print(
        f"append_s: {timings['append_s_merged']:.3f} with manifest merging, {timings['append_s_unmerged']:.3f} without"
    )
    print(
        f"maintain: {done.files_before} -> {done.files_after} data files, {done.manifests_before} -> {done.manifests_after} manifests in {timings['maintain_s']:.1f}s"
    )
    merge_results(args.out, results)


def plan_seconds(catalog, name: str, repeats: int = 5) -> float:
    """Best of ``repeats``: load the table, pin its current snapshot, plan the read (manifests + footers)."""
    from pipeline.data.reading import prepare_read
    from pipeline.data.snapshots import resolve_snapshot
    from pipeline.data.specs import ReadSpec, SnapshotRequest

    best = float("inf")
    for _ in range(repeats):
        table = catalog.load_table(name)
        pinned = resolve_snapshot(table, SnapshotRequest(name), catalog.name)
        started = time.perf_counter()
        prepare_read(table, pinned, ReadSpec())
        best = min(best, time.perf_counter() - started)
    return best


def merge_results(out: Path, rows: list[dict]) -> None:
    existing = json.loads(out.read_text()) if out.exists() else []
    names = {row["name"] for row in rows}
    out.write_text(json.dumps([row for row in existing if row.get("name") not in names] + rows, indent=2))


if __name__ == "__main__":
    main()
