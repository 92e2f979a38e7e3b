"""The ``transactions`` demo data: card payments, fraud-shaped, arriving one day at a time.

Each day is generated from the day alone (the same day always gives the same rows), so a
backfill of a date range writes exactly what a daily run would have written. Columns:

- ``transaction_id`` (the identifier field: day number * 10^7 + row), ``day`` (epoch days);
- 24 numeric features ``amount``, ``log_amount``, ``hour``, ``is_night``, ``distance_km``,
  ``merchant_risk``, ``velocity_1h``, ``velocity_24h``, ``account_age_days``,
  ``card_present``, ``foreign``, ``device_age_days``, ``failed_logins_24h``,
  ``avg_amount_30d``, ``amount_to_avg``, ``chargebacks_90d``, ``email_age_days``,
  ``ip_risk``, ``shipping_mismatch``, ``items``, ``discount``, ``tenure_months``,
  ``prior_fraud``, ``session_seconds``;
- text categories, as a payments table holds them: ``channel`` (web, app, pos, phone),
  ``merchant_category`` (12 kinds of merchant) and ``country`` (home country ``DE``, else
  where a foreign card is used);
- ``is_fraud``, the label.

The hidden function: ``is_fraud`` is drawn with probability ``sigmoid(z)`` where
``z = -7 + 5.33*merchant_risk + 0.9*log1p(velocity_1h) + 1.2*is_night*(1-card_present)
+ 0.8*foreign + 0.7*(amount_to_avg > 3) + 2.4*ip_risk + 0.5*shipping_mismatch
+ 0.9*prior_fraud - 0.004*account_age_days/30 + 0.3*(channel == 0)``: about 1.5 % positives
(more after the drift).

The drift knob: from ``drift_from`` on, amounts grow by ``drift`` (a factor), velocities and
IP risk shift up, and more transactions are foreign, as when a new market opens; and the
fraudsters change tactics: fraud then comes from new devices (``device_age_days`` under 30),
through the app, after failed logins, and merchant or IP risk no longer give it away
(``z = -7 + 6*(device_age_days < 30) + 1.5*(channel == app) + 1.5*(failed_logins_24h > 0)
+ 0.5*foreign - 0.004*account_age_days/30``). A model trained before the drift day ranks the
new fraud barely better than chance.

Outcomes: the chargebacks table ``demo.chargebacks`` learns each day's outcomes (``is_fraud``
per ``transaction_id``) a number of days later (``ingest_outcomes``), as a card issuer does.
"""

from __future__ import annotations

import zlib
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.expressions import EqualTo

from pipeline.data.snapshots import ancestors
from pipeline.lake.ingest import append_arrow

TRANSACTIONS_TABLE = "demo.transactions"
CHARGEBACKS_TABLE = "demo.chargebacks"
DAY_PROPERTY = "icetrain.partition"
IDENTIFIER = "transaction_id"
COUNTRIES = np.array(["DE", "FR", "NL", "ES", "IT", "PL", "SE", "US", "GB", "BR"])
CHANNELS = np.array(["web", "app", "pos", "phone"])
MERCHANT_CATEGORIES = np.array(
    ["grocery", "fuel", "restaurants", "travel", "electronics", "fashion", "digital goods", "pharmacy",
     "gambling", "jewelry", "utilities", "marketplace"]
)  # fmt: skip


def transactions_day(day: date, rows: int = 2000, *, drift_from: date | None = None, drift: float = 1.8) -> pa.Table:
    """One day of transactions, a pure function of the day (and the drift settings)."""
    epoch_day = (day - date(1970, 1, 1)).days
    rng = np.random.default_rng(zlib.crc32(day.isoformat().encode()))
    drifted = drift_from is not None and day >= drift_from
    shift = drift if drifted else 1.0
    channel = rng.choice(4, rows, p=[0.35, 0.35, 0.25, 0.05])
    card_present = (channel == 2).astype(np.int64)
    hour = rng.integers(0, 24, rows)
    is_night = ((hour < 6) | (hour >= 23)).astype(np.int64)
    avg_amount = rng.gamma(2.0, 30.0, rows)
    amount = np.round(avg_amount * rng.lognormal(0.0, 0.6, rows) * shift, 2)
    amount_to_avg = amount / np.maximum(avg_amount, 1.0)
    velocity_1h = rng.poisson(0.6 * shift, rows)
    velocity_24h = velocity_1h + rng.poisson(3.0 * shift, rows)
    foreign = (rng.random(rows) < (0.08 * shift)).astype(np.int64)
    merchant_risk = rng.beta(2, 8, rows)
    ip_risk = np.clip(rng.beta(2, 9, rows) * shift, 0, 1)
    account_age = rng.gamma(2.0, 400.0, rows)
    shipping_mismatch = (rng.random(rows) < 0.1).astype(np.int64)
    prior_fraud = (rng.random(rows) < 0.02).astype(np.int64)
    z = (
        -7.0 + 5.33 * merchant_risk + 0.9 * np.log1p(velocity_1h) + 1.2 * is_night * (1 - card_present)
        + 0.8 * foreign + 0.7 * (amount_to_avg > 3) + 2.4 * ip_risk + 0.5 * shipping_mismatch
        + 0.9 * prior_fraud - 0.004 * account_age / 30 + 0.3 * (channel == 0)
    )  # fmt: skip
    draw = rng.random(rows)  # the random streams are drawn in the order they always were: a day's rows never change
    distance_km = rng.exponential(15.0, rows) * (1 + 20 * foreign)
    device_age = rng.gamma(1.5, 200.0, rows)
    failed_logins = rng.poisson(0.2, rows).astype(np.int64)
    if drifted:
        z = (
            -7.0 + 6.0 * (device_age < 30) + 1.5 * (channel == 1) + 1.5 * (failed_logins > 0) + 0.5 * foreign
            - 0.004 * account_age / 30
        )  # fmt: skip
    is_fraud = (draw < 1 / (1 + np.exp(-z))).astype(np.int64)
    columns = {
        IDENTIFIER: epoch_day * 10_000_000 + np.arange(rows, dtype=np.int64),
        "day": np.full(rows, epoch_day, dtype=np.int64),
        "amount": amount,
        "log_amount": np.log1p(amount),
        "hour": hour.astype(np.int64),
        "is_night": is_night,
        "distance_km": distance_km,
        "merchant_risk": merchant_risk,
        "velocity_1h": velocity_1h.astype(np.int64),
        "velocity_24h": velocity_24h.astype(np.int64),
        "account_age_days": account_age,
        "card_present": card_present,
        "foreign": foreign,
        "device_age_days": device_age,
        "failed_logins_24h": failed_logins,
        "avg_amount_30d": avg_amount,
        "amount_to_avg": amount_to_avg,
        "chargebacks_90d": rng.poisson(0.05, rows).astype(np.int64),
        "email_age_days": rng.gamma(2.0, 500.0, rows),
        "ip_risk": ip_risk,
        "shipping_mismatch": shipping_mismatch,
        "items": 1 + rng.poisson(1.5, rows).astype(np.int64),
        "discount": np.round(rng.beta(1, 12, rows), 3),
        "tenure_months": rng.integers(0, 120, rows).astype(np.int64),
        "prior_fraud": prior_fraud,
        "session_seconds": rng.gamma(2.0, 90.0, rows),
        "channel": CHANNELS[channel],
        "merchant_category": MERCHANT_CATEGORIES[rng.integers(0, 12, rows)],
        "country": COUNTRIES[np.where(foreign == 1, rng.integers(1, len(COUNTRIES), rows), 0)],
        "is_fraud": is_fraud,
    }
    fields = [
        pa.field(name, pa.int64(), nullable=False) if name == IDENTIFIER else pa.field(name, pa.array(values).type)
        for name, values in columns.items()
    ]
    return pa.table([pa.array(values) for values in columns.values()], schema=pa.schema(fields))


def ingest_day(
    catalog: Catalog,
    day: date,
    rows: int = 2000,
    *,
    drift_from: date | None = None,
    drift: float = 1.8,
    run_id: str | None = None,
) -> int | None:
    """Append one day as one snapshot (summary ``icetrain.partition=<day>``), unless that day is in already.

    Returns:
        The new snapshot id, or None when the day was already written (a re-run or backfill).
    """
    key = day.isoformat()
    if _has_day(catalog, TRANSACTIONS_TABLE, key):
        return None
    data = transactions_day(day, rows, drift_from=drift_from, drift=drift)
    return append_arrow(
        catalog,
        TRANSACTIONS_TABLE,
        data,
        source="pipeline.demo.transactions",
        run_id=run_id,
        identifier_fields=(IDENTIFIER,),
        properties={DAY_PROPERTY: key},
    )


def ingest_outcomes(catalog: Catalog, day: date, lag_days: int = 3, *, run_id: str | None = None) -> int | None:
    """On ``day``, the chargebacks learn the outcomes of the transactions of ``day - lag_days``: one append.

    The outcomes are read from the transactions table at its current snapshot (the demo's
    transactions carry their label; a real issuer's chargebacks would come from elsewhere).

    Returns:
        The new snapshot id of ``demo.chargebacks``, or None when that day's outcomes are in
        already or its transactions are not (nothing to report yet).
    """
    settled = day - timedelta(days=lag_days)
    key = settled.isoformat()
    if _has_day(catalog, CHARGEBACKS_TABLE, key) or not catalog.table_exists(TRANSACTIONS_TABLE):
        return None
    transactions = catalog.load_table(TRANSACTIONS_TABLE)
    current = transactions.current_snapshot()
    if current is None:
        return None
    epoch_day = (settled - date(1970, 1, 1)).days
    rows = transactions.scan(
        row_filter=EqualTo("day", epoch_day), snapshot_id=current.snapshot_id, selected_fields=(IDENTIFIER, "is_fraud")
    ).to_arrow()
    if rows.num_rows == 0:
        return None
    outcomes = rows.append_column("reported_day", pa.array(np.full(rows.num_rows, day), pa.date32()))
    return append_arrow(
        catalog,
        CHARGEBACKS_TABLE,
        outcomes,
        source=f"{TRANSACTIONS_TABLE}@{current.snapshot_id}",
        run_id=run_id,
        identifier_fields=(IDENTIFIER,),
        properties={DAY_PROPERTY: key},
    )


def _has_day(catalog: Catalog, table_name: str, key: str) -> bool:
    """Whether a snapshot in the table's current history wrote the day ``key``."""
    if not catalog.table_exists(table_name):
        return False
    table = catalog.load_table(table_name)
    current = table.current_snapshot()
    return current is not None and any(
        (s.summary.additional_properties if s.summary else {}).get(DAY_PROPERTY) == key
        for s in ancestors(table, current.snapshot_id)
    )


def day_of(partition_key: str) -> date:
    """A Dagster daily partition key (``2026-11-01``) as a date."""
    return datetime.strptime(partition_key, "%Y-%m-%d").replace(tzinfo=UTC).date()


__all__ = [
    "CHARGEBACKS_TABLE",
    "DAY_PROPERTY",
    "IDENTIFIER",
    "TRANSACTIONS_TABLE",
    "day_of",
    "ingest_day",
    "ingest_outcomes",
    "transactions_day",
]
