"""``icetrain ui``: the Dagster UI and the MLflow UI on localhost, stopped together."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pipeline.config.settings import Settings
from pipeline.errors import IcetrainError


@dataclass
class Server:
    """A server process started in its own process group, so stopping it stops its children."""

    name: str
    url: str
    process: subprocess.Popen[bytes]

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM the whole group, then SIGKILL whatever is left after ``timeout`` seconds.

        ``dagster dev`` started without a terminal can ignore SIGTERM, and its children can
        outlive it, so the group is killed even when its leader has already gone.
        """
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        _signal_group(self.process.pid, signal.SIGKILL)
        if self.process.poll() is None:
            self.process.wait(timeout)


def _signal_group(group: int, signum: int) -> None:
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


LOCATION_NAME = (
    "icetrain"  # as [tool.dagster] code_location_name, so `dagster dev` in the repo serves the same location
)

WORKSPACE = """\
# Written by `icetrain ui`: the icetrain code location, named as `dagster dev` names it from the repo root.
load_from:
  - python_module:
      module_name: assets.definitions
      location_name: {location}
      working_directory: {directory}
"""


def start_dagster(
    port: int, log: Path, workspace_dir: Path, pipelines_file: Path | None, mlflow_ui: str | None = None
) -> Server:
    """``dagster dev`` on the icetrain code location (named ``icetrain``), against the current DAGSTER_HOME.

    The code location loads the same pipelines file as the CLI (passed as ``ICETRAIN_CONFIG``).
    """
    workspace = workspace_dir / "workspace.yaml"
    workspace.parent.mkdir(parents=True, exist_ok=True)
    workspace.write_text(WORKSPACE.format(location=LOCATION_NAME, directory=json.dumps(str(Path.cwd()))))
    command = [_tool("dagster"), "dev", "-w", str(workspace), "-h", "127.0.0.1", "-p", str(port)]
    env = {"ICETRAIN_DAGSTER_UI": f"http://127.0.0.1:{port}"}
    if pipelines_file:
        env["ICETRAIN_CONFIG"] = str(pipelines_file)
    if mlflow_ui:
        env["ICETRAIN_MLFLOW_UI"] = mlflow_ui
    return Server("dagster", f"http://127.0.0.1:{port}", _spawn(command, log, env))


def start_mlflow(settings: Settings, port: int, log: Path) -> Server:
    """``mlflow server`` on the configured store, one worker and no job runner (2 processes, not 15)."""
    command = [
        _tool("mlflow"), "server",
        "--backend-store-uri", settings.tracking_uri,
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    env = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    return Server("mlflow", f"http://127.0.0.1:{port}", _spawn(command, log, env))


def wait_until_up(server: Server, path: str, timeout: float = 120) -> None:
    """Poll ``server.url + path`` until it answers 200.

    Raises:
        IcetrainError: the process exited or did not answer in time.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise IcetrainError(f"{server.name} exited with code {server.process.returncode} before it came up")
        try:
            with urllib.request.urlopen(server.url + path, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise IcetrainError(f"{server.name} did not answer at {server.url}{path} within {timeout:.0f}s")


def _tool(name: str) -> str:
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else name


def _spawn(command: list[str], log: Path, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **extra_env},
            start_new_session=True,
        )
