"""The services profile: PostgreSQL and an MLflow server on 127.0.0.1, as a team would share them.

``icetrain services start`` (``make services``) starts, with data under
``$ICETRAIN_HOME/services/``:

- a PostgreSQL cluster (Debian's ``initdb``/``pg_ctl``, a free port) with three databases:
  ``iceberg`` (the Iceberg SQL catalog), ``mlflow`` (MLflow's backend store) and ``dagster``
  (Dagster's run, event-log and schedule storage, through ``dagster-postgres``);
- ``mlflow server`` on that backend store, serving artifacts from ``services/mlflow-artifacts``;
- a ``services/dagster_home/dagster.yaml`` pointing Dagster at the ``dagster`` database.

``services.json`` records ports and process ids; ``ICETRAIN_PROFILE=services`` makes icetrain,
Dagster and MLflow use them (``pipeline.config.settings``). ``icetrain services stop`` stops both.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from icetrain.servers import Server, _tool, free_port, wait_until_up
from pipeline.config.settings import SERVICES_FILE, Settings, services_dir
from pipeline.errors import IcetrainError
from training.liveness import process_start_time

DATABASES = ("iceberg", "mlflow", "dagster")
PG_USER = "icetrain"
DAGSTER_YAML = """\
# Written by `icetrain services start`: Dagster's storage in the services' PostgreSQL.
telemetry:
  enabled: false
storage:
  postgres:
    postgres_db:
      username: {user}
      hostname: 127.0.0.1
      port: {port}
      db_name: dagster
      scheme: postgresql+psycopg2
"""


def postgres_bin() -> Path | None:
    """The folder with initdb and pg_ctl from Debian's postgresql package, if installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


def as_postgres_user(folder: Path) -> list[str]:
    """PostgreSQL refuses to run as root: hand ``folder`` to the postgres user and run as it."""
    if os.geteuid() != 0:
        return []
    shutil.chown(folder, "postgres", "postgres")
    return ["runuser", "-u", "postgres", "--"]


def postgres_folder(services: Path) -> Path:
    """``services/postgres``; as root, where the postgres user cannot reach that (a private parent
    folder), a folder of its own under /var/lib/icetrain named after the project instead."""
    preferred = services / "postgres"
    if os.geteuid() != 0:
        return preferred
    preferred.mkdir(parents=True, exist_ok=True)
    reachable = (
        subprocess.run(
            ["runuser", "-u", "postgres", "--", "test", "-x", str(preferred.parent)], capture_output=True
        ).returncode
        == 0
    )
    if reachable:
        return preferred
    digest = hashlib.sha256(str(services.resolve()).encode()).hexdigest()[:12]
    fallback = Path("/var/lib/icetrain") / digest / "postgres"
    fallback.mkdir(parents=True, exist_ok=True)
    return fallback


def start_postgres(folder: Path, port: int, databases: tuple[str, ...]) -> None:
    """Create (first time) and start a cluster in ``folder`` on 127.0.0.1:``port`` with ``databases``.

    Raises:
        IcetrainError: Debian's postgresql is missing or the cluster does not start.
    """
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise IcetrainError("PostgreSQL is not installed: apt-get install postgresql (make system-deps does it)")
    folder.mkdir(parents=True, exist_ok=True)
    run_as = as_postgres_user(folder)
    data = folder / "data"
    if not data.exists():
        _run([*run_as, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", PG_USER], "initdb")
    options = f"-p {port} -k {folder} -h 127.0.0.1"
    _run(
        [
            *run_as,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(folder / "postgres.log"),
            "-w",
            "start",
        ],
        "pg_ctl start",
    )
    existing = _run(
        [
            str(bin_dir / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-U",
            PG_USER,
            "-d",
            "postgres",
            "-Atc",
            "select datname from pg_database",
        ],
        "psql",
    )
    for name in databases:
        if name not in existing.split():
            _run(
                [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, name], f"createdb {name}"
            )


def stop_postgres(folder: Path) -> None:
    bin_dir = postgres_bin()
    if bin_dir is not None and (folder / "data").exists():
        subprocess.run(
            [
                *as_postgres_user(folder),
                str(bin_dir / "pg_ctl"),
                "-D",
                str(folder / "data"),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
            capture_output=True,
        )


def start_services(settings: Settings) -> dict[str, object]:
    """Start PostgreSQL and the MLflow server, write dagster.yaml and services.json; returns what was recorded.

    Raises:
        IcetrainError: they are already running, or one of them does not come up (both are stopped then).
    """
    folder = services_dir(settings.home)
    if (folder / SERVICES_FILE).exists():
        raise IcetrainError(
            f"services already recorded in {folder / SERVICES_FILE}; run `icetrain services stop` first"
        )
    pg_port, mlflow_port = free_port(), free_port()
    pg_folder = postgres_folder(folder)
    start_postgres(pg_folder, pg_port, DATABASES)
    try:
        (folder / "dagster_home").mkdir(parents=True, exist_ok=True)
        (folder / "dagster_home" / "dagster.yaml").write_text(DAGSTER_YAML.format(user=PG_USER, port=pg_port))
        mlflow = _start_mlflow(folder, pg_port, mlflow_port)
        wait_until_up(mlflow, "/health")
    except BaseException:
        stop_postgres(pg_folder)
        raise
    record = {
        "postgres_port": pg_port,
        "postgres_dir": str(pg_folder),
        "mlflow_port": mlflow_port,
        "mlflow_pid": mlflow.process.pid,
        "started": time.time(),
    }
    (folder / SERVICES_FILE).write_text(json.dumps(record, indent=2))
    return record


def stop_services(settings: Settings) -> bool:
    """Stop the MLflow server (its process group) and PostgreSQL; False if nothing was recorded."""
    folder = services_dir(settings.home)
    record_file = folder / SERVICES_FILE
    if not record_file.exists():
        return False
    record = json.loads(record_file.read_text())
    pid = int(record["mlflow_pid"])
    for signum in (signal.SIGTERM, signal.SIGKILL) if _is_mlflow(pid) else ():
        try:
            os.killpg(pid, signum)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
    stop_postgres(Path(record.get("postgres_dir") or folder / "postgres"))
    record_file.unlink()
    return True


def _start_mlflow(folder: Path, pg_port: int, port: int) -> Server:
    command = [
        _tool("mlflow"), "server",
        "--backend-store-uri", f"postgresql+psycopg2://{PG_USER}@127.0.0.1:{pg_port}/mlflow",
        "--artifacts-destination", str(folder / "mlflow-artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    with (folder / "mlflow.log").open("ab") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
            cwd=folder,
        )
    return Server("mlflow", f"http://127.0.0.1:{port}", process)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its parent counts as gone)."""
    return process_start_time(pid) is not None


def _is_mlflow(pid: int) -> bool:
    """Whether ``pid`` is still the MLflow server we started (not a reused pid)."""
    try:
        return b"mlflow" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _run(command: list[str], what: str) -> str:
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        raise IcetrainError(f"{what} failed: {' '.join((out.stderr or out.stdout).split())[:300]}")
    return out.stdout
