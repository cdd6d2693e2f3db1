"""The production topology, started natively on 127.0.0.1 as separate processes: moto's S3 server,
``prefect server start``, ``pgl serve`` (the deployments), ``mlflow server`` (sqlite database,
S3 artifacts proxied by the server), a Dask scheduler and two Dask workers.

Every process is started and stopped here with bounded waits; :class:`Topology` holds their
addresses, the environment a client process needs, and the log files to show when a test fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.plugins.mlflow_server import free_port

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90.0


def popen(cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen:
    """Start ``cmd`` in its own session (so its children stop with it), output to ``log``."""
    with log.open("ab") as fh:
        return subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=str(cwd or REPO),
                                start_new_session=True)


def stop(proc: subprocess.Popen | None, timeout_s: float = 20.0) -> None:
    """SIGTERM the process (its whole group when it leads one, as :func:`popen` starts them), SIGKILL
    after ``timeout_s``."""
    if proc is None or proc.poll() is not None:
        return
    try:
        group = os.getpgid(proc.pid) == proc.pid
    except ProcessLookupError:
        return

    def send(sig: int) -> None:
        try:
            os.killpg(proc.pid, sig) if group else proc.send_signal(sig)
        except ProcessLookupError:
            pass

    send(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        proc.wait(timeout=10)


def tail(path: Path, chars: int = 3000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.is_file() else f"(no {path})"


@dataclass
class Topology:
    """Addresses of the running services and what a client process needs to reach them."""

    folder: Path
    bucket: str
    s3_env: dict[str, str]
    storage_options: dict[str, Any]
    prefect_api: str = ""
    mlflow_url: str = ""
    dask_address: str = ""
    serve_workdir: Path = Path()
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    logs: dict[str, Path] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a client (CLI) process: every service address, S3 credentials."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_TRACKING_URI", "PGL_WORKDIR"))}
        return {**base, **self.s3_env, "PREFECT_API_URL": self.prefect_api, "MLFLOW_TRACKING_URI": self.mlflow_url,
                "PGL_DASK_ADDRESS": self.dask_address, "PYTHONPATH": str(REPO), "PGL_PROGRESS": "0",
                "DO_NOT_TRACK": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "MLFLOW_DISABLE_TELEMETRY": "true", **extra}

    def logs_tail(self) -> str:
        return "\n".join(f"--- {name} ---\n{tail(path, 1500)}" for name, path in self.logs.items())

    # -- Dask -------------------------------------------------------------------------------
    def start_dask(self, workers: int = 2) -> None:
        port = free_port()
        self.dask_address = f"tcp://127.0.0.1:{port}"
        log = self.logs.setdefault("dask-scheduler", self.folder / "dask-scheduler.log")
        self.procs["dask-scheduler"] = popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host",
                                              "127.0.0.1", "--port", str(port), "--no-dashboard"], self.env(), log)
        for i in range(workers):
            self.start_worker(f"worker-{i}")
        self.wait_workers(workers)

    def start_worker(self, name: str) -> subprocess.Popen:
        """A Dask worker process (one thread: one case or one training node at a time)."""
        log = self.logs.setdefault(name, self.folder / f"{name}.log")
        proc = popen([sys.executable, "-m", "distributed.cli.dask_worker", self.dask_address, "--name", name,
                      "--nthreads", "1", "--nworkers", "1", "--no-dashboard", "--host", "127.0.0.1",
                      "--memory-limit", "4GiB", "--death-timeout", "60"], self.env(OMP_NUM_THREADS="1"), log)
        self.procs[name] = proc
        return proc

    def workers(self) -> dict[str, str]:
        """``{worker name: address}`` of the workers the scheduler knows now."""
        from distributed import Client

        with Client(self.dask_address, timeout="20s") as client:
            return {w["name"]: addr for addr, w in client.scheduler_info(n_workers=-1)["workers"].items()}

    def wait_workers(self, n: int, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                if len(self.workers()) >= n:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"{n} Dask workers not up within {timeout_s} s:\n{self.logs_tail()}")

    # -- Prefect ------------------------------------------------------------------------------
    def start_prefect(self) -> None:
        from flows.serve import start_local_server

        port = free_port()
        proc, self.prefect_api = start_local_server(self.folder / "prefect-server", port=port)
        self.procs["prefect-server"] = proc
        self.logs["prefect-server"] = self.folder / "prefect-server" / "server.log"

    def start_serve(self) -> None:
        """``pgl serve`` against the server: the five deployments, runs in its subprocesses."""
        self.serve_workdir = self.folder / "serve-work"
        log = self.logs.setdefault("pgl-serve", self.folder / "pgl-serve.log")
        env = self.env(PREFECT_RUNNER_POLL_FREQUENCY="1", PREFECT_HOME=str(self.folder / "serve-home"))
        self.procs["pgl-serve"] = popen([sys.executable, "-m", "flows.cli", "serve", "--workdir",
                                         str(self.serve_workdir)], env, log)
        deadline = time.monotonic() + START_TIMEOUT_S
        names = {"preprocess", "pretrain", "finetune", "evaluate", "pipeline"}
        while time.monotonic() < deadline:
            if self.procs["pgl-serve"].poll() is not None:
                raise RuntimeError(f"pgl serve exited:\n{tail(log)}")
            if names <= {d.name for d in self.client().read_deployments()}:
                return
            time.sleep(1)
        raise TimeoutError(f"deployments not served within {START_TIMEOUT_S} s:\n{tail(log)}")

    def client(self) -> Any:
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.prefect_api)

    def run_deployment(self, name: str, parameters: dict[str, Any], timeout_s: float = 420) -> Any:
        """Trigger ``name/name`` as the UI does and wait for a final state; the flow run."""
        from prefect.deployments import run_deployment
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.prefect_api}):
            return run_deployment(f"{name}/{name}", parameters=parameters, timeout=timeout_s, poll_interval=1)

    def flow_run_logs(self, flow_run_id: Any) -> list[str]:
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        with self.client() as client:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
        return [entry.message for entry in logs]

    # -- MLflow ---------------------------------------------------------------------------------
    def start_mlflow(self, s3_endpoint: str) -> None:
        from tests.plugins.mlflow_server import start_mlflow_server

        folder = self.folder / "mlflow-server"
        folder.mkdir()
        proc, info = start_mlflow_server(folder, self.s3_env, s3_endpoint, self.bucket)
        self.procs["mlflow-server"] = proc
        self.logs["mlflow-server"] = info.log_path
        self.mlflow_url = info.url

    def stop_all(self) -> None:
        """Stop every service; raises naming any still running afterwards (nothing may outlive the tests)."""
        for name in ["pgl-serve", *[n for n in self.procs if n.startswith("worker")], "dask-scheduler",
                     "prefect-server", "mlflow-server"]:
            stop(self.procs.get(name))
        left = [name for name, proc in self.procs.items() if proc.poll() is None]
        if left:
            raise RuntimeError(f"still running after the topology was stopped: {left}")
