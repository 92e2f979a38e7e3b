"""The embedded default catalog, and choosing another catalog through PyIceberg's configuration."""

from pathlib import Path

import pytest
from pyiceberg.catalog.sql import SqlCatalog

from pipeline.config.settings import Settings
from pipeline.errors import CatalogError, TableNotFoundError
from pipeline.lake.catalog import load_table, open_catalog
from tests.conftest import write_appends


def test_default_is_an_embedded_sqlite_catalog_under_icetrain_home(settings: Settings, tmp_path: Path) -> None:
    catalog = open_catalog(settings)
    write_appends(catalog, "demo.rows", [5])

    assert isinstance(catalog, SqlCatalog)
    assert settings.home == tmp_path / "home"
    assert settings.catalog_db.is_file()
    assert list(settings.warehouse.rglob("*.parquet"))
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"


def test_pyiceberg_configuration_selects_another_catalog(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake = tmp_path / "lake"
    lake.mkdir()
    monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__TYPE", "sql")
    monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__URI", f"sqlite:///{lake / 'catalog.db'}")
    monkeypatch.setenv("PYICEBERG_CATALOG__LAKE__WAREHOUSE", (lake / "warehouse").as_uri())
    monkeypatch.setenv("ICETRAIN_CATALOG", "lake")

    lake_settings = Settings.from_env()
    write_appends(open_catalog(lake_settings), "demo.rows", [5])

    assert (lake / "catalog.db").is_file()
    assert list((lake / "warehouse").rglob("*.parquet"))
    assert not settings.catalog_db.exists()
    assert load_table(open_catalog(lake_settings), "demo.rows").current_snapshot() is not None


def test_a_broken_catalog_configuration_is_a_catalog_error(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYICEBERG_CATALOG__BROKEN__TYPE", "no-such-catalog-type")
    with pytest.raises(CatalogError, match="broken"):
        open_catalog(Settings.from_env(catalog_name="broken"))


def test_unknown_table_names_the_tables_that_exist(catalog) -> None:
    write_appends(catalog, "demo.rows", [5])
    with pytest.raises(TableNotFoundError, match="demo.rows"):
        load_table(catalog, "demo.missing")
