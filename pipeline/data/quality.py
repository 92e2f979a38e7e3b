"""Data-quality gates beyond the labels: the schema contract, feature completeness, and drift.

- **Schema contract**: the pipeline's features are matched by Iceberg field id against a
  reference snapshot (the one the current champion, or the last model, trained on), so a
  rename is reported as a rename, a drop as a drop and a type change as such.
- **Feature profile**: per feature, rows, nulls, NaNs, mean and a histogram, in one streaming
  pass over the feature columns (row group by row group, bounded memory).
- **Drift**: the population stability index of each feature against the reference snapshot,
  over 10 equal-width bins between the reference's column bounds (from the manifests) plus two
  overflow bins: ``PSI = sum((p - q) * ln(p / q))``, fractions floored at 1e-4.
- **Images** (a raw-bytes image feature): the profile counts rows and nulls, the mean is the
  mean pixel value, and drift is the PSI of the pixel-value histogram (10 equal bins from 0 to
  the image's largest value, ``icetrain.image.<col>.max``, else 255).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from pyiceberg.conversions import from_bytes
from pyiceberg.schema import Schema
from pyiceberg.table import Table
from pyiceberg.types import BooleanType, DoubleType, FloatType, IntegerType, LongType

from pipeline.data.encoding import count_categories
from pipeline.data.reading import PreparedRead, prepare_read, snapshot_schema
from pipeline.data.snapshots import PinnedSnapshot
from pipeline.data.specs import LoaderConfig, ReadSpec
from pipeline.data.tensors import image_bytes

BINS = 10
TOP_CATEGORIES = 50
_FLOOR = 1e-4
_NUMERIC = (IntegerType, LongType, FloatType, DoubleType, BooleanType)


@dataclass(frozen=True)
class FeatureProfile:
    """One feature's completeness, mean and histogram over the bins of a reference.

    A categorical feature's bins are the reference's most frequent categories (``top``, up to
    ``TOP_CATEGORIES``), then *unknown* (every other category), then *missing* (null); its
    ``mean`` is NaN and its nulls are the missing category, not gaps.
    """

    name: str
    rows: int
    nulls: int
    nans: int
    mean: float
    counts: tuple[int, ...] = field(default=())
    categories: tuple[str, ...] = field(default=())
    categorical: bool = False

    @property
    def unknown_share(self) -> float:
        """Categorical: the share of rows in none of the reference's top categories (nor null)."""
        return self.counts[-2] / self.rows if self.categorical and self.rows and len(self.counts) >= 2 else 0.0

    def top(self, count: int = 5) -> list[tuple[str, int]]:
        """Categorical: the most frequent of the binned categories and their rows."""
        pairs = zip(self.categories, self.counts, strict=False)
        return sorted(pairs, key=lambda pair: (-pair[1], pair[0]))[:count]

    def fractions(self) -> np.ndarray:
        counts = np.asarray(self.counts, dtype=np.float64)
        return counts / counts.sum() if counts.sum() else counts


def contract_changes(reference: Schema, current: Schema, features: tuple[str, ...]) -> list[str]:
    """How the declared features changed from the reference schema to the current one, by field id."""
    changes = []
    for name in features:
        try:
            field_id = reference.find_field(name).field_id
        except ValueError:
            continue
        try:
            now = current.find_field(field_id)
        except ValueError:
            changes.append(f"feature {name} (field {field_id}) was dropped")
            continue
        renamed = current.find_column_name(field_id)
        if renamed != name:
            changes.append(f"feature {name} (field {field_id}) was renamed to {renamed}")
        before = reference.find_field(field_id).field_type
        if before != now.field_type:
            changes.append(f"feature {name} (field {field_id}) changed type from {before} to {now.field_type}")
    return changes


def bin_edges(table: Table, snapshot_id: int, schema: Schema, features: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Equal-width bin edges per numeric feature between the snapshot's column bounds (from its manifests; no data read).

    Features of other types (raw image bytes, text) get no edges here.
    """
    lows: dict[str, float] = {}
    highs: dict[str, float] = {}
    ids = {name: schema.find_field(name) for name in features if name in schema.column_names}
    ids = {name: column for name, column in ids.items() if isinstance(column.field_type, _NUMERIC)}
    for task in table.scan(snapshot_id=snapshot_id).plan_files():
        for name, column in ids.items():
            lower = (task.file.lower_bounds or {}).get(column.field_id)
            upper = (task.file.upper_bounds or {}).get(column.field_id)
            if lower is not None and upper is not None:
                low, high = float(from_bytes(column.field_type, lower)), float(from_bytes(column.field_type, upper))
                lows[name], highs[name] = min(lows.get(name, low), low), max(highs.get(name, high), high)
    return {
        name: np.linspace(lows[name], highs[name] if highs[name] > lows[name] else lows[name] + 1, BINS + 1)
        for name in lows
    }


def profile_features(
    read: PreparedRead, edges: dict[str, np.ndarray], categories: dict[str, tuple[str, ...]] | None = None
) -> dict[str, FeatureProfile]:
    """Rows, nulls, NaNs, mean and (given edges) a histogram of each feature, in one pass over the row groups.

    Categorical features are binned over ``categories[name]`` (the reference's), else over their
    own most frequent categories.
    """
    source = read.source(LoaderConfig())
    features = read.layout.features
    categorical = set(read.layout.categorical)
    totals = {name: [0, 0, 0, 0.0, np.zeros(BINS + 2, dtype=np.int64), 0] for name in features}
    seen: dict[str, Counter[str]] = {name: Counter() for name in categorical}
    for unit in range(len(read.plan.row_groups)):
        batch = source.rows(unit)
        for name in features:
            column = batch.column(name)
            entry = totals[name]
            entry[0] += len(column)
            entry[1] += column.null_count
            if name in categorical:
                seen[name].update(count_categories(column))
                continue
            values = _values(column, name, read)
            finite = values[~np.isnan(values)]
            entry[2] += len(values) - len(finite)
            entry[3] += float(finite.sum())
            entry[5] += len(finite)
            if name in edges and len(finite):
                entry[4] += np.bincount(np.searchsorted(edges[name], finite, side="right"), minlength=BINS + 2)[
                    : BINS + 2
                ]
    profiles = {
        name: FeatureProfile(
            name, rows, nulls, nans, total / max(values, 1), tuple(int(c) for c in counts) if name in edges else ()
        )
        for name, (rows, nulls, nans, total, counts, values) in totals.items()
        if name not in categorical
    }
    for name in categorical:
        rows, nulls = totals[name][0], totals[name][1]
        counter = seen[name]
        bins = (categories or {}).get(name) or tuple(
            value for value, _ in sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:TOP_CATEGORIES]
        )
        binned = [counter.get(value, 0) for value in bins]
        counts = (*binned, rows - nulls - sum(binned), nulls)
        profiles[name] = FeatureProfile(name, rows, nulls, 0, float("nan"), counts, tuple(bins), categorical=True)
    return {name: profiles[name] for name in features}


def _values(column: pa.ChunkedArray | pa.Array, name: str, read: PreparedRead) -> np.ndarray:
    """A feature's non-null values as float64: numbers as they are, an image as its pixel bytes, anything else none."""
    present = column.drop_null()
    if read.layout.image_shape is not None and name == read.layout.features[0]:
        return image_bytes(
            pa.concat_arrays(present.chunks) if isinstance(present, pa.ChunkedArray) else present,
            name,
            read.layout.image_shape,
        ).astype(np.float64)
    if pa.types.is_integer(column.type) or pa.types.is_floating(column.type) or pa.types.is_boolean(column.type):
        return present.to_numpy(zero_copy_only=False).astype(np.float64)
    return np.empty(0)


def feature_edges(table: Table, reference: PreparedRead, features: tuple[str, ...]) -> dict[str, np.ndarray]:
    """Histogram edges per feature: the reference's column bounds for numbers, 0-255 for image bytes."""
    edges = bin_edges(table, reference.plan.pinned.snapshot_id, reference.plan.snapshot_schema, features)
    if reference.layout.image_shape is not None:
        top = reference.layout.image_scale  # the image's largest raw value (icetrain.image.<col>.max, else 255)
        edges.update({name: np.linspace(0, top, BINS + 1) for name in features if name == reference.layout.features[0]})
    return edges


@dataclass(frozen=True)
class QualityReport:
    """The gates' findings on a pinned snapshot, against a reference snapshot (None: no model yet)."""

    reference_snapshot: int | None
    contract: tuple[str, ...] = ()
    profiles: dict[str, FeatureProfile] = field(default_factory=dict)
    drift: dict[str, float] = field(default_factory=dict)
    reference_profiles: dict[str, FeatureProfile] = field(default_factory=dict)

    def worst_null_fraction(self, imputed: Collection[str] = ()) -> float:
        """The largest share of null or NaN values of any numeric feature not imputed (0 with no rows)."""
        return max(self._gaps(imputed).values(), default=0.0)

    def incomplete(self, max_fraction: float, imputed: Collection[str] = ()) -> dict[str, float]:
        """Numeric features (not imputed) whose share of null or NaN values exceeds ``max_fraction``."""
        return {name: share for name, share in self._gaps(imputed).items() if share > max_fraction}

    def _gaps(self, imputed: Collection[str]) -> dict[str, float]:
        """Each numeric feature's share of null or NaN values; a category's nulls and an imputed column's are no gaps."""
        return {
            name: (p.nulls + p.nans) / p.rows
            for name, p in self.profiles.items()
            if p.rows and not p.categorical and name not in imputed
        }

    def drifted(self, max_psi: float) -> dict[str, float]:
        """Features whose PSI against the reference exceeds ``max_psi``, largest first."""
        return dict(sorted(((n, v) for n, v in self.drift.items() if v > max_psi), key=lambda item: -item[1]))

    def to_dict(self) -> dict[str, Any]:
        """As JSON-ready values (the reference snapshot id as text)."""
        values = asdict(self)
        values["reference_snapshot"] = None if self.reference_snapshot is None else str(self.reference_snapshot)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> QualityReport:
        def profiles(found: dict[str, dict[str, Any]]) -> dict[str, FeatureProfile]:
            return {
                name: FeatureProfile(
                    **{**p, "counts": tuple(p["counts"]), "categories": tuple(p.get("categories", ()))}
                )
                for name, p in found.items()
            }

        reference = values["reference_snapshot"]
        return cls(
            reference_snapshot=None if reference is None else int(reference),
            contract=tuple(values["contract"]),
            profiles=profiles(values["profiles"]),
            drift=dict(values["drift"]),
            reference_profiles=profiles(values["reference_profiles"]),
        )


@dataclass(frozen=True)
class GateResult:
    """One quality gate's verdict: ``schema_contract``, ``features_complete`` or ``no_drift``."""

    name: str
    passed: bool
    description: str


def judge(
    quality: QualityReport, max_psi: float, max_null_fraction: float, imputed: Collection[str] = ()
) -> tuple[GateResult, ...]:
    """The three quality gates' verdicts on a report: the one set of rules for Dagster's checks and ``icetrain train``.

    ``imputed`` columns have their nulls filled (``data.impute``), so completeness does not count them.
    """
    contract = GateResult(
        "schema_contract",
        not quality.contract,
        "; ".join(quality.contract)
        or ("no reference snapshot yet" if quality.reference_snapshot is None else "features unchanged"),
    )
    incomplete = quality.incomplete(max_null_fraction, imputed)
    complete = GateResult(
        "features_complete",
        not incomplete and not quality.contract,
        "; ".join(
            f"{name}: {share:.2%} null or NaN (gates.max_null_fraction {max_null_fraction:g})"
            for name, share in incomplete.items()
        )
        or "complete",
    )
    drifted = quality.drifted(max_psi)
    if quality.reference_snapshot is None:
        drift_text = "no reference snapshot yet (no champion or trained model)"
    else:
        largest = f"largest PSI {max(quality.drift.values(), default=0.0):.3f}"
        drift_text = (
            "; ".join(f"{name} PSI {value:.3f}" for name, value in drifted.items()) + f" (gates.max_psi {max_psi:g})"
            if drifted
            else largest
        )
    drift = GateResult("no_drift", not drifted and not quality.contract, drift_text)
    return (contract, complete, drift)


def assess_snapshot(
    table: Table,
    pinned: PinnedSnapshot,
    spec: ReadSpec,
    reference: PinnedSnapshot | None,
    reference_spec: ReadSpec | None = None,
) -> tuple[QualityReport, PreparedRead | None]:
    """The quality report of a pinned snapshot against a reference snapshot, and the read it planned.

    The reference is read with ``reference_spec`` when given (a model's training read, beside
    the rows it scored), else with ``spec``. The schema contract is checked first (by field
    id); when it is broken the features are not profiled and no read is returned.
    """
    reference_read = prepare_read(table, reference, reference_spec or spec) if reference is not None else None
    features = spec.features or (reference_read.layout.features if reference_read is not None else ())
    contract = (
        contract_changes(snapshot_schema(table, reference), snapshot_schema(table, pinned), features)
        if reference is not None
        else []
    )
    if contract:
        return QualityReport(reference.snapshot_id, tuple(contract)), None
    read = prepare_read(table, pinned, spec)
    return assess(table, read, reference_read), read


def assess(table: Table, read: PreparedRead, reference: PreparedRead | None) -> QualityReport:
    """Profile the pinned rows' features and, with a reference read, their drift (one pass over each).

    Categorical features are binned over the reference's most frequent categories, with
    unknown and missing as bins of their own.
    """
    if reference is None:
        return QualityReport(None, (), profile_features(read, {}))
    features = tuple(name for name in read.layout.features if name in reference.layout.features)
    edges = feature_edges(table, reference, features)
    before = profile_features(reference, edges)
    bins = {name: profile.categories for name, profile in before.items() if profile.categorical}
    current = profile_features(read, edges, bins)
    drift = {
        name: psi(before[name], current[name])
        for name in features
        if name in edges or (before[name].categorical and current[name].categorical)
    }
    return QualityReport(reference.plan.pinned.snapshot_id, (), current, drift, before)


def psi(reference: FeatureProfile, current: FeatureProfile) -> float:
    """Population stability index of ``current`` against ``reference`` (same bins)."""
    expected, actual = np.maximum(reference.fractions(), _FLOOR), np.maximum(current.fractions(), _FLOOR)
    if not len(expected) or not len(actual):
        return 0.0
    return float(np.sum((actual - expected) * np.log(actual / expected)))


__all__ = [
    "BINS",
    "FeatureProfile",
    "GateResult",
    "QualityReport",
    "assess",
    "assess_snapshot",
    "bin_edges",
    "contract_changes",
    "judge",
    "profile_features",
    "psi",
]
