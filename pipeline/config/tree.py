"""The pipeline configuration: one nested, frozen, validated tree.

Everything that says *what* to train and *how* lives here, once: the CLI's flags and
``--set section.key=value`` overrides, the pipelines file (``icetrain.yaml``), the Dagster run
config, the MLflow params (``pipeline.tracking.params``), every checkpoint and replay all read and
write this tree. Key paths such as ``optim.lr`` are the public names; a bad key or value is a
``ConfigError`` of one line that names the key path and what is allowed.

*Where* data and runs live (project directory, catalog, MLflow store) is ``Settings``
(``pipeline.config.settings``), taken from the environment.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from pipeline.data.specs import LoaderConfig, ReadSpec, SnapshotRequest, parse_as_of
from pipeline.errors import ConfigError, InvalidNameError
from pipeline.names import check_ref_name, check_table_name, check_tracking_name

NOT_GIVEN = ("", "null", "~", "None")  # what `--set key=` may say for "not given" on an optional text key
_DEVICE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?LW#]+$")


class Section(BaseModel):
    """A frozen config section that refuses unknown keys; empty strings mean "not given"."""

    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _blank_is_none(cls, values: Any) -> Any:
        if isinstance(values, Mapping):
            return {key: (None if value == "" and _optional(cls, key) else value) for key, value in values.items()}
        return values

    @field_validator("*", mode="before")
    @classmethod
    def _no_nul(cls, value: Any) -> Any:
        """No text value may hold a NUL byte: MLflow, SQLite and file names all refuse one later, mid-run."""
        texts = (
            [value]
            if isinstance(value, str)
            else [v for v in value if isinstance(v, str)]
            if isinstance(value, (list, tuple))
            else []
        )
        if any("\x00" in text for text in texts):
            raise ValueError("holds a NUL byte (\\x00)")
        return value


class DataConfig(Section):
    """Which table and snapshot, which columns, which rows, and how the label is read."""

    table: str | None = Field(None, description="Iceberg table, 'namespace.table'.")
    snapshot_id: int | None = Field(
        None, ge=0, description="Train on this snapshot (give at most one of snapshot_id, ref, as_of)."
    )
    ref: str | None = Field(None, description="Train on the snapshot a tag or branch points at.")
    as_of: str | None = Field(None, description="Train on the snapshot current at this time (ISO 8601 or epoch ms).")
    since_snapshot_id: int | None = Field(
        None,
        ge=0,
        description="Incremental: only the rows appended after this snapshot (an ancestor of the pinned one).",
    )
    label: str = Field("label", min_length=1, description="The label column.")
    features: tuple[str, ...] | None = Field(
        None, description="Feature columns; default: the image column, else every numeric column."
    )
    filter: str | None = Field(None, description="PyIceberg row filter, e.g. 'label >= 3 and id < 100'.")
    sql: str | None = Field(None, description="Row-local DuckDB query over the rows, as table 'snapshot'.")
    task: Literal["classification", "regression"] = "classification"
    classes: tuple[str, ...] | None = Field(
        None, description="The label's classes; default: the table's icetrain.label.classes, else the values found."
    )
    image_shape: tuple[int, ...] | None = Field(
        None, description="Per-row shape of the single image feature, e.g. [1, 8, 8]."
    )
    image_max: float | None = Field(None, gt=0, description="The image's largest raw value (pixels are divided by it).")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0, description="Share of rows held out for validation.")
    split_seed: int = Field(0, ge=0, description="Seeds which rows are held out (independent of the training seed).")
    split_by: Literal["auto", "identifier", "position"] = Field(
        "auto",
        description="What identifies a row for the split: the table's identifier fields (stable across file rewrites), or data file and position; auto: identifier fields when there are any.",
    )
    min_rows: int = Field(1, ge=1, description="Refuse to train on fewer selected rows.")
    categorical: tuple[str, ...] = Field(
        (),
        description="Feature columns that are categories besides text columns (which always are): booleans, integer codes.",
    )
    max_categories: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="Keep at most this many of a categorical column's most frequent categories (the rest are unknown); default: refuse a column with more than 1000.",
    )
    min_frequency: int = Field(
        1,
        ge=1,
        description="Keep only categories seen at least this often in the training rows (the rest are unknown).",
    )
    impute: dict[str, Literal["mean", "median", "zero"]] | Literal["mean", "median", "zero"] | None = Field(
        None,
        description="Fill numeric features' nulls from the training rows: {column: mean|median|zero}, or one strategy for all.",
    )
    impute_indicator: bool = Field(False, description="Add a feature <column>_missing marking the filled rows.")
    time_parts: dict[str, tuple[str, ...]] = Field(
        default_factory=dict,
        description="Calendar parts of date/timestamp features as extra features: {created_at: [hour, dow, month]}.",
    )

    @field_validator("features", "classes", "categorical", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        """``--set data.features=a,b`` reads as the list [a, b]."""
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        if isinstance(value, (list, tuple)):
            return tuple(str(part) if isinstance(part, (int, float, bool)) else part for part in value)
        return value

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str | None) -> str | None:
        return _valid_table_name(value)

    @field_validator("ref")
    @classmethod
    def _ref_name(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                check_ref_name(value, "ref")
            except InvalidNameError as exc:
                raise ValueError(str(exc)) from None
        return value

    @field_validator("as_of")
    @classmethod
    def _as_of(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_as_of(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _one_snapshot_choice(self) -> DataConfig:
        given = [name for name in ("snapshot_id", "ref", "as_of") if getattr(self, name) is not None]
        if len(given) > 1:
            raise ValueError(
                f"give at most one of data.snapshot_id, data.ref, data.as_of; got {', '.join('data.' + g for g in given)}"
            )
        if self.features == ():
            raise ValueError(
                "data.features names no column; name at least one, or leave it out for every numeric column"
            )
        if self.features is not None and self.label in self.features:
            raise ValueError(f"label column {self.label!r} cannot also be a feature")
        if self.image_shape is not None and (self.features is None or len(self.features) != 1):
            raise ValueError("data.image_shape needs data.features to name exactly one column, the image")
        return self

    def request(self) -> SnapshotRequest:
        """The snapshot to resolve.

        Raises:
            ConfigError: no table is given.
        """
        if not self.table:
            raise ConfigError(
                "data.table: required ('namespace.table'); give --table, --pipeline or --set data.table=..."
            )
        return SnapshotRequest(self.table, self.snapshot_id, self.ref, parse_as_of(self.as_of) if self.as_of else None)

    def read_spec(self) -> ReadSpec:
        """What the data library reads from the pinned snapshot."""
        return ReadSpec(
            label=self.label,
            features=self.features,
            row_filter=self.filter,
            sql=self.sql,
            task=self.task,
            classes=self.classes,
            image_shape=self.image_shape,
            image_max=self.image_max,
            split_by=self.split_by,
            since_snapshot_id=self.since_snapshot_id,
            categorical=self.categorical,
            impute=tuple(self.impute.items())
            if isinstance(self.impute, dict)
            else (("*", self.impute),)
            if self.impute
            else (),
            impute_indicator=self.impute_indicator,
            time_parts=tuple((name, tuple(parts)) for name, parts in self.time_parts.items()),
        )


class LoaderSection(Section):
    """How rows are streamed into batches (see ``pipeline.data.loader.IcebergLoader``)."""

    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(0, ge=0, description="Processes decoding row groups; never changes the order of rows.")
    decode_threads: int = Field(2, ge=1)
    block_rows: int | None = Field(None, ge=1, description="Shuffle buffer in rows; default: buffer_mb of tensors.")
    buffer_mb: int = Field(32, ge=1)
    shuffle: bool = True
    cache_mb: int = Field(
        4096, ge=0, description="Decoded row groups kept on local disk ($ICETRAIN_CACHE_DIR) for later epochs; 0: off."
    )


class ModelSection(Section):
    """The model: a built-in name or 'package.module:function', called as f(feature_shape, num_classes, **kwargs)."""

    factory: str = Field("auto", min_length=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)

    @field_validator("kwargs")
    @classmethod
    def _json_kwargs(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"must hold JSON values (numbers, strings, lists, mappings): {exc}") from None
        return value


class EarlyStopping(Section):
    """Stop when a validation metric has not improved for ``patience`` epochs."""

    metric: str | None = Field(None, description="e.g. 'val_loss' or 'val_accuracy'; None: never stop early.")
    patience: int = Field(3, ge=1)
    mode: Literal["auto", "min", "max"] = Field("auto", description="auto: 'min' for losses and errors, else 'max'.")


class OptimSection(Section):
    """Optimisation: optimizer, learning rate and its schedule, epochs, class weights, early stopping."""

    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(3e-3, gt=0, allow_inf_nan=False)
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False)
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD only.")
    schedule: Literal["constant", "cosine", "step"] = "constant"
    step_epochs: int = Field(
        10, ge=1, description="'step' schedule: multiply the rate by step_gamma every this many epochs."
    )
    step_gamma: float = Field(0.1, gt=0, le=1)
    epochs: int = Field(10, ge=1, le=100_000)
    class_weights: Literal["none", "balanced"] = Field(
        "none", description="'balanced' weighs each class by rows / (classes * its rows)."
    )
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)


class ComputeSection(Section):
    """Where and how the arithmetic runs."""

    device: str = Field("auto", description="auto (CUDA when present), cpu, cuda or cuda:N.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="bf16/fp16 run under autocast; fp16 with a GradScaler."
    )
    nproc: int = Field(1, ge=1, le=1024, description="Processes on this machine (DistributedDataParallel when > 1).")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not _DEVICE.match(value):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value


class CheckpointSection(Section):
    """Checkpoints: every epoch, and every ``every_steps`` optimizer steps when given."""

    every_steps: int | None = Field(None, ge=1)


class TrackingSection(Section):
    """Where the run is recorded in MLflow."""

    experiment: str | None = Field(None, description="Default: ICETRAIN_EXPERIMENT, else 'icetrain'.")
    run_name: str | None = None
    registered_model: str | None = Field(None, description="Register the trained model under this name.")

    @field_validator("experiment", "registered_model")
    @classmethod
    def _tracking_name(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            try:
                check_tracking_name(value, "experiment" if info.field_name == "experiment" else "registered model")
            except InvalidNameError as exc:
                raise ValueError(str(exc)) from None
        return value


class RetrainSection(Section):
    """When Dagster retrains a declared pipeline (both off until turned on, in the UI or here)."""

    schedule: str = Field("0 3 * * *", description="Cron schedule of the retraining job.")
    schedule_on: bool = False
    sensor_on: bool = False
    sensor_interval_s: int = Field(60, ge=5)
    train_on_first_snapshot: bool = Field(
        False, description="Whether a newly started sensor trains on the snapshot it finds."
    )
    min_new_rows: int = Field(
        1,
        ge=1,
        description="The sensor retrains only when at least this many rows were added since the last trained model's snapshot.",
    )
    champion_metric: str = Field(
        "val_loss", description="Validation metric deciding whether a new model replaces the champion."
    )
    champion_margin: float = Field(0.0, ge=0, description="How much better the challenger must be.")
    on_degradation: bool = Field(
        False,
        description="Retrain when the champion's realized monitor.metric falls below its validation score by monitor.margin (sensor NAME_retrain_on_degradation).",
    )
    on_prediction_drift: bool = Field(
        False, description="Also retrain when the champion's prediction drift passes monitor.max_prediction_psi."
    )

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        return _valid_cron(value)


class GatesSection(Section):
    """Data-quality gates run by Dagster's blocking checks before training."""

    max_psi: float = Field(
        0.25,
        gt=0,
        description="Largest population stability index of any feature against the reference (champion's) snapshot.",
    )
    max_null_fraction: float = Field(0.0, ge=0, le=1, description="Largest share of null or NaN values in any feature.")


class PredictSection(Section):
    """Where a pipeline's champion scores: ``icetrain predict --pipeline NAME`` and the ``NAME/predictions`` asset."""

    table: str | None = Field(None, description="The table scored; default: data.table.")
    into: str | None = Field(
        None, description="The predictions table; default: NAME_predictions in data.table's namespace."
    )
    batch_rows: int = Field(65536, ge=1, le=1_000_000, description="Rows per forward pass.")
    file_mb: int = Field(
        128, ge=1, le=4096, description="Predictions per data file (Arrow megabytes; not held in memory)."
    )
    sensor_on: bool = Field(False, description="Score each new snapshot of predict.table with the champion (Dagster).")
    sensor_interval_s: int = Field(60, ge=5)
    schedule: str = Field("0 4 * * *", description="Cron schedule of the scoring job.")
    schedule_on: bool = False

    @field_validator("schedule")
    @classmethod
    def _cron(cls, value: str) -> str:
        return _valid_cron(value)

    @field_validator("table", "into")
    @classmethod
    def _table_name(cls, value: str | None) -> str | None:
        return _valid_table_name(value)


class MonitorSection(Section):
    """How the ``NAME/monitoring`` asset watches the champion's predictions and the outcomes that arrive later."""

    outcomes: str | None = Field(
        None,
        description="Table of real outcomes keyed by the scored table's identifier; default: the label in a later snapshot of predict.table.",
    )
    outcome: str | None = Field(None, description="The outcome column; default: data.label.")
    window: Literal["snapshot", "day"] = Field(
        "snapshot", description="A scoring window: each scored input snapshot, or each day predictions were made."
    )
    metric: Literal["pr_auc", "roc_auc", "precision", "recall", "accuracy", "mae"] = Field(
        "pr_auc", description="The realized metric compared with the model's validation score (mae for regression)."
    )
    margin: float = Field(
        0.1, ge=0, description="How far the realized metric may fall below the validation score before it is a breach."
    )
    min_coverage: float = Field(
        0.5, gt=0, le=1, description="A window is judged once this share of its predictions has an outcome."
    )
    max_prediction_psi: float = Field(
        0.25, gt=0, description="Largest PSI of a window's scores against the model's validation scores."
    )
    max_input_psi: float = Field(
        0.25, gt=0, description="Largest PSI of any feature of the scored rows against the model's training snapshot."
    )
    sensor_interval_s: int = Field(60, ge=5, description="How often the degradation sensor looks.")

    @field_validator("outcomes")
    @classmethod
    def _table_name(cls, value: str | None) -> str | None:
        return _valid_table_name(value)


def _valid_cron(value: str) -> str:
    parts = value.split()
    if len(parts) != 5 or not all(_CRON_FIELD.match(part) for part in parts):
        raise ValueError(f"must be a 5-field cron expression like '0 3 * * *', got {value!r}")
    return value


def _valid_table_name(value: str | None) -> str | None:
    """A table name, checked as the catalog layer does (pydantic reports the ValueError with the key path)."""
    if value is not None:
        try:
            check_table_name(value)
        except InvalidNameError as exc:
            raise ValueError(str(exc)) from None
    return value


class PipelineConfig(Section):
    """The whole tree. ``seed`` seeds weight initialisation and the data order."""

    seed: int = Field(0, ge=0, le=2**63 - 1)
    data: DataConfig = Field(default_factory=DataConfig)
    loader: LoaderSection = Field(default_factory=LoaderSection)
    model: ModelSection = Field(default_factory=ModelSection)
    optim: OptimSection = Field(default_factory=OptimSection)
    compute: ComputeSection = Field(default_factory=ComputeSection)
    checkpoint: CheckpointSection = Field(default_factory=CheckpointSection)
    tracking: TrackingSection = Field(default_factory=TrackingSection)
    retrain: RetrainSection = Field(default_factory=RetrainSection)
    gates: GatesSection = Field(default_factory=GatesSection)
    predict: PredictSection = Field(default_factory=PredictSection)
    monitor: MonitorSection = Field(default_factory=MonitorSection)

    def loader_config(self, split: str, *, shuffle: bool | None = None, batch_size: int | None = None) -> LoaderConfig:
        """The data library's loader settings for one split ('all', 'train' or 'val')."""
        return LoaderConfig(
            batch_size=batch_size or self.loader.batch_size,
            shuffle=self.loader.shuffle if shuffle is None else shuffle,
            seed=self.seed,
            block_rows=self.loader.block_rows,
            buffer_mb=self.loader.buffer_mb,
            num_workers=self.loader.num_workers,
            decode_threads=self.loader.decode_threads,
            cache_mb=self.loader.cache_mb,
            split=split,
            val_fraction=self.data.val_fraction,
            split_seed=self.data.split_seed,
        )

    def updated(self, values: Mapping[str, Any]) -> PipelineConfig:
        """A copy with ``{"optim.lr": 0.01, ...}`` applied and validated again."""
        tree = self.model_dump()
        for path, value in values.items():
            _assign(tree, path, value)
        return parse_config(tree)


def parse_config(tree: Mapping[str, Any], *, where: str = "") -> PipelineConfig:
    """Validate a nested mapping (from YAML, JSON, run config or params) into a config.

    Raises:
        ConfigError: one line naming the first bad key path and what is allowed there.
    """
    try:
        return PipelineConfig.model_validate(dict(tree))
    except ValidationError as exc:
        raise ConfigError(f"{where}{describe_error(exc)}") from None


def describe_error(exc: ValidationError) -> str:
    """The first validation error as 'key.path: what is wrong (got X)'."""
    error = exc.errors()[0]
    loc = [str(part) for part in error["loc"]]
    path = ".".join(loc) or "config"
    if error["type"] == "extra_forbidden":
        allowed = ", ".join(_section_keys(PipelineConfig, loc[:-1]))
        return f"{path}: unknown key; allowed here: {allowed}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "missing":
        return f"{path}: required"
    got = error.get("input")
    shown = (
        "" if isinstance(got, (Mapping, list)) or got is None or error["type"] == "value_error" else f" (got {got!r})"
    )
    return f"{path}: {message}{shown}"


def apply_overrides(tree: dict[str, Any], assignments: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` strings to a nested mapping (a copy is returned).

    Values are read as YAML (``3``, ``0.1``, ``[a, b]``, ``null``, ``{hidden: 64}``), except for
    keys that hold text (filters, SQL, names), which take the text as it is.

    Raises:
        ConfigError: the assignment is malformed or its key path does not exist.
    """
    result = json.loads(json.dumps(tree))
    for assignment in assignments:
        path, sep, text = assignment.partition("=")
        path = path.strip()
        if not sep or not path:
            raise ConfigError(f"--set expects section.key=value, got {assignment!r}")
        annotation = field_annotation(path)
        if is_text_field(annotation):
            value: Any = None if text.strip() in NOT_GIVEN and type(None) in get_args(annotation) else text
        else:
            try:
                value = yaml.safe_load(text) if text.strip() else None
            except yaml.YAMLError as exc:
                raise ConfigError(f"{path}: cannot read value {text!r} ({str(exc).splitlines()[0]})") from None
        _assign(result, path, value)
    return result


def field_annotation(path: str) -> Any:
    """The type annotation at a key path (``Any`` inside free-form mappings such as model.kwargs).

    Raises:
        ConfigError: a part of the path is not a key of its section.
    """
    model: type[BaseModel] = PipelineConfig
    parts = path.split(".")
    for depth, part in enumerate(parts):
        fields = model.model_fields
        if part not in fields:
            where = ".".join(parts[:depth]) or "the top level"
            raise ConfigError(f"{'.'.join(parts[: depth + 1])}: unknown key; allowed in {where}: {', '.join(fields)}")
        annotation = fields[part].annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
            continue
        if depth < len(parts) - 1:
            if get_origin(annotation) is dict:
                return Any
            raise ConfigError(f"{'.'.join(parts[: depth + 1])} is a value, not a section; cannot set {path}")
        return annotation
    raise ConfigError(f"{path} is a section; set one of its keys: {', '.join(model.model_fields)}")


def merge_trees(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``override`` laid over ``base``, section by section (mappings merge, other values replace)."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping) and key != "kwargs":
            merged[key] = merge_trees(merged[key], value)
        else:
            merged[key] = value
    return merged


def _assign(tree: dict[str, Any], path: str, value: Any) -> None:
    field_annotation(path)
    parts = path.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[parts[-1]] = value


def _section_keys(model: type[BaseModel], loc: list[str]) -> list[str]:
    for part in loc:
        annotation = model.model_fields[part].annotation if part in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _optional(model: type[BaseModel], key: str) -> bool:
    field = model.model_fields.get(key)
    return field is not None and type(None) in get_args(field.annotation)


def is_text_field(annotation: Any) -> bool:
    """Whether a key holds free text (a filter, SQL, a name), taken as written rather than read as YAML."""
    if annotation is str:
        return True
    args = [a for a in get_args(annotation) if a is not type(None)]
    return get_origin(annotation) is not Literal and len(args) == 1 and args[0] is str


__all__ = [
    "CheckpointSection",
    "ComputeSection",
    "DataConfig",
    "EarlyStopping",
    "GatesSection",
    "LoaderSection",
    "ModelSection",
    "MonitorSection",
    "OptimSection",
    "PipelineConfig",
    "RetrainSection",
    "TrackingSection",
    "apply_overrides",
    "describe_error",
    "field_annotation",
    "is_text_field",
    "merge_trees",
    "parse_config",
]
