"""The demos' own definitions: the assets that write their tables, and their jobs.

- ``demo/digits``: scikit-learn's digits in three appends; ``demo_job`` runs it and
  everything downstream of it (the ``digits`` pipeline).
- ``demo/transactions``: fraud-shaped card transactions, a daily-partitioned asset that
  appends one day per partition (backfill a date range from the UI, or
  ``dagster asset materialize --select demo/transactions --partition-range A...B``);
  ``transactions_ingest`` is its job. The ``fraud`` pipeline trains on it.
- ``demo/chargebacks``: the transactions' outcomes, a second daily asset that learns each
  day's outcomes ``lag_days`` later; the ``fraud`` pipeline's monitoring measures the
  champion's realized performance against it.

The pipelines themselves are declared in ``icetrain.yaml`` like any other.
"""

from dagster import (
    AssetExecutionContext,
    AssetSelection,
    BackfillPolicy,
    Config,
    DailyPartitionsDefinition,
    Definitions,
    MaterializeResult,
    asset,
    define_asset_job,
)
from pydantic import Field

from assets.failures import user_errors_as_failures
from assets.keys import table_key
from assets.resources import IcebergResource
from pipeline.data.snapshots import list_snapshots, total_rows
from pipeline.demo.digits import DIGITS_TABLE, ingest_digits
from pipeline.demo.transactions import CHARGEBACKS_TABLE, TRANSACTIONS_TABLE, day_of, ingest_day, ingest_outcomes
from pipeline.lake.catalog import load_table

TRANSACTIONS_START = "2026-11-01"
daily = DailyPartitionsDefinition(start_date=TRANSACTIONS_START)


@asset(
    key=table_key(DIGITS_TABLE),
    group_name="demo",
    kinds={"iceberg"},
    description="scikit-learn's digits in an Iceberg table, written in three appends.",
)
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


class TransactionsConfig(Config):
    """How much data a day holds, and from which day the distributions drift."""

    rows_per_day: int = Field(default=2000, ge=1, le=50_000_000)
    drift_from: str | None = Field(
        default=None,
        description="ISO date from which amounts, velocities and foreign share shift, and fraud changes tactics.",
    )
    drift: float = Field(default=1.8, ge=1.0, le=10.0, description="How far the features shift (a factor).")


@asset(
    key=table_key(TRANSACTIONS_TABLE),
    partitions_def=daily,
    backfill_policy=BackfillPolicy.single_run(),
    group_name="demo",
    kinds={"iceberg"},
    description="Fraud-shaped card transactions, one append per day (pipeline.demo.transactions documents the hidden label function).",
)
def transactions_table(
    context: AssetExecutionContext, config: TransactionsConfig, iceberg: IcebergResource
) -> MaterializeResult:
    """One append per day of the run's partitions, in date order; a day already in the table is skipped.

    A backfill runs its whole date range in one run (``BackfillPolicy.single_run``), which is
    what lets ``dagster asset materialize --partition-range`` work without a daemon.
    """
    days = [day_of(key) for key in context.partition_keys]
    drift_from = day_of(config.drift_from) if config.drift_from else None
    with user_errors_as_failures():
        catalog = iceberg.catalog()
        written = {
            day: ingest_day(
                catalog, day, config.rows_per_day, drift_from=drift_from, drift=config.drift, run_id=context.run_id
            )
            for day in sorted(days)
        }
        current = load_table(catalog, TRANSACTIONS_TABLE).current_snapshot()
    new_days = [day for day, snapshot_id in written.items() if snapshot_id is not None]
    context.log.info(f"appended {len(new_days)} of {len(days)} days to {TRANSACTIONS_TABLE}")
    return MaterializeResult(
        metadata={
            "days": ", ".join(day.isoformat() for day in sorted(days)),
            "snapshot_ids": ", ".join(
                f"{day.isoformat()}: {written[day] if written[day] is not None else 'already written'}"
                for day in sorted(days)
            ),
            "current_snapshot_id": str(current.snapshot_id) if current else "",
            "rows_written": config.rows_per_day * len(new_days),
            "total_rows": total_rows(current) if current else 0,
        }
    )


class ChargebacksConfig(Config):
    """How many days after a transaction its outcome (chargeback or not) is known."""

    lag_days: int = Field(default=3, ge=0, le=365)


@asset(
    key=table_key(CHARGEBACKS_TABLE),
    deps=[table_key(TRANSACTIONS_TABLE)],
    partitions_def=daily,
    backfill_policy=BackfillPolicy.single_run(),
    group_name="demo",
    kinds={"iceberg"},
    description="The outcomes of the card transactions (is_fraud per transaction_id), learned lag_days after each day: what the fraud pipeline's monitoring measures realized performance against.",
)
def chargebacks_table(
    context: AssetExecutionContext, config: ChargebacksConfig, iceberg: IcebergResource
) -> MaterializeResult:
    """On each day of the run's partitions, one append with the outcomes of the transactions of ``lag_days`` before."""
    days = sorted(day_of(key) for key in context.partition_keys)
    with user_errors_as_failures():
        catalog = iceberg.catalog()
        written = {day: ingest_outcomes(catalog, day, config.lag_days, run_id=context.run_id) for day in days}
    context.log.info(f"{sum(v is not None for v in written.values())} of {len(days)} days reported outcomes")
    return MaterializeResult(
        metadata={
            "days": ", ".join(day.isoformat() for day in days),
            "lag_days": config.lag_days,
            "snapshot_ids": ", ".join(
                f"{day.isoformat()}: {written[day] if written[day] is not None else 'nothing new'}" for day in days
            ),
        }
    )


transactions_job = define_asset_job(
    "transactions_ingest",
    selection=AssetSelection.assets(transactions_table),
    partitions_def=daily,
    description="Append one day of transactions per partition.",
)

demo_job = define_asset_job(
    "demo_job",
    selection=AssetSelection.assets(digits_table).downstream(),
    description="Ingest the digits, then pin a snapshot, check it and train every pipeline that reads them.",
)

defs = Definitions(assets=[digits_table, transactions_table, chargebacks_table], jobs=[demo_job, transactions_job])
