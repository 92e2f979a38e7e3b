"""Loading the Iceberg catalog and its tables.

The embedded default is a PyIceberg ``SqlCatalog`` on SQLite with a local warehouse, both
under the project data directory. Any catalog PyIceberg supports (a PostgreSQL-backed SQL
catalog, REST, Glue, an S3 warehouse) is chosen with PyIceberg's own configuration under the
catalog name in ``Settings.catalog_name``; no code changes.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping

from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Snapshot
from pyiceberg.utils.config import Config
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from pipeline.config.settings import Settings
from pipeline.errors import CatalogError, TableNotFoundError
from pipeline.names import check_table_name


def external_catalog_config(settings: Settings) -> dict[str, str] | None:
    """PyIceberg's configuration for ``settings.catalog_name``, read now (not at PyIceberg's import)."""
    return Config().get_catalog_config(settings.catalog_name)


def open_catalog(settings: Settings) -> Catalog:
    """Open the catalog the settings name, creating the embedded one on first use.

    Raises:
        CatalogError: the configured catalog cannot be loaded.
    """
    configured = external_catalog_config(settings)
    if configured is not None:
        try:
            return connect_catalog(settings.catalog_name, configured)
        except Exception as exc:  # PyIceberg raises many types for bad config; all mean "cannot load"
            raise CatalogError(
                f"cannot load Iceberg catalog {settings.catalog_name!r} from PyIceberg configuration: {exc}"
            ) from exc
    settings.warehouse.mkdir(parents=True, exist_ok=True)
    properties = {
        "type": "sql",
        "uri": settings.catalog_uri or f"sqlite:///{settings.catalog_db}",
        "warehouse": settings.warehouse.as_uri(),
    }
    try:
        return connect_catalog(settings.catalog_name, properties)
    except Exception as exc:  # SQLAlchemy raises many types for an unreachable database
        raise CatalogError(f"cannot open the Iceberg SQL catalog {settings.catalog_name!r}: {exc}") from exc


def connect_catalog(name: str, properties: Mapping[str, str], attempts: int = 6) -> Catalog:
    """``load_catalog``, retried when processes race to initialize a new SQL catalog's tables.

    A SQL catalog creates its tables on first use; several processes opening a fresh one at
    once can collide in the database (a duplicate-key or "already exists" error) although the
    catalog is fine a moment later.
    """
    for attempt in range(attempts):
        try:
            return load_catalog(name, **properties)
        except (IntegrityError, OperationalError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * 2**attempt * random.uniform(0.5, 1.5))
    raise AssertionError("unreachable")  # pragma: no cover


def split_identifier(identifier: str) -> tuple[str, str]:
    """Split 'namespace.table' into its namespace and table name, refusing names that could hurt (``pipeline.names``)."""
    return check_table_name(identifier)


def load_table(catalog: Catalog, identifier: str) -> Table:
    """Load a table, or say which tables exist in its namespace.

    Raises:
        TableNotFoundError: no such table (or namespace).
    """
    namespace, _ = split_identifier(identifier)
    try:
        return catalog.load_table(identifier)
    except (NoSuchTableError, NoSuchNamespaceError) as exc:
        existing = list_tables(catalog, namespace)
        listing = ", ".join(existing) if existing else "none"
        raise TableNotFoundError(
            f"table {identifier!r} not found in catalog {catalog.name!r}; tables in namespace {namespace!r}: {listing}"
        ) from exc


def current_snapshot(catalog: Catalog, identifier: str) -> Snapshot | None:
    """The table's current snapshot; None when the table does not exist yet or has none (what a sensor waits on)."""
    return catalog.load_table(identifier).current_snapshot() if catalog.table_exists(identifier) else None


def list_tables(catalog: Catalog, namespace: str) -> list[str]:
    """Tables in a namespace as 'namespace.table' strings; empty if the namespace is missing."""
    try:
        return sorted(".".join(ident) for ident in catalog.list_tables(namespace))
    except NoSuchNamespaceError:
        return []
