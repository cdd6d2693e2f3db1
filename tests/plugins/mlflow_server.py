"""A real MLflow tracking server for tests: ``mlflow server`` on 127.0.0.1 (a free port) with a
sqlite backend store and S3 artifacts on the local moto server (``tests/plugins/s3.py``).

Fixtures:
- ``mlflow_server`` (session): an :class:`MlflowServer` with ``url`` and ``env`` (the variables
  a client subprocess needs: ``MLFLOW_TRACKING_URI`` and telemetry off). Artifacts are proxied
  by the server (``--artifacts-destination s3://<bucket>/mlflow``), so clients need no S3
  credentials; the server gets ``MLFLOW_S3_ENDPOINT_URL`` and ``AWS_*``. Started once per
  session (~6-9 s), stopped at the end (SIGTERM, then SIGKILL after 10 s).
- ``mlflow_env`` (function): ``os.environ`` patched with ``MLFLOW_TRACKING_URI`` for the test.
Tests that use them are marked ``@pytest.mark.slow`` and ``@pytest.mark.s3``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest

__all__ = ["MlflowServer", "mlflow_server", "mlflow_env"]

START_TIMEOUT_S = 90.0
_QUIET = {"DO_NOT_TRACK": "true", "MLFLOW_DISABLE_TELEMETRY": "true"}


@dataclass
class MlflowServer:
    """Where the test tracking server listens."""

    url: str
    artifacts_destination: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=1.0) as resp:
            return resp.status == 200
    except Exception:  # noqa: BLE001 - not up yet
        return False


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def start_mlflow_server(folder: Path, s3_env: dict[str, str], s3_endpoint: str, bucket_uri: str,
                        port: int | None = None) -> tuple[subprocess.Popen, MlflowServer]:
    """Start ``mlflow server`` (on ``port``, else a free one) and wait for ``/health``; raises with the
    log tail on failure. Started again with the same ``folder`` and ``bucket_uri``, it serves the same
    backend store (``folder/mlflow.db``) and artifacts."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    destination = f"{bucket_uri}/mlflow"
    env = {**os.environ, **s3_env, **_QUIET, "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no background job workers to start or stop
    env.pop("MLFLOW_TRACKING_URI", None)
    log_path = folder / "server.log"
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
           "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
           "--artifacts-destination", destination, "--workers", "1"]
    with log_path.open("ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder,
                                start_new_session=True)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _healthy(url):
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            tail = log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"mlflow server on {url} did not come up (exit {proc.poll()}):\n{tail}")
        time.sleep(0.25)
    info = MlflowServer(url=url, artifacts_destination=destination, log_path=log_path,
                        env={**_QUIET, "MLFLOW_TRACKING_URI": url})
    return proc, info


@pytest.fixture(scope="session")
def mlflow_server(s3_server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    """The session's MLflow server (sqlite backend, S3 artifacts on moto)."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    bucket = s3_server.make_bucket("pgl-mlflow")
    proc, info = start_mlflow_server(folder, s3_server.env, s3_server.endpoint_url, bucket)
    try:
        yield info
    finally:
        _stop(proc)


@pytest.fixture
def mlflow_env(mlflow_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """``MLFLOW_TRACKING_URI`` pointing at the test server for this test; returns the variables."""
    for key, value in mlflow_server.env.items():
        monkeypatch.setenv(key, value)
    return dict(mlflow_server.env)
