"""A throwaway PostgreSQL cluster on 127.0.0.1, started and stopped by the tests."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from icetrain.servers import free_port
from icetrain.services import as_postgres_user, postgres_bin


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """Start a cluster in a temporary folder and yield a SQLAlchemy URI to a fresh database."""
    bin_dir = postgres_bin()
    assert bin_dir is not None, "Debian's postgresql package is not installed (make test installs it)"
    folder = Path(tempfile.mkdtemp(prefix="icetrain-pg-"))
    data = folder / "data"
    port = free_port()
    as_postgres = as_postgres_user(folder)
    try:
        subprocess.run(
            [*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "icetrain"],
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {folder} -h 127.0.0.1"
        subprocess.run(
            [
                *as_postgres,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                options,
                "-l",
                str(folder / "log"),
                "-w",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        try:
            subprocess.run(
                [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "icetrain", "catalog"],
                check=True,
                capture_output=True,
            )
            yield f"postgresql+psycopg2://icetrain@127.0.0.1:{port}/catalog"
        finally:
            subprocess.run(
                [*as_postgres, str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"],
                capture_output=True,
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)
