"""Turning Arrow record batches into torch tensors, column by column in bulk.

How columns become tensors is declared on the table (image shapes, label classes) and read
back into a ``TensorLayout``; conversion never loops over rows in Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from functools import cached_property
from math import prod

import numpy as np
import pyarrow as pa
import torch

from pipeline.data.encoding import TIME_PARTS, Encoding, days, is_categorical_type, is_text, is_time, time_part
from pipeline.data.specs import ReadSpec
from pipeline.errors import ColumnError, LabelError, NullFeatureError

IMAGE_SHAPE_KEY = "icetrain.image.{column}.shape"
IMAGE_MAX_KEY = "icetrain.image.{column}.max"
LABEL_CLASSES_KEY = "icetrain.label.classes"


def image_properties(column: str, *, shape: tuple[int, ...], max_value: float = 255) -> dict[str, str]:
    """Table properties declaring ``column`` an image of ``shape`` (e.g. (1, 8, 8)) of raw bytes."""
    return {
        IMAGE_SHAPE_KEY.format(column=column): ",".join(str(d) for d in shape),
        IMAGE_MAX_KEY.format(column=column): str(max_value),
    }


def label_classes_property(classes: Iterable[object]) -> dict[str, str]:
    """A table property listing every class the label may take (checked before training)."""
    return {LABEL_CLASSES_KEY: ",".join(str(c) for c in classes)}


def declared_classes(properties: Mapping[str, str]) -> tuple[str, ...] | None:
    """The classes a table declares for its label, as strings, or None."""
    value = properties.get(LABEL_CLASSES_KEY)
    return tuple(value.split(",")) if value else None


@dataclass(frozen=True)
class TensorLayout:
    """Which columns become the feature tensor and the label, and in what shape.

    Attributes:
        label: the label column.
        features: the feature columns, as named.
        image_shape: per-row shape when the single feature is an image column, e.g. (1, 8, 8).
        image_scale: image values are divided by this (the declared maximum) to land in [0, 1].
        categorical: the features that are categories (text, or named in ``data.categorical``).
        imputed: the numeric features whose nulls are filled (``data.impute``), with strategies.
        times: the date and timestamp features (days since the training rows' earliest, in the
            numeric columns) and their calendar parts (``data.time_parts``), extra columns.
        indicator: whether each imputed column gets a ``<column>_missing`` feature.
        encoding: the vocabularies and fill values, once learned (``pipeline.data.vocabulary``).

    Inside the loader one float32 matrix holds the numeric columns, the missing-value
    indicators, then the categorical columns' indices (exact in float32: vocabularies hold far
    fewer than 2^24 categories); the loader hands them out as two tensors, ``(numeric,
    categories, labels)``.
    """

    label: str
    features: tuple[str, ...]
    image_shape: tuple[int, ...] | None = None
    image_scale: float = 255.0
    categorical: tuple[str, ...] = ()
    imputed: tuple[tuple[str, str], ...] = ()
    indicator: bool = False
    times: tuple[tuple[str, tuple[str, ...]], ...] = ()
    encoding: Encoding | None = None

    @property
    def needs_encoding(self) -> bool:
        """Whether some features are categories or imputed, which an ``Encoding`` learned from the rows decides."""
        return bool(self.categorical or self.imputed or self.times)

    @cached_property  # asked per batch: derived once
    def numeric(self) -> tuple[str, ...]:
        """The numeric feature columns, in the order of the numeric tensor's first columns."""
        return tuple(name for name in self.features if name not in self.categorical)

    @cached_property  # asked per batch: derived once
    def indicators(self) -> tuple[str, ...]:
        """The missing-value indicator features, after the numeric columns."""
        return tuple(f"{name}_missing" for name, _ in self.imputed) if self.indicator else ()

    @cached_property  # asked per batch: derived once
    def parts(self) -> tuple[tuple[str, str], ...]:
        """Every (time column, calendar part) pair, in the order of their tensor columns."""
        return tuple((name, part) for name, parts in self.times for part in parts)

    @cached_property  # asked per batch: derived once
    def numeric_columns(self) -> tuple[str, ...]:
        """The numeric tensor's columns: the numeric features, the indicators, then the calendar parts."""
        return (*self.numeric, *self.indicators, *(f"{name}_{part}" for name, part in self.parts))

    @cached_property  # asked per batch: derived once
    def tensor_columns(self) -> tuple[str, ...]:
        """The columns of the loader's internal matrix: the numeric tensor's, then the categorical ones."""
        return (*self.numeric_columns, *self.categorical)

    @property
    def feature_shape(self) -> tuple[int, ...]:
        """Per-row shape of the internal feature matrix: the image shape, or (its columns,)."""
        return self.image_shape if self.image_shape is not None else (len(self.tensor_columns),)

    @property
    def numeric_shape(self) -> tuple[int, ...]:
        """Per-row shape of the numeric tensor a model receives: the image shape, or (numeric columns,)."""
        return self.image_shape if self.image_shape is not None else (len(self.numeric_columns),)

    def with_encoding(self, encoding: Encoding | None) -> TensorLayout:
        """This layout with its categorical columns' vocabularies.

        Raises:
            ColumnError: the encoding does not cover exactly the categorical columns.
        """
        if encoding is None and not self.categorical and not self.imputed:
            return self
        if encoding is None or encoding.columns != self.categorical:
            held = ", ".join(encoding.columns) if encoding is not None else "none"
            raise ColumnError(
                f"the recorded encoding holds vocabularies for {held or 'none'}, but the categorical columns are {', '.join(self.categorical) or 'none'}"
            )
        if tuple(o.column for o in encoding.origins) != tuple(name for name, _ in self.times):
            raise ColumnError(
                f"the recorded encoding has origins for {', '.join(o.column for o in encoding.origins) or 'no column'},"
                f" but the time features are {', '.join(name for name, _ in self.times) or 'none'}"
            )
        imputed = tuple(name for name, _ in self.imputed)
        if encoding.filled != imputed or any(f.indicator != self.indicator for f in encoding.fills):
            raise ColumnError(
                f"the recorded encoding fills {', '.join(encoding.filled) or 'no column'}, but data.impute asks for {', '.join(imputed) or 'none'}"
                f" (indicators {'on' if self.indicator else 'off'})"
            )
        return replace(self, encoding=encoding)


def layout_for(
    schema: pa.Schema,
    properties: Mapping[str, str],
    spec: ReadSpec,
    identifier_fields: Iterable[str] = (),
    *,
    scoring: bool = False,
) -> TensorLayout:
    """Decide the tensor layout for rows of ``schema`` read with ``spec``.

    ``scoring``: the rows are scored by a trained model, so the label need not be there (its
    classes come from the model's run) and ``spec.features`` must be given.

    Raises:
        LabelError: the label column is missing.
        ColumnError: a feature column is missing, of an unsupported type, or images are mixed
            with other features.
    """
    names = schema.names
    if scoring:
        assert spec.features is not None, "a model's features are known"
    else:
        _check_label(schema, spec)
    if spec.image_shape is not None and spec.features is not None:
        images = {spec.features[0]: spec.image_shape}
    else:
        shapes = {name: _image_shape(properties, name) for name in names}
        images = {name: shape for name, shape in shapes.items() if shape is not None}
    if spec.features is not None:
        missing = [name for name in spec.features if name not in names]
        if missing:
            raise ColumnError(
                f"feature column(s) {', '.join(repr(m) for m in missing)} not found; columns: {', '.join(names)}"
            )
        features = spec.features
    elif images:
        features = tuple(images)
    else:
        skip = {spec.label, *identifier_fields}
        declared = set(spec.categorical)
        features = tuple(
            f.name
            for f in schema
            if f.name not in skip and (_is_numeric(f.type) or is_text(f.type) or is_time(f.type) or f.name in declared)
        )
        if not features:
            raise ColumnError(
                f"no numeric or text feature columns besides label {spec.label!r}; columns: {', '.join(names)}"
            )
    image_features = [name for name in features if name in images]
    if image_features:
        if len(features) != 1:
            raise ColumnError(f"image column {image_features[0]!r} must be the only feature; got {', '.join(features)}")
        name = image_features[0]
        scale = (
            spec.image_max
            if spec.image_max is not None
            else float(properties.get(IMAGE_MAX_KEY.format(column=name), 255))
        )
        return TensorLayout(label=spec.label, features=features, image_shape=images[name], image_scale=scale)
    categorical = _categorical(schema, spec, features)
    times = _times(schema, spec, features)
    return TensorLayout(
        label=spec.label,
        features=features,
        categorical=categorical,
        imputed=_imputed(spec, features, (*categorical, *(name for name, _ in times))),
        indicator=spec.impute_indicator,
        times=times,
    )


def _check_label(schema: pa.Schema, spec: ReadSpec) -> None:
    """The label is there, and of a type the task can learn.

    Raises:
        LabelError: it is missing or of the wrong type.
    """
    if spec.label not in schema.names:
        raise LabelError(f"label column {spec.label!r} not found; columns: {', '.join(schema.names)}")
    label_type = schema.field(spec.label).type
    if spec.task == "regression" and not _is_numeric(label_type):
        raise LabelError(f"regression needs a numeric label; column {spec.label!r} has type {label_type}")
    if spec.task == "classification" and pa.types.is_floating(label_type):
        raise LabelError(
            f"label column {spec.label!r} holds {label_type} numbers, not classes; set data.task=regression to predict it, or cast it to integers"
        )
    if spec.task == "classification" and not _is_class_type(label_type):
        raise LabelError(
            f"label column {spec.label!r} has type {label_type}, which cannot hold classes; use integers, booleans or text (in SQL, e.g. label::BIGINT or label::VARCHAR)"
        )


def _times(schema: pa.Schema, spec: ReadSpec, features: tuple[str, ...]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The date and timestamp features and the calendar parts asked of each.

    Raises:
        ColumnError: ``data.time_parts`` names a column that is not a time feature, or a part
            the column cannot have (an hour of a date) or that does not exist.
    """
    asked = dict(spec.time_parts)
    found = []
    for name in features:
        data_type = schema.field(name).type
        if not is_time(data_type):
            continue
        parts = tuple(asked.pop(name, ()))
        unknown = [p for p in parts if p not in TIME_PARTS]
        if unknown:
            raise ColumnError(
                f"data.time_parts: {unknown[0]!r} is not a calendar part; choose from {', '.join(TIME_PARTS)}"
            )
        if pa.types.is_date(data_type) and {"hour", "minute"} & set(parts):
            raise ColumnError(f"data.time_parts: column {name!r} is a date; it has no hour or minute")
        found.append((name, parts))
    if asked:
        name = next(iter(asked))
        what = f"has type {schema.field(name).type}" if name in schema.names else "is not a column"
        raise ColumnError(
            f"data.time_parts names {name!r}, which {what}; calendar parts are asked of date and timestamp features"
        )
    return tuple(found)


def _imputed(spec: ReadSpec, features: tuple[str, ...], not_numeric: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The numeric features whose nulls are filled, and how ('*' names every numeric feature).

    Raises:
        ColumnError: ``data.impute`` names a column that is not a numeric feature.
    """
    numeric = [name for name in features if name not in not_numeric]
    strategies: dict[str, str] = {}
    for name, strategy in spec.impute:
        if name == "*":
            strategies.update(dict.fromkeys(numeric, strategy))
        elif name in not_numeric:
            raise ColumnError(
                f"data.impute names {name!r}, a categorical or time feature; impute numeric features only"
            )
        elif name not in features:
            raise ColumnError(f"data.impute names {name!r}, which is not among the features {', '.join(features)}")
        else:
            strategies[name] = strategy
    return tuple((name, strategies[name]) for name in numeric if name in strategies)


def _categorical(schema: pa.Schema, spec: ReadSpec, features: tuple[str, ...]) -> tuple[str, ...]:
    """The features that are categories: text columns, and those ``data.categorical`` names.

    Raises:
        ColumnError: a column has a type icetrain cannot encode, or is declared categorical but
            is not a feature or cannot hold categories.
    """
    outside = [name for name in spec.categorical if name not in features]
    if outside:
        raise ColumnError(
            f"data.categorical names {', '.join(repr(n) for n in outside)}, which {'is' if len(outside) == 1 else 'are'} not among the features {', '.join(features)}"
        )
    categorical = []
    for name in features:
        data_type = schema.field(name).type
        if name in spec.categorical:
            if not is_categorical_type(data_type):
                raise ColumnError(
                    f"data.categorical: column {name!r} has type {data_type}; categories are text, booleans or integers"
                )
            categorical.append(name)
        elif is_text(data_type):
            categorical.append(name)  # text is categorical by default
        elif not _is_numeric(data_type) and not is_time(data_type):
            raise ColumnError(
                f"feature column {name!r} has type {data_type}, which icetrain cannot encode; features are numbers, dates and timestamps, or text, boolean or integer categories (data.categorical)"
            )
    return tuple(categorical)


def features_to_tensor(batch: pa.RecordBatch, layout: TensorLayout) -> torch.Tensor:
    """The batch's features as a float32 tensor of shape [B, *layout.feature_shape]: the numeric
    columns, then the categorical columns' indices (``layout.tensor_columns``).

    Raises:
        ColumnError: a numeric feature column has nulls, or image bytes do not match the declared shape.
    """
    filled = layout.encoding.filled if layout.encoding is not None else ()
    for name in layout.numeric:
        if batch.column(name).null_count and name not in filled:
            raise NullFeatureError(
                f"feature column {name!r} has {batch.column(name).null_count} null values in one row group", name
            )
    if layout.image_shape is not None:
        raw = image_bytes(batch.column(layout.features[0]), layout.features[0], layout.image_shape)
        images = raw.reshape(batch.num_rows, *layout.image_shape).astype(np.float32)
        images /= layout.image_scale
        return torch.from_numpy(images)
    # Filling rows of a [F, B] matrix is contiguous (column j is one Arrow buffer); one
    # transposing copy then gives the row-major [B, F] that models want, faster than strided writes.
    columns = np.empty((len(layout.tensor_columns), batch.num_rows), dtype=np.float32)
    origins = {o.column: o.day for o in layout.encoding.origins} if layout.encoding is not None else {}
    for j, name in enumerate(layout.numeric):
        column = batch.column(name)
        if name in origins:
            columns[j] = days(column) - origins[name]
            continue
        if column.null_count and name in filled:
            fill = layout.encoding.fill(name) if layout.encoding is not None else None
            assert fill is not None
            column = column.cast(pa.float64()).fill_null(fill.value)
        columns[j] = column.to_numpy(zero_copy_only=False)
    if layout.needs_encoding and layout.encoding is None:
        raise ColumnError("the categorical and imputed columns have no encoding yet (learn it first)")
    for j, (name, _) in enumerate(layout.imputed if layout.indicator else (), start=len(layout.numeric)):
        columns[j] = batch.column(name).is_null().to_numpy(zero_copy_only=False)
    first_part = len(layout.numeric) + len(layout.indicators)
    for j, (name, part) in enumerate(layout.parts, start=first_part):
        columns[j] = time_part(batch.column(name), part)
    if layout.encoding is not None:
        for j, vocabulary in enumerate(layout.encoding.vocabularies, start=len(layout.numeric_columns)):
            columns[j] = vocabulary.encode(batch.column(vocabulary.column))
    return torch.from_numpy(np.ascontiguousarray(columns.T))


def model_inputs(features: torch.Tensor, layout: TensorLayout) -> tuple[torch.Tensor, ...]:
    """What a model is called with: ``(features,)``, or ``(numeric, categories)`` when some features are categories."""
    if not layout.categorical:
        return (features,)
    numeric = len(layout.numeric_columns)
    return features[:, :numeric].contiguous(), features[:, numeric:].to(torch.int64)


def label_values(batch: pa.RecordBatch, layout: TensorLayout) -> np.ndarray:
    """The batch's raw label values as a NumPy array.

    Raises:
        LabelError: the label column has nulls.
    """
    column = batch.column(layout.label)
    if column.null_count:
        raise LabelError(f"label column {layout.label!r} has {column.null_count} null values")
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    return column.to_numpy(zero_copy_only=False)


@dataclass(frozen=True)
class LabelVocabulary:
    """The fixed mapping from label values to class indices 0..K-1 for one pinned dataset."""

    classes: tuple[object, ...]

    @classmethod
    def from_values(cls, values: np.ndarray, declared: tuple[str, ...] | None = None) -> LabelVocabulary:
        """The declared classes (cast to the label's type) if the table declares them, else the sorted distinct values."""
        if declared is not None:
            typed = np.array(declared).astype(values.dtype) if values.dtype.kind in "iuf" else np.array(declared)
            return cls(tuple(np.sort(typed).tolist()))
        return cls(tuple(np.unique(values).tolist()))

    @property
    def _are_indices(self) -> bool:
        """Classes 0..K-1: integer labels are their own class indices."""
        return self.classes == tuple(range(len(self.classes)))

    def encode(self, values: np.ndarray) -> torch.Tensor:
        """Class indices (int64) for label values.

        Raises:
            LabelError: a value is not one of the classes.
        """
        if self._are_indices and values.dtype.kind in "iu":
            if len(values) and (values.min() < 0 or values.max() >= len(self.classes)):
                bad = _plain(values[(values < 0) | (values >= len(self.classes))][0])
                raise LabelError(f"label value {bad!r} is not one of the classes 0..{len(self.classes) - 1}")
            return torch.from_numpy(values.astype(np.int64, copy=True))
        classes = np.array(self.classes)
        index = np.searchsorted(classes, values)
        index = np.clip(index, 0, len(classes) - 1)
        unknown = classes[index] != values
        if unknown.any():
            raise LabelError(
                f"label value {_plain(values[unknown][0])!r} is not one of the classes {list(self.classes)}"
            )
        return torch.from_numpy(index.astype(np.int64))


@dataclass(frozen=True)
class NumericTarget:
    """Regression: label values become a float32 target, no classes."""

    classes: tuple[object, ...] = ()

    def encode(self, values: np.ndarray) -> torch.Tensor:
        """The values as float32.

        Raises:
            LabelError: a value is NaN or infinite.
        """
        target = np.asarray(values, dtype=np.float32)
        if not np.isfinite(target).all():
            raise LabelError(f"label value {_plain(target[~np.isfinite(target)][0])!r} is not a finite number")
        return torch.from_numpy(target)


def _plain(value: object) -> object:
    """A NumPy scalar as the Python value it holds, so messages read ``5``, not ``np.int64(5)``."""
    return value.item() if isinstance(value, np.generic) else value


def _image_shape(properties: Mapping[str, str], column: str) -> tuple[int, ...] | None:
    value = properties.get(IMAGE_SHAPE_KEY.format(column=column))
    return tuple(int(d) for d in value.split(",")) if value else None


def _is_class_type(data_type: pa.DataType) -> bool:
    if pa.types.is_dictionary(data_type):
        data_type = data_type.value_type
    return (
        pa.types.is_integer(data_type)
        or pa.types.is_boolean(data_type)
        or pa.types.is_string(data_type)
        or pa.types.is_large_string(data_type)
    )


def _is_numeric(data_type: pa.DataType) -> bool:
    return pa.types.is_integer(data_type) or pa.types.is_floating(data_type) or pa.types.is_boolean(data_type)


def image_bytes(column: pa.Array, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The column's pixel bytes as one flat uint8 array, without touching rows one by one."""
    per_row = prod(shape)
    count = len(column)
    data_type = column.type
    if pa.types.is_fixed_size_binary(data_type):
        if data_type.byte_width != per_row:
            raise ColumnError(
                f"image column {name!r} has {data_type.byte_width} bytes per row, shape {shape} needs {per_row}"
            )
        start = column.offset * per_row
        return np.frombuffer(column.buffers()[1], dtype=np.uint8)[start : start + count * per_row]
    if pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type):
        offset_type = np.int64 if pa.types.is_large_binary(data_type) else np.int32
        offsets = np.frombuffer(column.buffers()[1], dtype=offset_type)[column.offset : column.offset + count + 1]
        if not np.all(np.diff(offsets) == per_row):
            raise ColumnError(f"image column {name!r} has rows whose length is not {per_row} bytes (shape {shape})")
        return np.frombuffer(column.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type) or pa.types.is_fixed_size_list(data_type):
        values = column.flatten().to_numpy(zero_copy_only=False)
        if values.size != count * per_row:
            raise ColumnError(f"image column {name!r} does not hold {per_row} values per row (shape {shape})")
        return values
    raise ColumnError(f"image column {name!r} has type {data_type}; expected fixed-size binary, binary or a list")
