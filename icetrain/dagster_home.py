"""Finding (or making) the DAGSTER_HOME the CLI runs against, so runs show up in the UI."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.config.settings import Settings

DAGSTER_YAML = """\
# DAGSTER_HOME made by icetrain: SQLite run, event-log and schedule storage under this folder.
telemetry:
  enabled: false
"""


def resolve_dagster_home(settings: Settings) -> Path:
    """The profile's instance (``ICETRAIN_PROFILE=services``); else ``$DAGSTER_HOME`` if set; else ``./dagster_home`` if it has a dagster.yaml; else one under ICETRAIN_HOME.

    The chosen folder is exported as ``DAGSTER_HOME`` (absolute, as Dagster requires) and
    gets a ``dagster.yaml`` and a dismissed first-run dialog if it has none.
    """
    configured = os.environ.get("DAGSTER_HOME")
    if settings.dagster_home is not None:  # the services profile's instance (PostgreSQL storage) wins
        home = settings.dagster_home
    elif configured:
        home = Path(configured).expanduser().resolve()
    elif (Path.cwd() / "dagster_home" / "dagster.yaml").is_file():
        home = (Path.cwd() / "dagster_home").resolve()
    else:
        home = settings.home / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "dagster.yaml").exists():
        (home / "dagster.yaml").write_text(DAGSTER_YAML)
    nux = home / ".nux" / "nux.yaml"
    if not nux.exists():
        nux.parent.mkdir(parents=True, exist_ok=True)
        nux.write_text("seen: 1\n")
    os.environ["DAGSTER_HOME"] = str(home)
    return home
