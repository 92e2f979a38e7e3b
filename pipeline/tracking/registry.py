"""Registered models pin their data: each model version holds an Iceberg tag on its training snapshot.

``register`` makes an MLflow model version of a run's model and tags the run's snapshot
``icetrain/<name>/v<version>``, so snapshot expiry (``expire``, which never expires a tagged
snapshot, ``pipeline.lake.expiry``) keeps the data every registered model was trained on, and the model can always be
reproduced. ``unregister`` deletes the version and drops its tag. Either succeeds whole or
leaves nothing behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.config.settings import Settings
from pipeline.errors import RegistryError, SnapshotNotFoundError
from pipeline.lake.catalog import load_table, open_catalog
from pipeline.names import check_alias_name, check_ref_name, check_tracking_name
from pipeline.tracking.client import tracking_client
from pipeline.tracking.lineage import SNAPSHOT_ID_TAG, TABLE_TAG, get_run, is_absence, tracking_error
from pipeline.tracking.reference import CHAMPION_ALIAS, champion_version

TAG_PREFIX = "icetrain/"
MODEL_TABLE_TAG = "icetrain.table"


@dataclass(frozen=True)
class Registered:
    """A model version and the Iceberg tag that keeps its training snapshot."""

    name: str
    version: str
    table: str
    snapshot_id: int
    iceberg_tag: str
    already: bool = False


def iceberg_tag_name(model: str, version: str) -> str:
    return f"{TAG_PREFIX}{model}/v{version}"


def register(settings: Settings, run_id: str, name: str) -> Registered:
    """Register ``run_id``'s model as a new version of ``name`` and tag its training snapshot.

    Raises:
        RunNotFoundError: no such run, or not icetrain's.
        SnapshotNotFoundError: the run's snapshot was expired; its data can no longer be kept.
        RegistryError: ``name`` already holds models of another table, the run has no model,
            or the tag exists; nothing is registered or tagged then.
        InvalidNameError: ``name`` is not a valid registered-model name.

    Registering a run that is already a version of ``name`` answers with that version
    (``already=True``) and changes nothing.
    """
    check_tracking_name(name, "registered model")
    run = get_run(settings, run_id)
    table_name, snapshot_id = run.data.tags[TABLE_TAG], int(run.data.tags[SNAPSHOT_ID_TAG])
    client = tracking_client(settings)
    existing = [
        v
        for v in client.search_model_versions(f"name = '{name}' and run_id = '{run.info.run_id}'")
        if v.run_id == run.info.run_id
    ]
    if existing:
        first = min(existing, key=lambda v: int(v.version))
        return Registered(
            name, str(first.version), table_name, snapshot_id, first.tags.get("icetrain.iceberg_tag", ""), already=True
        )
    table = load_table(open_catalog(settings), table_name)
    if table.snapshot_by_id(snapshot_id) is None:
        raise SnapshotNotFoundError(
            f"run {run_id} trained on snapshot {snapshot_id} of {table_name!r}, which no longer exists (expired); it cannot be registered with its data"
        )
    if not any(entry.path == "model" for entry in client.list_artifacts(run_id)):
        raise RegistryError(f"run {run_id} has no logged model (it did not finish?)")
    created_model = _ensure_registered_model(client, name, table_name)
    source = f"{run.info.artifact_uri}/model"
    version = str(
        client.create_model_version(
            name, source, run_id=run_id, tags={MODEL_TABLE_TAG: table_name, "icetrain.snapshot_id": str(snapshot_id)}
        ).version
    )
    tag = iceberg_tag_name(name, version)
    try:
        check_ref_name(tag)
        if tag in table.metadata.refs:
            raise RegistryError(f"table {table_name!r} already has a tag {tag!r}; remove it or pick another model name")
        table.manage_snapshots().create_tag(snapshot_id, tag).commit()
    except BaseException:
        client.delete_model_version(name, version)
        if created_model:
            client.delete_registered_model(name)
        raise
    client.set_model_version_tag(name, version, "icetrain.iceberg_tag", tag)
    return Registered(name, version, table_name, snapshot_id, tag)


def unregister(settings: Settings, name: str, version: str) -> Registered:
    """Delete a model version and drop the Iceberg tag that kept its snapshot.

    Raises:
        RegistryError: no such model version.
    """
    check_tracking_name(name, "registered model")
    client = tracking_client(settings)
    try:
        found = client.get_model_version(name, version)
    except MlflowException as exc:
        if not is_absence(exc):
            raise tracking_error(f"look up version {version!r} of registered model {name!r}", exc) from exc
        raise RegistryError(f"no version {version!r} of registered model {name!r}") from exc
    table_name, tag = found.tags.get(MODEL_TABLE_TAG), found.tags.get("icetrain.iceberg_tag")
    snapshot_id = int(found.tags.get("icetrain.snapshot_id", "0"))
    if table_name and tag:
        table = load_table(open_catalog(settings), table_name)
        if tag in table.metadata.refs:
            table.manage_snapshots().remove_tag(tag).commit()
    client.delete_model_version(name, version)
    return Registered(name, str(version), table_name or "", snapshot_id, tag or "")


@dataclass(frozen=True)
class Promoted:
    """Which version of a registered model an alias now points at, and which it pointed at before."""

    name: str
    version: str
    alias: str
    previous: str | None
    already: bool = False


def promote(settings: Settings, name: str, version: str, alias: str = CHAMPION_ALIAS) -> Promoted:
    """Point ``alias`` (the champion, by default) of registered model ``name`` at ``version``, as Dagster's champion/challenger does.

    Moving the champion also rewrites the versions' ``icetrain.eval.role`` and ``.decision``
    tags, so they say what is true now.

    Raises:
        InvalidNameError: a bad model or alias name. RegistryError: no such version.
        TrackingError: MLflow could not be asked.
    """
    check_tracking_name(name, "registered model")
    check_alias_name(alias)
    client = tracking_client(settings)
    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        if not is_absence(exc):
            raise tracking_error(f"look up version {version!r} of registered model {name!r}", exc) from exc
        raise RegistryError(f"no version {version!r} of registered model {name!r}") from exc
    current = champion_version(client, name, alias)
    previous = str(current.version) if current is not None else None
    if previous == str(version):
        return Promoted(name, str(version), alias, previous, already=True)
    try:
        client.set_registered_model_alias(name, alias, str(version))
        if alias == CHAMPION_ALIAS:
            when = datetime.now(tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
            replacing = f", replacing version {previous}" if previous else ""
            client.set_model_version_tag(name, str(version), "icetrain.eval.role", "champion")
            client.set_model_version_tag(
                name,
                str(version),
                "icetrain.eval.decision",
                f"champion by hand (icetrain promote) since {when}{replacing}",
            )
            if previous:
                client.set_model_version_tag(name, previous, "icetrain.eval.role", "former champion")
                client.set_model_version_tag(
                    name,
                    previous,
                    "icetrain.eval.decision",
                    f"replaced by version {version} by hand (icetrain promote) at {when}",
                )
    except MlflowException as exc:
        raise tracking_error(f"move alias {alias!r} of registered model {name!r} to version {version}", exc) from exc
    return Promoted(name, str(version), alias, previous)


def check_registrable(client: MlflowClient, name: str, table_name: str) -> None:
    """Refuse, before a run starts, a model name that holds another table's models.

    Raises:
        RegistryError: the name is taken by another table.
    """
    _refuse_other_table(client, name, table_name)


def _refuse_other_table(client: MlflowClient, name: str, table_name: str) -> bool:
    """Whether the registered model exists; raises RegistryError when it holds another table's models."""
    try:
        existing = client.get_registered_model(name)
    except MlflowException as exc:
        if is_absence(exc):
            return False
        raise tracking_error(f"look up registered model {name!r}", exc) from exc
    other = existing.tags.get(MODEL_TABLE_TAG)
    if other and other != table_name:
        raise RegistryError(
            f"registered model {name!r} holds models of table {other!r}, not {table_name!r}; pick another name"
        )
    return True


def _ensure_registered_model(client: MlflowClient, name: str, table_name: str) -> bool:
    """Create the registered model if missing (returns True then); refuse one that holds another table's models."""
    if _refuse_other_table(client, name, table_name):
        return False
    client.create_registered_model(name, tags={MODEL_TABLE_TAG: table_name})
    return True


__all__ = ["Promoted", "Registered", "check_registrable", "iceberg_tag_name", "promote", "register", "unregister"]
