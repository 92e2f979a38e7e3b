"""icetrain's exception types.

Every error a user can cause is one of these, with a one-line message that says what was
asked and what exists, so the CLI can print it without a traceback.
"""


class IcetrainError(Exception):
    """Base class for errors a user can act on."""


class ConfigError(IcetrainError):
    """The settings or a request are contradictory or malformed."""


class CatalogError(IcetrainError):
    """The Iceberg catalog cannot be loaded or reached."""


class TableNotFoundError(IcetrainError):
    """The named table does not exist in the catalog."""


class SnapshotNotFoundError(IcetrainError):
    """The requested snapshot id, tag, branch or point in time does not exist."""


class EmptyDataError(IcetrainError):
    """The pinned snapshot (after filter and transform) has no rows to train on."""


class FilterError(IcetrainError):
    """A row filter does not parse or names a column the snapshot does not have."""


class ColumnError(IcetrainError):
    """A requested column is missing or has a type icetrain cannot turn into tensors."""


class LabelError(IcetrainError):
    """The label column is missing or holds nulls."""


class TransformError(IcetrainError):
    """The SQL transform failed or tried something the sandbox forbids."""


class IngestError(IcetrainError):
    """Data could not be appended; nothing was committed."""


class ResumeError(IcetrainError):
    """A saved loader state does not fit the loader it is restored into."""


class RunNotFoundError(IcetrainError):
    """An MLflow run to replay does not exist or carries no icetrain lineage."""


class ModelError(IcetrainError):
    """The model factory cannot be imported, rejects its arguments, or returns no module."""


class CheckpointError(IcetrainError):
    """A run cannot be resumed: no checkpoint, an unreadable one, or a run that already finished."""


class RegistryError(IcetrainError):
    """A model cannot be registered or unregistered (name taken by another table, no model, tag exists)."""


class InvalidNameError(IcetrainError):
    """A table, namespace, tag or branch name that could hurt the catalog or the warehouse."""


class TrackingError(IcetrainError):
    """The MLflow tracking store or server cannot be reached."""


class DataFileError(IcetrainError):
    """A file a snapshot lists is missing or damaged."""


class DivergedError(IcetrainError):
    """Training produced a loss that is not a finite number (NaN or infinite)."""


class NullFeatureError(ColumnError):
    """A feature column holds nulls; ``column`` names it (the loader then counts them over the selection)."""

    def __init__(self, message: str, column: str = ""):
        super().__init__(message)
        self.column = column

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (str(self), self.column))


class GateError(IcetrainError):
    """A quality gate (schema contract, feature completeness, drift) refused the pinned data."""


class EncodingError(IcetrainError):
    """A run's recorded encoding (the categorical columns' vocabularies) is missing or damaged."""


class PredictionError(IcetrainError):
    """Predictions cannot be written: the predictions table belongs to another model or schema, or the model cannot score the rows."""
