"""The served model: every logged model is also an MLflow pyfunc over a DataFrame of the table's raw columns.

A model is saved in MLflow's pytorch format (``training.recorder``) with one more folder,
``icetrain/scoring.json``: the run's resolved data section (features, classes, image layout,
SQL transform), the raw columns it reads (an Iceberg schema), its recorded encoding
(categories, fills, time origins), the class weights it was trained with and the decision
threshold chosen on validation. Its ``python_function`` flavor points at this module, so
``mlflow.pyfunc.load_model("models:/NAME@champion").predict(df)`` and ``mlflow models serve``
match the DataFrame's columns by name, apply the SQL and the encoding, run the model and
return the class label and per-class probabilities (the value, for regression): the same
functions ``icetrain predict`` scores with, so both give the same predictions on the same rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import mlflow.pytorch
import numpy as np
import pandas as pd
import pyarrow as pa
import torch
from mlflow.models import Model, ModelSignature
from mlflow.pyfunc import add_to_model
from mlflow.types import ColSpec
from mlflow.types import Schema as ColumnSchema
from mlflow.types.schema import AnyType
from pyiceberg.schema import Schema

from pipeline.config.tree import DataConfig, PipelineConfig
from pipeline.data.encoding import Encoding, is_time
from pipeline.data.rows import single_batch
from pipeline.data.scores import ScoreProfile, best_threshold
from pipeline.data.specs import ReadSpec
from pipeline.data.tensors import TensorLayout, features_to_tensor, layout_for, model_inputs
from pipeline.data.transform import referenced_columns, sandboxed_connection, transform_batch
from pipeline.errors import IcetrainError, PredictionError
from pipeline.lake.predictions import class_label_type
from pipeline.tracking.lineage import mlflow_type
from training.compute import Compute

SPEC_DIR = "icetrain"
SPEC_FILE = "scoring.json"
FORMAT = 1


@dataclass(frozen=True)
class ScoringSpec:
    """How a model scores rows of its table: what to read, how to encode it, how to name its outputs.

    Attributes:
        data: the run's resolved data section (features, classes, image layout, SQL).
        columns: the raw columns the model reads (the features, or what the SQL names), with their types.
        encoding: categories, fill values and time origins recorded by the run.
        class_weights: the loss weights per class, if any: probabilities are corrected back to
            the training prior by dividing them out.
        threshold: for two classes, the positive class's probability at or above which the
            validation rows are best told apart (largest F1), chosen on validation.
        reference: how the model's scores (``score``) spread over the validation rows: the
            reference profile prediction drift is measured against.
    """

    data: DataConfig
    columns: Schema
    encoding: Encoding | None = None
    class_weights: tuple[float, ...] | None = None
    threshold: float | None = None
    reference: ScoreProfile | None = None

    @property
    def score_kind(self) -> str:
        """What ``score`` gives: 'probability' (two classes), 'class' (more) or 'value' (regression)."""
        if self.task != "classification":
            return "value"
        return "probability" if len(self.classes or ()) == 2 else "class"

    @property
    def task(self) -> str:
        return self.data.task

    @property
    def classes(self) -> tuple[str, ...] | None:
        return self.data.classes if self.task == "classification" else None

    def read_spec(self, since_snapshot_id: int | None = None) -> ReadSpec:
        """The read of a snapshot to score: every row (no filter), only those appended since ``since_snapshot_id`` if given."""
        spec = self.data.read_spec()
        return ReadSpec(**{**spec.__dict__, "row_filter": None, "since_snapshot_id": since_snapshot_id})

    def layout(self, rows: pa.Schema) -> TensorLayout:
        """The model's tensor layout over rows of this schema (after the SQL), with the run's encoding."""
        return layout_for(rows, {}, self.read_spec(), scoring=True).with_encoding(self.encoding)

    def outputs(self, outputs: torch.Tensor) -> dict[str, pa.Array]:
        """``prediction`` (and ``probabilities``) from the model's raw outputs, as the predictions table stores them."""
        return self.scored(outputs)[0]

    def scored(self, outputs: torch.Tensor) -> tuple[dict[str, pa.Array], np.ndarray]:
        """The prediction columns (``outputs``) and each row's score (``score``), from one softmax.

        Classification: the softmax of the outputs with the class weights divided out (the
        training prior back), in the run's class order; the prediction is the second class
        when its probability reaches the decision threshold (two classes), else the most
        probable class (the first on ties).

        Raises:
            PredictionError: the model gives another number of outputs than there are classes.
        """
        if self.task != "classification":
            values = outputs.reshape(-1).double().numpy()
            return {"prediction": pa.array(values)}, values
        classes = self.classes
        assert classes is not None
        if outputs.shape[1] != len(classes):
            raise PredictionError(
                f"the model gives {outputs.shape[1]} outputs for {len(classes)} classes ({', '.join(classes)})"
            )
        by_class = self._class_major_probabilities(outputs)
        if self.threshold is not None and len(classes) == 2:
            chosen = (by_class[1] >= self.threshold).astype(np.intp)
        else:
            chosen = _first_largest(by_class)
        probabilities = np.ascontiguousarray(by_class.T)
        offsets = pa.array(np.arange(0, probabilities.size + 1, probabilities.shape[1], dtype=np.int32))
        columns = {
            "prediction": pa.array(self._class_values[chosen], class_label_type(classes)),
            "probabilities": pa.ListArray.from_arrays(offsets, pa.array(probabilities.reshape(-1))),
        }
        scores = by_class[1] if len(classes) == 2 else chosen.astype(np.float64)
        return columns, scores

    @property
    def score_edges(self) -> tuple[float, ...]:
        """The bins scores are counted over: the reference profile's, else the kind's defaults."""
        if self.reference is not None:
            return self.reference.edges
        return ScoreProfile.reference(np.zeros(0), self.score_kind, len(self.classes or ())).edges

    @cached_property
    def _class_values(self) -> np.ndarray:
        """The classes as the predictions table stores them (integers when every class is one), indexable by class."""
        classes = self.classes or ()
        return np.array([int(c) for c in classes]) if class_label_type(classes) == pa.int64() else np.array(classes)

    def _class_major_probabilities(self, outputs: torch.Tensor) -> np.ndarray:
        """Probabilities as [classes, rows]: reductions over a few classes run several times faster along the first axis."""
        logits = np.ascontiguousarray(outputs.float().numpy().T)
        if self.class_weights is not None:
            logits -= self._log_weights[:, None]
        logits -= logits.max(axis=0)
        exponentials = np.exp(logits, out=logits)
        exponentials /= exponentials.sum(axis=0)
        return exponentials

    @cached_property
    def _log_weights(self) -> np.ndarray:
        return np.log(np.maximum(np.asarray(self.class_weights, dtype=np.float32), np.float32(1e-12)))

    def score(self, outputs: torch.Tensor) -> np.ndarray:
        """One number per row (see ``score_kind``): what prediction drift is measured on."""
        return self.scored(outputs)[1]

    def signature(self) -> ModelSignature:
        """The served model's signature: its raw columns by name (presence checked by the model itself, in one line).

        Dates and timestamps are declared of any type (datetimes or ISO 8601 text, converted
        here): MLflow's own datetime check refuses time-zone-aware values, which is what
        Iceberg's timestamptz columns hold.
        """
        inputs = ColumnSchema(
            [
                ColSpec(AnyType() if is_time(f.type) else mlflow_type(f.type), f.name, required=False)
                for f in self.columns.as_arrow()
            ]
        )
        return ModelSignature(inputs=inputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "data": self.data.model_dump(mode="json"),
            "columns": json.loads(self.columns.model_dump_json()),
            "encoding": self.encoding.to_dict() if self.encoding is not None else None,
            "class_weights": list(self.class_weights) if self.class_weights is not None else None,
            "threshold": self.threshold,
            "reference": self.reference.to_dict() if self.reference is not None else None,
        }

    @classmethod
    def read(cls, folder: str | Path) -> ScoringSpec:
        """The spec saved in a model directory (``folder``), or a folder holding ``icetrain/scoring.json``.

        Raises:
            PredictionError: the model was saved without a scoring spec (by an older icetrain) or with a damaged one.
        """
        path = Path(folder) / SPEC_DIR / SPEC_FILE
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError as exc:
            raise PredictionError(
                f"the model in {folder} has no {SPEC_DIR}/{SPEC_FILE} (saved by an older icetrain); train it again with icetrain train --from-run"
            ) from exc
        except (ValueError, KeyError, TypeError) as exc:
            raise PredictionError(f"the model's {SPEC_DIR}/{SPEC_FILE} is damaged: {exc}") from exc

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ScoringSpec:
        if values.get("format") != FORMAT:
            raise PredictionError(f"{SPEC_DIR}/{SPEC_FILE} has format {values.get('format')!r}, not {FORMAT}")
        weights = values.get("class_weights")
        return cls(
            data=DataConfig.model_validate(values["data"]),
            columns=Schema.model_validate(values["columns"]),
            encoding=Encoding.from_dict(values["encoding"]) if values.get("encoding") else None,
            class_weights=tuple(weights) if weights is not None else None,
            threshold=values.get("threshold"),
            reference=ScoreProfile.from_dict(values["reference"]) if values.get("reference") else None,
        )


def _first_largest(by_class: np.ndarray) -> np.ndarray:
    """Per row (column of ``by_class``), the index of the largest value, the first on ties: one vectorised pass per class."""
    chosen = np.zeros(by_class.shape[1], dtype=np.intp)
    best = by_class[0].copy()
    for index in range(1, len(by_class)):
        better = by_class[index] > best
        chosen[better] = index
        np.maximum(best, by_class[index], out=best)
    return chosen


def scoring_spec(
    config: PipelineConfig,
    snapshot_schema: Schema,
    encoding: Encoding | None,
    class_weights: torch.Tensor | None,
    threshold: float | None = None,
) -> ScoringSpec:
    """A trained run's scoring spec: its resolved data section and the raw columns it reads from its snapshot's schema."""
    data = config.data
    names = [f.name for f in snapshot_schema.fields]
    wanted = referenced_columns(data.sql, names) if data.sql else data.features
    keep = names if wanted is None else [name for name in names if name in wanted]
    weights = tuple(float(w) for w in class_weights.tolist()) if class_weights is not None else None
    return ScoringSpec(data, snapshot_schema.select(*keep), encoding, weights, threshold)


@dataclass(frozen=True)
class ValidationScores:
    """The final model's scores of the validation rows, with their labels (every rank's, gathered)."""

    scores: np.ndarray
    labels: np.ndarray


def validation_scores(
    module: torch.nn.Module, spec: ScoringSpec, loader: Iterable[tuple[torch.Tensor, ...]], compute: Compute
) -> ValidationScores:
    """The model's scores (``ScoringSpec.score``) and the labels of one ordered pass over the validation rows, every rank's."""
    module.eval()
    scores: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    with torch.inference_mode():
        for *inputs, targets in loader:
            with compute.autocast():
                outputs = module(*(t.to(compute.device, non_blocking=True) for t in inputs))
            scores.append(torch.from_numpy(spec.score(outputs.float().cpu())))
            labels.append(targets.cpu())
    joined = compute.gather(torch.cat(scores) if scores else torch.empty(0, dtype=torch.float64))
    truth = compute.gather(torch.cat(labels) if labels else torch.empty(0))
    return ValidationScores(joined.numpy(), truth.numpy())


def with_validation(spec: ScoringSpec, validation: ValidationScores) -> tuple[ScoringSpec, dict[str, float]]:
    """The spec with its reference profile and (two classes) decision threshold, and the metrics to log about them."""
    kind = spec.score_kind
    reference = ScoreProfile.reference(validation.scores, kind, len(spec.classes or ()))
    if kind != "probability":
        return replace(spec, reference=reference), {}
    threshold, precision, recall = best_threshold(validation.scores, validation.labels == 1)
    metrics = {"val_threshold": threshold, "val_precision_at_threshold": precision, "val_recall_at_threshold": recall}
    return replace(spec, reference=reference, threshold=threshold), metrics


def save_served(folder: Path, spec: ScoringSpec) -> None:
    """Make a saved pytorch model servable: write the scoring spec and point its pyfunc flavor here."""
    (folder / SPEC_DIR).mkdir(exist_ok=True)
    (folder / SPEC_DIR / SPEC_FILE).write_text(json.dumps(spec.to_dict(), indent=1, sort_keys=True))
    model = Model.load(str(folder / "MLmodel"))
    environments = model.flavors.get("python_function", {}).get("env", {})
    model.flavors.pop("python_function", None)
    add_to_model(
        model,
        loader_module=__name__,
        data=SPEC_DIR,
        conda_env=environments.get("conda", "conda.yaml"),
        python_env=environments.get("virtualenv", "python_env.yaml"),
    )
    model.signature = spec.signature()
    model.save(str(folder / "MLmodel"))


class ServedModel:
    """A logged model as a pyfunc: ``predict(DataFrame)`` of raw columns -> ``prediction`` (and ``probabilities``)."""

    def __init__(self, module: torch.nn.Module, spec: ScoringSpec):
        self.module = module.eval()
        self.spec = spec
        self._layouts: dict[pa.Schema, TensorLayout] = {}

    @classmethod
    def load(cls, folder: str | Path) -> ServedModel:
        """The model saved in ``folder`` (an MLflow model directory) with its scoring spec.

        Raises:
            PredictionError: the model was saved without a scoring spec (by an older icetrain) or with a damaged one.
        """
        spec = ScoringSpec.read(folder)
        return cls(mlflow.pytorch.load_model(str(folder)), spec)

    def predict(self, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """Score rows given by column name (extra columns are ignored; order does not matter).

        Raises:
            PredictionError: a column the model reads is missing or does not convert to its type.
        """
        rows = self.rows(model_input)
        if rows.num_rows == 0:
            return pd.DataFrame({name: [] for name in self.output_names})
        layout = self.layout(rows.schema)
        try:
            features = features_to_tensor(rows, layout)
        except IcetrainError as exc:
            raise PredictionError(str(exc)) from exc
        with torch.inference_mode():
            outputs = self.module(*model_inputs(features, layout)).float()
        columns = self.spec.outputs(outputs)
        return pd.DataFrame({name: array.to_pylist() for name, array in columns.items()})

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("prediction", "probabilities") if self.spec.task == "classification" else ("prediction",)

    def rows(self, frame: pd.DataFrame) -> pa.RecordBatch:
        """The DataFrame's columns as the table's types, by name, then the SQL transform (if the run had one).

        Raises:
            PredictionError: a column is missing (the label alone may be), or does not convert.
        """
        schema = self.spec.columns.as_arrow()
        label = self.spec.data.label
        missing = [f.name for f in schema if f.name not in frame.columns and f.name != label]
        if missing:
            raise PredictionError(
                f"the rows lack column(s) {', '.join(missing)}, which the model reads; it takes {', '.join(schema.names)}"
            )
        arrays = []
        for field in schema:
            if field.name not in frame.columns:
                arrays.append(pa.nulls(len(frame), field.type))
                continue
            values = frame[field.name]
            if is_time(field.type) and not pd.api.types.is_datetime64_any_dtype(values):
                values = pd.to_datetime(values, utc=True, errors="coerce")
            try:
                arrays.append(pa.array(values, from_pandas=True).cast(field.type))
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise PredictionError(
                    f"column {field.name!r} does not convert to the table's type {field.type}: {str(exc).splitlines()[0]}"
                ) from exc
        batch = pa.RecordBatch.from_arrays(arrays, schema=pa.schema([f.with_nullable(True) for f in schema]))
        if not self.spec.data.sql:
            return batch
        out = transform_batch(sandboxed_connection(), batch, self.spec.data.sql)
        return out if isinstance(out, pa.RecordBatch) else single_batch(out)

    def layout(self, rows: pa.Schema) -> TensorLayout:
        if rows not in self._layouts:
            self._layouts[rows] = self.spec.layout(rows)
        return self._layouts[rows]


def _load_pyfunc(path: str) -> ServedModel:
    """MLflow's entry point for the python_function flavor: ``path`` is the model's ``icetrain`` folder."""
    return ServedModel.load(Path(path).parent)


__all__ = [
    "ScoringSpec",
    "ServedModel",
    "ValidationScores",
    "save_served",
    "scoring_spec",
    "validation_scores",
    "with_validation",
]
