"""Runs whose process died: found and ended, so no MLflow run stays RUNNING forever.

A process killed with SIGKILL (or a machine that lost power) cannot end its own run. Every run
icetrain starts carries the host, pid and process start time of the process that records it
(``icetrain.host``, ``icetrain.pid``, ``icetrain.pid_started``) and a heartbeat tag renewed
while it trains. The next time icetrain starts or resumes a run in that experiment it ends
each RUNNING run whose process is gone (same host: no such pid, or a pid reused by a newer
process) or whose heartbeat is older than ``STALE_AFTER_S`` (another host), as KILLED, with
``icetrain.ended_by`` saying why. Its checkpoint stays, so ``--resume`` still continues it.
"""

from __future__ import annotations

import os
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from mlflow.tracking import MlflowClient

from pipeline.config.secrets import redact
from pipeline.config.settings import Settings
from pipeline.errors import TrackingError

HOST_TAG = "icetrain.host"
PID_TAG = "icetrain.pid"
STARTED_TAG = "icetrain.pid_started"
HEARTBEAT_TAG = "icetrain.heartbeat"
ENDED_BY_TAG = "icetrain.ended_by"
HEARTBEAT_S = 60.0
STALE_AFTER_S = 15 * 60.0


def process_tags() -> dict[str, str]:
    """Tags that let a later process tell whether this one is still alive."""
    return {
        HOST_TAG: socket.gethostname(),
        PID_TAG: str(os.getpid()),
        STARTED_TAG: process_start_time(os.getpid()) or "",
        HEARTBEAT_TAG: str(int(time.time())),
    }


def end_dead_runs(client: MlflowClient, experiment_id: str, *, now: float | None = None) -> list[str]:
    """End as KILLED every RUNNING icetrain run in the experiment whose process is gone; returns their ids."""
    now = time.time() if now is None else now
    ended = []
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
        reason = _why_dead(run.data.tags, now)
        if reason:
            client.set_tag(run.info.run_id, ENDED_BY_TAG, reason)
            client.set_terminated(run.info.run_id, status="KILLED")
            ended.append(run.info.run_id)
    return ended


class Heartbeat:
    """Renews the run's heartbeat tag every ``interval`` seconds from a daemon thread, until stopped."""

    def __init__(self, client: MlflowClient, run_id: str, interval: float = HEARTBEAT_S):
        self._client, self._run_id, self._interval = client, run_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="icetrain-heartbeat", daemon=True)

    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._client.set_tag(self._run_id, HEARTBEAT_TAG, str(int(time.time())))
            except Exception:  # a missed beat is not worth failing training over; staleness is judged generously
                pass


def check_tracking(settings: Settings, timeout: float = 5.0) -> None:
    """Fail fast, before any data is read, when the MLflow tracking server does not answer.

    Raises:
        TrackingError: an http(s) tracking URI that does not answer within ``timeout`` (any HTTP
            status counts as an answer: not every server has ``/health``).
    """
    uri = settings.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    health = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(health, timeout=timeout) as response:
            response.read(64)
    except urllib.error.HTTPError:
        return  # it answered (a server without /health, or one that wants credentials there): reachable
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise TrackingError(
            f"MLflow tracking server {redact(uri)} does not answer ({reason}); nothing was read or recorded"
        ) from None


def _why_dead(tags: Mapping[str, str], now: float) -> str:
    host, pid, started = tags.get(HOST_TAG), tags.get(PID_TAG, ""), tags.get(STARTED_TAG, "")
    if host is None or not pid.isdigit():
        return ""  # not an icetrain run, or one from before these tags: leave it alone
    if host == socket.gethostname():
        current = process_start_time(int(pid))
        if current is None:
            return f"process {pid} on {host} is gone (found by a later icetrain run)"
        if started and current != started:
            return f"process {pid} on {host} is gone; the pid now belongs to another process"
        return ""
    beat = tags.get(HEARTBEAT_TAG, "")
    if beat.isdigit() and now - int(beat) > STALE_AFTER_S:
        return f"no heartbeat from process {pid} on {host} for {int(now - int(beat))}s"
    return ""


def process_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), '' where unknown, None if no such process."""
    if not Path("/proc/self/stat").exists():  # not Linux: only whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except OSError:
            pass
        return ""
    stat = Path(f"/proc/{pid}/stat")
    try:
        text = stat.read_text()
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    fields = text[text.rindex(")") + 2 :].split()
    if fields and fields[0] == "Z":
        return None  # a zombie: dead, not yet reaped by its parent
    return fields[19] if len(fields) > 19 else ""
