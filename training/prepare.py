"""One prepared run: the value every front end trains from.

``prepare_run`` turns settings, a config and the caller's choices into a ``PreparedRun``:
MLflow answers, the table is loaded once, the snapshot is pinned once, the read is planned,
and the data is judged once (the data gate, plus the quality gates against the reference
snapshot when asked). The CLI, Dagster's ``NAME/training_data`` asset, ``reproduce`` and
``--from-run`` make one; ``icetrain train --resume`` reads one back from the checkpoint;
``training.launch`` hands one to torchrun's workers. All of them go through the one
``to_json`` / ``from_json`` (pickling, as Dagster's IO manager and ``torch.distributed``
do, goes through it too), and ``training.train.run_prepared`` trains it.

The loaded table and the planned read ride along in this process only; a ``PreparedRun``
read back from JSON loads its table again, once, and checks that the snapshot still exists.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from pyiceberg.table import Table

from pipeline.config.settings import Settings
from pipeline.config.tree import PipelineConfig, parse_config
from pipeline.data.encoding import Encoding
from pipeline.data.gate import DataReport, inspect_data
from pipeline.data.quality import GateResult, QualityReport, assess_snapshot, judge
from pipeline.data.reading import PreparedRead, prepare_read
from pipeline.data.snapshots import PinnedSnapshot, resolve_snapshot
from pipeline.data.vocabulary import learn_encoding
from pipeline.errors import ConfigError, EncodingError, GateError, SnapshotNotFoundError
from pipeline.lake.catalog import load_table, open_catalog
from pipeline.tracking.client import tracking_client
from pipeline.tracking.lineage import replay_encoding
from pipeline.tracking.params import ENCODING_DIGEST_PARAM
from pipeline.tracking.reference import last_finished_run, reference_snapshot
from pipeline.tracking.tags import ENCODING_CHANGES_TAG, GATES_TAG
from training.liveness import check_tracking

FORMAT = 1

Gates = Literal["off", "judge", "skip"]
log = logging.getLogger("icetrain")


@dataclass(frozen=True)
class RunOrigin:
    """Who asks for the run: the pipeline, the front end, the Dagster run, extra tags, a run to resume."""

    pipeline: str | None = None
    launched_by: str = "api"
    dagster_run_id: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    resume_run_id: str | None = None


@dataclass(frozen=True)
class PreparedRun:
    """A pinned, judged run, ready to train.

    Attributes:
        config: the config as asked; ``pinned`` is what its snapshot request resolved to
            (the one place the snapshot id lives), the run resolves the rest when it trains.
        pinned: the snapshot every rank reads.
        origin: who asked.
        report: the data gate's report on every selected row (None when the schema contract
            failed, so nothing could be read).
        quality: the quality gates' findings against the reference snapshot (None when the
            gates were not judged).
        gates: 'judge' (judged), 'skip' (the caller skipped them: recorded on the run) or 'off'
            (the pipeline declares none).
        encoding: the categorical columns' vocabularies (learned from the training split, or
            the recorded ones of the run being replayed); None without categorical features.
        table, read: the loaded table and the planned read (with the encoding), in this process only.
    """

    config: PipelineConfig
    pinned: PinnedSnapshot
    origin: RunOrigin
    report: DataReport | None
    quality: QualityReport | None = None
    gates: Gates = "off"
    encoding: Encoding | None = None
    table: Table | None = field(default=None, compare=False, repr=False)
    read: PreparedRead | None = field(default=None, compare=False, repr=False)

    def verdicts(self) -> tuple[GateResult, ...]:
        """The quality gates' verdicts (none when they were not judged)."""
        if self.quality is None:
            return ()
        gates = self.config.gates
        return judge(self.quality, gates.max_psi, gates.max_null_fraction, self.imputed)

    @property
    def imputed(self) -> tuple[str, ...]:
        """The numeric features whose nulls are filled (``data.impute``)."""
        if self.encoding is not None:
            return self.encoding.filled
        return tuple(name for name, _ in self.read.layout.imputed) if self.read is not None else ()

    def raise_if_blocked(self) -> None:
        """Refuse data a gate blocks, in one line naming the gate, the feature and the number.

        Raises:
            GateError: a quality gate failed (a broken schema contract first).
            EmptyDataError, LabelError: the data gate's first error.
        """
        failed = [gate for gate in self.verdicts() if not gate.passed]
        if failed:
            assert self.quality is not None
            against = (
                f" against reference snapshot {self.quality.reference_snapshot}"
                if self.quality.reference_snapshot is not None
                else ""
            )
            raise GateError(
                f"gate {failed[0].name} failed for snapshot {self.pinned.snapshot_id} of {self.pinned.table!r}{against}:"
                f" {failed[0].description}; --skip-gates trains anyway"
            )
        if self.report is None:
            raise GateError(f"snapshot {self.pinned.snapshot_id} of {self.pinned.table!r} was not judged")
        self.report.raise_if_failed()

    def gates_tag(self) -> dict[str, str]:
        """The run's ``icetrain.gates`` tag: what happened to the quality gates (none when the pipeline declares none)."""
        if self.gates == "skip":
            return {GATES_TAG: "skipped"}
        if self.gates == "judge" and self.quality is not None:
            reference = self.quality.reference_snapshot
            return {
                GATES_TAG: f"passed against snapshot {reference}"
                if reference is not None
                else "passed (no reference yet)"
            }
        return {}

    def resuming(self, run_id: str) -> PreparedRun:
        """This run, to be continued as MLflow run ``run_id`` from its checkpoint."""
        return replace(self, origin=replace(self.origin, resume_run_id=run_id))

    def in_dagster_run(self, run_id: str) -> PreparedRun:
        """This run, trained by Dagster run ``run_id`` (which may not be the one that prepared it)."""
        return replace(self, origin=replace(self.origin, launched_by="dagster", dagster_run_id=run_id))

    def to_json(self) -> str:
        """The run as JSON (snapshot ids as text); the loaded table and planned read stay behind."""
        origin = self.origin
        return json.dumps(
            {
                "format": FORMAT,
                "config": self.config.model_dump(mode="json"),
                "pinned": self.pinned.to_dict(),
                "origin": {
                    "pipeline": origin.pipeline,
                    "launched_by": origin.launched_by,
                    "dagster_run_id": origin.dagster_run_id,
                    "tags": dict(origin.tags),
                    "resume_run_id": origin.resume_run_id,
                },
                "report": self.report.to_dict() if self.report is not None else None,
                "quality": self.quality.to_dict() if self.quality is not None else None,
                "gates": self.gates,
                "encoding": self.encoding.to_dict() if self.encoding is not None else None,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> PreparedRun:
        """A run from ``to_json``'s text.

        Raises:
            ConfigError: the text is not a prepared run of this icetrain.
        """
        try:
            values = json.loads(text)
            if values.get("format") != FORMAT:
                raise ValueError(f"format {values.get('format')!r}")
            return cls(
                config=parse_config(values["config"]),
                pinned=PinnedSnapshot.from_dict(values["pinned"]),
                origin=RunOrigin(**values["origin"]),
                report=DataReport.from_dict(values["report"]) if values["report"] is not None else None,
                quality=QualityReport.from_dict(values["quality"]) if values["quality"] is not None else None,
                gates=values["gates"],
                encoding=Encoding.from_dict(values["encoding"]) if values["encoding"] is not None else None,
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"not a prepared run of this icetrain ({exc})") from exc

    def __reduce__(self) -> tuple[Any, ...]:
        return (PreparedRun.from_json, (self.to_json(),))


def prepare_run(
    settings: Settings,
    config: PipelineConfig,
    origin: RunOrigin | None = None,
    *,
    gates: Gates = "off",
    encoding: Encoding | None = None,
) -> PreparedRun:
    """Pin the config's snapshot once and judge it once.

    Args:
        origin: who asks (the pipeline's name is needed to judge the quality gates).
        gates: 'judge' also profiles the features and judges the quality gates against the
            reference snapshot (the champion's, else the pipeline's last finished run's);
            'skip' records that the caller skipped them; 'off' (a pipeline with no ``gates``).
        encoding: a recorded encoding to use (a replay); otherwise the categorical columns'
            vocabularies are learned now from the training split, in one pass.

    A failed gate does not raise here: the caller refuses with ``raise_if_blocked`` (the CLI,
    ``run_prepared``) or reports each verdict (Dagster's checks).

    Raises:
        TrackingError: MLflow does not answer.
        TableNotFoundError, SnapshotNotFoundError, EmptyDataError, FilterError, ColumnError,
            TransformError, ConfigError: the request cannot be read as asked.
    """
    origin = origin or RunOrigin()
    log.info("checking the MLflow tracking store")
    check_tracking(settings)
    request = config.data.request()
    log.info("pinning a snapshot of %s", request.table)
    table = load_table(open_catalog(settings), request.table)
    pinned = resolve_snapshot(table, request, settings.catalog_name)
    spec = config.data.read_spec()
    quality = None
    log.info("planning the read of snapshot %s and checking its labels", pinned.snapshot_id)
    if gates == "judge":
        if not origin.pipeline:
            raise ConfigError("the quality gates compare against a pipeline's models: name the pipeline")
        log.info("judging snapshot %s with the pipeline's quality gates", pinned.snapshot_id)
        reference = reference_snapshot(
            tracking_client(settings),
            settings.catalog_name,
            table,
            pinned.table,
            origin.pipeline,
            config.tracking.registered_model,
        )
        quality, read = assess_snapshot(table, pinned, spec, reference)
    else:
        read = prepare_read(table, pinned, spec)
    report = None
    if read is not None:
        classification = config.data.task == "classification"
        report, _ = inspect_data(
            read,
            min_rows=config.data.min_rows,
            count_classes=classification and (config.optim.class_weights == "balanced" or gates == "judge"),
        )
        if read.layout.needs_encoding and encoding is None and report.passed:
            log.info("learning the encoding of %s", ", ".join((*read.layout.categorical, *dict(read.layout.imputed))))
            encoding = learn_encoding(
                read,
                config.loader_config("train" if config.data.val_fraction > 0 else "all"),
                min_frequency=config.data.min_frequency,
                max_categories=config.data.max_categories,
                threads=config.loader.decode_threads,
            )
            if origin.pipeline:
                origin = replace(
                    origin, tags={**encoding_changes(settings, origin.pipeline, pinned.table, encoding), **origin.tags}
                )
        if encoding is not None or not read.layout.needs_encoding:
            read = replace(read, layout=read.layout.with_encoding(encoding))
    return PreparedRun(config, pinned, origin, report, quality, gates, encoding, table=table, read=read)


def encoding_changes(settings: Settings, pipeline: str, table_name: str, encoding: Encoding) -> dict[str, str]:
    """How a freshly learned encoding differs from the pipeline's last finished run's, as the run's tag (and said on the log).

    Raises:
        TrackingError: MLflow could not be asked.
    """
    previous = last_finished_run(tracking_client(settings), pipeline, table_name)
    if previous is None or previous.data.params.get(ENCODING_DIGEST_PARAM) in (None, encoding.digest):
        return {}
    try:
        before = replay_encoding(settings, previous.info.run_id)
    except EncodingError:  # that run's vocabularies are unreadable: nothing to compare with
        return {}
    changes = encoding.changes_since(before) if before is not None else []
    if not changes:
        return {}
    text = f"since run {previous.info.run_id}: " + "; ".join(changes)
    log.info("the categories changed %s", text)
    return {ENCODING_CHANGES_TAG: text[:5000]}


def attached(settings: Settings, prepared: PreparedRun) -> PreparedRun:
    """The run with its table loaded (once) and its read planned: as it is when prepared here, else from the catalog.

    Raises:
        SnapshotNotFoundError: the pinned snapshot no longer exists (expired since it was pinned).
    """
    if prepared.table is not None and prepared.read is not None:
        return prepared
    pinned = prepared.pinned
    table = prepared.table or load_table(open_catalog(settings), pinned.table)
    if table.snapshot_by_id(pinned.snapshot_id) is None:
        raise SnapshotNotFoundError(
            f"pinned snapshot {pinned.snapshot_id} of {pinned.table!r} no longer exists (expired?)"
        )
    read = prepared.read
    if read is None:
        planned = prepare_read(table, pinned, prepared.config.data.read_spec())
        read = replace(planned, layout=planned.layout.with_encoding(prepared.encoding))
    return replace(prepared, table=table, read=read)


__all__ = ["PreparedRun", "RunOrigin", "attached", "prepare_run"]
