"""Snapshot expiry that keeps what models need, and the durations it takes (``30d``, ``12h``).

Only table metadata: no MLflow, no torch, so ``icetrain expire`` and ``doctor`` answer quickly.
A registered model's snapshot carries an Iceberg tag (``pipeline.tracking.registry``), and ``expire``
never expires a tagged snapshot, a branch head or the current snapshot.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from pyiceberg.table import Table

from pipeline.errors import ConfigError

_DURATION = re.compile(r"^(\d+)([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION = timedelta(days=100 * 365)


@dataclass(frozen=True)
class Expiry:
    """What ``expire`` removed and what it kept, with why."""

    expired: tuple[int, ...]
    kept: tuple[tuple[int, str], ...]


def parse_duration(text: str) -> timedelta:
    """``30d``, ``12h``, ``45m``, ``10s``, ``2w``.

    Raises:
        ConfigError: another form.
    """
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigError(f"duration {text!r} must be a number and a unit: s, m, h, d or w (e.g. 30d, 12h, 0s)")
    if len(match.group(1)) > 15 or int(match.group(1)) * _SECONDS[match.group(2)] > MAX_DURATION.total_seconds():
        raise ConfigError(f"duration {text.strip()[:40]!r} is longer than {MAX_DURATION.days // 365} years")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def expire(table: Table, older_than: timedelta, *, now: datetime | None = None) -> Expiry:
    """Expire snapshots committed before ``now - older_than``, never one a tag or branch points at, nor the current one."""
    cutoff = (now or datetime.now(UTC)) - older_than
    cutoff_ms = int(cutoff.timestamp() * 1000)
    reasons: dict[int, list[str]] = {}
    for ref_name, ref in table.metadata.refs.items():
        kind = "tag" if ref.snapshot_ref_type.value == "tag" else "branch"
        reasons.setdefault(ref.snapshot_id, []).append(f"{kind} {ref_name}")
    current = table.current_snapshot()
    if current is not None:
        reasons.setdefault(current.snapshot_id, []).append("current snapshot")
    expiring, kept = [], []
    for snapshot in sorted(table.snapshots(), key=lambda s: s.timestamp_ms):
        if snapshot.snapshot_id in reasons:
            kept.append((snapshot.snapshot_id, ", ".join(reasons[snapshot.snapshot_id])))
        elif snapshot.timestamp_ms >= cutoff_ms:
            kept.append((snapshot.snapshot_id, f"newer than {cutoff.isoformat(timespec='seconds')}"))
        else:
            expiring.append(snapshot.snapshot_id)
    if expiring:
        table.maintenance.expire_snapshots().by_ids(expiring).commit()
    return Expiry(tuple(expiring), tuple(kept))


__all__ = ["MAX_DURATION", "Expiry", "expire", "parse_duration"]
