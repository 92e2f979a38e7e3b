"""The demo's own definitions: scikit-learn's digits written to ``demo.digits``, and ``demo_job``.

The digits pipeline itself is declared in ``icetrain.yaml`` like any other; this module only
adds the asset that writes its table (key ``demo/digits``, which the pipeline's training
data depends on) and a job that runs everything downstream of it.
"""

from dagster import AssetExecutionContext, AssetSelection, Definitions, MaterializeResult, asset, define_asset_job

from assets.assets import table_key
from assets.failures import user_errors_as_failures
from assets.resources import IcebergResource
from pipeline.catalog import load_table
from pipeline.demo_data import DIGITS_TABLE, ingest_digits
from pipeline.snapshots import list_snapshots


@asset(key=table_key(DIGITS_TABLE), group_name="demo", kinds={"iceberg"}, description="scikit-learn's digits in an Iceberg table, written in three appends.")
def digits_table(context: AssetExecutionContext, iceberg: IcebergResource) -> MaterializeResult:
    with user_errors_as_failures():
        catalog = iceberg.catalog()
        new_snapshots = ingest_digits(catalog, identifier=DIGITS_TABLE, run_id=context.run_id)
        history = list_snapshots(load_table(catalog, DIGITS_TABLE))
    current = history[-1]
    return MaterializeResult(
        metadata={
            "table": DIGITS_TABLE,
            "current_snapshot_id": str(current.snapshot_id),
            "new_snapshot_ids": ", ".join(str(s) for s in new_snapshots) or "none (table already holds the digits)",
            "snapshot_count": len(history),
            "total_rows": current.total_rows,
        }
    )


demo_job = define_asset_job(
    "demo_job",
    selection=AssetSelection.assets(digits_table).downstream(),
    description="Ingest the digits, then pin a snapshot, check it and train every pipeline that reads them.",
)

defs = Definitions(assets=[digits_table], jobs=[demo_job])
