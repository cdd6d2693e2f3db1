"""``pgl serve``: every stage flow and the pipeline as deployments, served against a Prefect API.

Deployments are named after their flows (``preprocess/preprocess``, ``pretrain/pretrain``,
``finetune/finetune``, ``evaluate/evaluate``, ``pipeline/pipeline``) so a run started from the UI,
the CLI (``prefect deployment run pretrain/pretrain``) or the client runs exactly one stage with
the parameters given there. Optional schedules and default parameters come from a YAML file::

    deployments:
      pipeline:
        cron: "0 2 * * *"          # or interval: 3600 (seconds)
        parameters: {input: /data/raw, store: s3://bucket/store, output: s3://bucket/runs}

The API is ``PREFECT_API_URL``; without it, :func:`start_local_server` starts ``prefect server``
on loopback with its database under the work folder (``pgl serve`` does this), prints the UI
address and stops it on exit. Served runs execute in subprocesses of this one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from flows.stages import STAGES, load_flow

DEPLOYMENT_FLOWS = STAGES  # one deployment per stage, named after it
SCHEDULE_KEYS = {"cron", "interval", "parameters", "paused", "description", "tags"}


def load_schedules(path: str | Path | None) -> dict[str, dict[str, Any]]:
    """The ``deployments`` mapping of a schedule file (empty without a file); errors name the key."""
    if path is None:
        return {}
    data = yaml.safe_load(Path(path).read_text()) or {}
    entries = data.get("deployments") or {}
    if not isinstance(entries, dict):
        raise ValueError(f"{path}: 'deployments' must be a mapping of deployment name -> settings")
    for name, entry in entries.items():
        if name not in DEPLOYMENT_FLOWS:
            raise ValueError(f"{path}: unknown deployment {name!r}; choose from {sorted(DEPLOYMENT_FLOWS)}")
        unknown = set(entry or {}) - SCHEDULE_KEYS
        if unknown:
            raise ValueError(f"{path}: deployment {name!r} has unknown key(s) {sorted(unknown)}")
    return {name: dict(entry or {}) for name, entry in entries.items()}


def build_deployments(schedules: dict[str, dict[str, Any]] | None = None,
                      names: list[str] | None = None) -> list[Any]:
    """One ``RunnerDeployment`` per flow (named after it), with its optional schedule and defaults."""
    from prefect.deployments.runner import EntrypointType

    out = []
    for name in names or list(DEPLOYMENT_FLOWS):
        entry = (schedules or {}).get(name, {})
        flow = load_flow(name)
        out.append(flow.to_deployment(
            name=name, cron=entry.get("cron"), interval=entry.get("interval"), paused=entry.get("paused"),
            parameters=entry.get("parameters"), description=entry.get("description"),
            tags=["pgl", *entry.get("tags", [])], entrypoint_type=EntrypointType.MODULE_PATH))
    return out


def health_problem(api_url: str, timeout_s: float = 2.0) -> str | None:
    """One ``GET <api_url>/health``: None when it answers 200, else what went wrong."""
    try:
        with urllib.request.urlopen(api_url.rstrip("/") + "/health", timeout=timeout_s) as resp:
            return None if resp.status == 200 else f"HTTP {resp.status}"
    except Exception as err:  # noqa: BLE001 - not (yet) up
        return f"{type(err).__name__}: {err}"


def wait_healthy(api_url: str, timeout_s: float = 90.0) -> None:
    """Block until ``<api_url>/health`` answers 200; TimeoutError naming the URL otherwise."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        last = health_problem(api_url) or ""
        if not last:
            return
        time.sleep(0.5)
    raise TimeoutError(f"Prefect API {api_url} not healthy after {timeout_s:.0f} s ({last})")


def start_local_server(home: str | Path, port: int = 4200, host: str = "127.0.0.1",
                       log_file: str | Path | None = None) -> tuple[subprocess.Popen, str]:
    """Start ``prefect server start`` with ``PREFECT_HOME=home``; returns (process, API URL) once healthy."""
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    api = f"http://{host}:{port}/api"
    # the UI asks its server where the API is: this one, on this port (not the default 4200)
    env = dict(os.environ, PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="true",
               PREFECT_UI_API_URL=api)
    env.pop("PREFECT_API_URL", None)
    log = open(log_file or home / "server.log", "ab")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(api)
    except TimeoutError:
        stop_process(proc)
        raise
    return proc, api


def stop_process(proc: subprocess.Popen, timeout_s: float = 20.0) -> int | None:
    """SIGTERM, wait up to ``timeout_s``, then SIGKILL; returns the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    return proc.returncode


def serve_all(schedule_file: str | None = None, limit: int | None = None, names: list[str] | None = None) -> None:
    """Serve the deployments against the configured Prefect API until interrupted (SIGTERM / Ctrl-C)."""
    from prefect import serve

    deployments = build_deployments(load_schedules(schedule_file), names)
    serve(*deployments, limit=limit, print_starting_message=True)
