"""Where icetrain keeps its data, catalog and runs: settings from the environment.

These say *where* (the project data directory, which catalog, which MLflow store); *what* to
train and how is the pipeline configuration in ``pipeline.config.tree``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import ConfigError, InvalidNameError
from pipeline.names import check_tracking_name

HOME_ENV = "ICETRAIN_HOME"
CATALOG_ENV = "ICETRAIN_CATALOG"
EXPERIMENT_ENV = "ICETRAIN_EXPERIMENT"
MLFLOW_URI_ENV = "MLFLOW_TRACKING_URI"

DEFAULT_HOME = ".icetrain"
MLFLOW_UI_ENV = "ICETRAIN_MLFLOW_UI"
DAGSTER_UI_ENV = "ICETRAIN_DAGSTER_UI"
DEFAULT_CATALOG = "icetrain"
# Where `icetrain ui` (and `make ui`) serve the two UIs by default; links recorded on runs and
# materializations point there unless ICETRAIN_MLFLOW_UI / ICETRAIN_DAGSTER_UI say otherwise.
DEFAULT_MLFLOW_UI = "http://127.0.0.1:5000"
DEFAULT_DAGSTER_UI = "http://127.0.0.1:3000"
DEFAULT_EXPERIMENT = "icetrain"
PROFILE_ENV = "ICETRAIN_PROFILE"
PROFILES = ("local", "services")
SERVICES_FILE = "services.json"


def services_dir(home: Path) -> Path:
    """Where ``icetrain services`` keeps PostgreSQL, MLflow's artifacts, Dagster's home and ``services.json``."""
    return home / "services"


@dataclass(frozen=True)
class Settings:
    """Where data, catalog and runs live.

    With nothing configured, everything sits under one project data directory: an embedded
    SQLite Iceberg catalog, a local warehouse folder and an MLflow SQLite store.

    Attributes:
        home: the project data directory (absolute).
        catalog_name: a catalog defined in pyiceberg's own configuration (``.pyiceberg.yaml``
            or ``PYICEBERG_CATALOG__<NAME>__...``); if none is defined under this name, the
            embedded SQLite catalog under ``home`` is used.
        mlflow_tracking_uri: an explicit MLflow tracking URI, or None for the SQLite store
            under ``home``.
        experiment: the MLflow experiment that training runs go to.
        mlflow_ui, dagster_ui: where people open the MLflow and Dagster UIs
            (``ICETRAIN_MLFLOW_UI``, ``ICETRAIN_DAGSTER_UI``; ``icetrain ui`` sets both), so runs
            and materializations can link to each other; None when unknown.
    """

    home: Path
    catalog_name: str = DEFAULT_CATALOG
    mlflow_tracking_uri: str | None = None
    experiment: str = DEFAULT_EXPERIMENT
    mlflow_ui: str | None = None
    dagster_ui: str | None = None
    profile: str = "local"
    catalog_uri: str | None = None

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        home: str | Path | None = None,
        catalog_name: str | None = None,
        mlflow_tracking_uri: str | None = None,
        experiment: str | None = None,
    ) -> Settings:
        """Build settings from explicit values, falling back to the environment, then defaults."""
        env = os.environ if environ is None else environ
        chosen_home = Path(home or env.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()
        profile = env.get(PROFILE_ENV) or "local"
        if profile not in PROFILES:
            raise ConfigError(f"{PROFILE_ENV}={profile!r}: must be one of {', '.join(PROFILES)}")
        services = _running_services(chosen_home) if profile == "services" else {}
        if not experiment and env.get(EXPERIMENT_ENV):
            try:
                check_tracking_name(env[EXPERIMENT_ENV], "experiment")
            except InvalidNameError as exc:
                raise ConfigError(f"{EXPERIMENT_ENV}: {exc}") from None
        return cls(
            home=chosen_home,
            catalog_name=catalog_name or env.get(CATALOG_ENV) or DEFAULT_CATALOG,
            mlflow_tracking_uri=mlflow_tracking_uri or env.get(MLFLOW_URI_ENV) or services.get("mlflow") or None,
            experiment=experiment or env.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT,
            mlflow_ui=env.get(MLFLOW_UI_ENV) or services.get("mlflow") or None,
            dagster_ui=env.get(DAGSTER_UI_ENV) or None,
            profile=profile,
            catalog_uri=services.get("catalog"),
        )

    @property
    def dagster_home(self) -> Path | None:
        """The profile's Dagster instance (services: PostgreSQL storage); None for the local profile."""
        return services_dir(self.home) / "dagster_home" if self.profile == "services" else None

    @property
    def warehouse(self) -> Path:
        """The embedded catalog's warehouse folder."""
        return self.home / "warehouse"

    @property
    def catalog_db(self) -> Path:
        """The embedded catalog's SQLite file."""
        return self.home / "catalog.db"

    @property
    def tracking_uri(self) -> str:
        """The MLflow tracking URI in force."""
        return self.mlflow_tracking_uri or f"sqlite:///{self.home / 'mlflow.db'}"

    @property
    def mlflow_ui_address(self) -> str:
        """Where the MLflow UI is opened: ICETRAIN_MLFLOW_UI, the tracking server, else `icetrain ui`'s default."""
        if self.mlflow_ui:
            return self.mlflow_ui
        if self.tracking_uri.startswith(("http://", "https://")):
            from pipeline.config.secrets import redact

            return redact(self.tracking_uri)
        return DEFAULT_MLFLOW_UI

    @property
    def dagster_ui_address(self) -> str:
        """Where the Dagster UI is opened: ICETRAIN_DAGSTER_UI, else `icetrain ui`'s default."""
        return self.dagster_ui or DEFAULT_DAGSTER_UI

    @property
    def artifact_root(self) -> Path | None:
        """Where the embedded MLflow store keeps artifacts; None when a tracking URI is given."""
        return None if self.mlflow_tracking_uri else self.home / "mlartifacts"


def _running_services(home: Path) -> dict[str, str]:
    """The catalog and MLflow addresses ``icetrain services start`` recorded under ``home``.

    Raises:
        ConfigError: the services are not running (no ``services.json``).
    """
    record = services_dir(home) / SERVICES_FILE
    try:
        ports = json.loads(record.read_text())
    except (OSError, ValueError):
        raise ConfigError(
            f"{PROFILE_ENV}=services but no services run for {home} ({record} is missing); start them with `make services`"
        ) from None
    return {
        "catalog": f"postgresql+psycopg2://icetrain@127.0.0.1:{ports['postgres_port']}/iceberg",
        "mlflow": f"http://127.0.0.1:{ports['mlflow_port']}",
    }


__all__ = ["Settings"]
