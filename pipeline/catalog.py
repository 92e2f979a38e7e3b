"""Loading the Iceberg catalog and its tables.

The embedded default is a PyIceberg ``SqlCatalog`` on SQLite with a local warehouse, both
under the project data directory. Any catalog PyIceberg supports (a PostgreSQL-backed SQL
catalog, REST, Glue, an S3 warehouse) is chosen with PyIceberg's own configuration under the
catalog name in ``Settings.catalog_name``; no code changes.
"""

from __future__ import annotations

from pyiceberg.catalog import Catalog, load_catalog
from pyiceberg.catalog.sql import SqlCatalog
from pyiceberg.exceptions import NoSuchNamespaceError, NoSuchTableError
from pyiceberg.table import Table
from pyiceberg.utils.config import Config

from pipeline.settings import Settings
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
            return load_catalog(settings.catalog_name, **configured)
        except Exception as exc:  # PyIceberg raises many types for bad config; all mean "cannot load"
            raise CatalogError(f"cannot load Iceberg catalog {settings.catalog_name!r} from PyIceberg configuration: {exc}") from exc
    settings.warehouse.mkdir(parents=True, exist_ok=True)
    return SqlCatalog(
        settings.catalog_name,
        uri=f"sqlite:///{settings.catalog_db}",
        warehouse=settings.warehouse.as_uri(),
    )


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


def list_tables(catalog: Catalog, namespace: str) -> list[str]:
    """Tables in a namespace as 'namespace.table' strings; empty if the namespace is missing."""
    try:
        return sorted(".".join(ident) for ident in catalog.list_tables(namespace))
    except NoSuchNamespaceError:
        return []
