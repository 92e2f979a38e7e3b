"""Readers are isolated from writers: training on a pinned snapshot while other processes append
and rewrite the table sees exactly that snapshot's rows."""

import multiprocessing

from pipeline.data.loading import open_loader
from pipeline.data.snapshots import resolve_snapshot
from pipeline.data.specs import LoaderConfig, ReadSpec, SnapshotRequest
from pipeline.lake.catalog import load_table
from tests.conftest import config_for, write_appends
from tests.writers import churn


def test_a_pinned_snapshot_reads_the_same_rows_while_others_append_and_delete(settings, catalog, tmp_path) -> None:
    pinned_id = write_appends(catalog, "demo.rows", [400, 300])[-1]
    properties = {
        "type": "sql",
        "uri": f"sqlite:///{settings.catalog_db}",
        "warehouse": settings.warehouse.as_uri(),
        "catalog_name": settings.catalog_name,
    }
    table = load_table(catalog, "demo.rows")
    pinned = resolve_snapshot(table, SnapshotRequest("demo.rows", snapshot_id=pinned_id), settings.catalog_name)
    spec, loader = ReadSpec(features=("id",)), LoaderConfig(batch_size=50, num_workers=2, val_fraction=0.0, seed=1)

    from training.train import train

    with multiprocessing.get_context("spawn").Pool(3) as pool:
        writing = pool.starmap_async(churn, [(properties, "demo.rows", writer, 6) for writer in range(3)])
        reads = [
            sorted(
                int(v) for features, _ in open_loader(table, pinned, spec, loader) for v in features.flatten().tolist()
            )
            for _ in range(3)
        ]
        result = train(
            settings, config_for("demo.rows", f"data.snapshot_id={pinned_id}", "optim.epochs=2"), progress_bar=False
        )
        commits = sum(writing.get(timeout=600))

    assert commits >= 18, "the writers really committed while the reads ran"
    now = load_table(catalog, "demo.rows")
    assert now.current_snapshot().snapshot_id != pinned_id and now.scan().to_arrow().num_rows != 700
    assert all(read == list(range(700)) for read in reads)
    assert result.row_count == 700 and result.pinned.snapshot_id == pinned_id
