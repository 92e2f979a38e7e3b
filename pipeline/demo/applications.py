"""The ``applications`` quick-start data: loan applications with columns as a real table holds them.

Columns: ``application_id`` (the identifier field), ``amount`` and ``income`` (numbers;
income is missing for about one application in ten), ``age`` (an integer), ``purpose`` and
``employment`` (text; purpose is sometimes blank), ``verified`` (a boolean), ``applied_at``
(a timestamp), and the label ``defaulted`` (0/1). A pure function of ``(rows, seed)``.

The hidden function: ``defaulted`` is drawn with probability ``sigmoid(z)`` where
``z = -2.5 + 2.5*(amount/income > 0.4) + 1.5*(purpose in {travel, vacation}) - 1.2*verified
+ 1.2*(employment == 'unemployed') + 1.0*(applied between 0:00 and 5:00) + 0.8*(income missing)``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

PURPOSES = np.array(["car", "education", "home", "medical", "travel", "vacation", "business"])
EMPLOYMENT = np.array(["employed", "self-employed", "unemployed", "retired", "student"])
START = datetime(2026, 1, 1, tzinfo=UTC)


def applications(rows: int = 5000, seed: int = 0) -> pa.Table:
    """``rows`` loan applications (ids from ``seed * 10^7``), the same for the same arguments."""
    rng = np.random.default_rng(seed)
    income = rng.gamma(4.0, 12_000.0, rows)
    amount = np.round(rng.gamma(2.0, 6_000.0, rows), 2)
    purpose = PURPOSES[rng.integers(0, len(PURPOSES), rows)]
    employment = EMPLOYMENT[rng.choice(len(EMPLOYMENT), rows, p=[0.6, 0.15, 0.08, 0.1, 0.07])]
    verified = rng.random(rows) < 0.6
    seconds = rng.integers(0, 300 * 86_400, rows)
    hour = (seconds // 3600) % 24
    income_missing = rng.random(rows) < 0.1
    z = (
        -2.5 + 2.5 * (amount / income > 0.4) + 1.5 * np.isin(purpose, ["travel", "vacation"]) - 1.2 * verified
        + 1.2 * (employment == "unemployed") + 1.0 * (hour < 5) + 0.8 * income_missing
    )  # fmt: skip
    defaulted = (rng.random(rows) < 1 / (1 + np.exp(-z))).astype(np.int64)
    blank_purpose = rng.random(rows) < 0.05
    start_us = int(START.timestamp() * 1_000_000)
    return pa.table(
        {
            "application_id": pa.array(seed * 10_000_000 + np.arange(rows), type=pa.int64()),
            "amount": pa.array(amount),
            "income": pa.array(np.round(income, 2), mask=income_missing),
            "age": pa.array(rng.integers(18, 80, rows), type=pa.int64()),
            "purpose": pa.array(purpose.astype(object), mask=blank_purpose, type=pa.string()),
            "employment": pa.array(employment.astype(object), type=pa.string()),
            "verified": pa.array(verified),
            "applied_at": pa.array(start_us + seconds * 1_000_000, type=pa.timestamp("us", tz="UTC")),
            "defaulted": pa.array(defaulted),
        }
    )


def write_applications(path: str | Path, rows: int = 5000, seed: int = 0) -> Path:
    """Write the quick-start table to a Parquet file (for ``icetrain ingest``)."""
    target = Path(path)
    pq.write_table(applications(rows, seed), target)
    return target


__all__ = ["applications", "write_applications"]
