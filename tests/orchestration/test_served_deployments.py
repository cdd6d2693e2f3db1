"""``pgl serve`` against a real Prefect server on loopback: a stage's deployment triggered through
the client exactly as the UI does runs only that stage, to Completed, and writes its outputs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.serve import start_local_server, stop_process

pytestmark = [pytest.mark.flows, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
SMALL = ["views.patch_vox=[8,16,16]", "train.batch_size=2", "train.log_every=1", "train.steps=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    t0 = time.perf_counter()
    proc, api = start_local_server(home, port=_free_port())
    print(f"prefect server healthy after {time.perf_counter() - t0:.1f} s")
    yield api
    stop_process(proc, timeout_s=20)


@pytest.fixture(scope="module")
def served(prefect_api, tmp_path_factory):
    env = dict(os.environ, PREFECT_API_URL=prefect_api, PREFECT_RUNNER_POLL_FREQUENCY="1",
               PREFECT_HOME=str(tmp_path_factory.mktemp("serve-home")), PYTHONPATH=str(REPO),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="true", PGL_PROGRESS="0")
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve"], env=env, stdout=fh,
                                stderr=subprocess.STDOUT, cwd=str(REPO))
    yield proc, log
    t0 = time.perf_counter()
    code = stop_process(proc, timeout_s=20)  # serve first, then the server (fixture order)
    print(f"pgl serve stopped in {time.perf_counter() - t0:.1f} s with status {code}")


def _wait_for_deployments(api: str, names: list[str], timeout_s: float = 120) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout_s
    with temporary_settings({PREFECT_API_URL: api}):
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                found = {f"{d.name}/{d.name}" for d in client.read_deployments()}
                if set(names) <= found:
                    return
                time.sleep(1)
    raise TimeoutError(f"deployments {names} not registered within {timeout_s} s")


def test_served_pretrain_deployment_runs_only_that_stage(prefect_api, served, synthetic_store, tmp_path):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    proc, log = served
    names = ["preprocess/preprocess", "pretrain/pretrain", "finetune/finetune", "evaluate/evaluate",
             "pipeline/pipeline"]
    _wait_for_deployments(prefect_api, names)
    assert proc.poll() is None, log.read_text()[-3000:]
    out = tmp_path / "pretrain"
    params = {"store": synthetic_store, "datasets": ["dsa", "dsb"], "output": str(out), "preset": "tiny",
              "overrides": SMALL, "device": "cpu", "workdir": str(tmp_path / "work")}
    t0 = time.perf_counter()
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        run = run_deployment("pretrain/pretrain", parameters=params, timeout=300, poll_interval=1)
    print(f"served pretrain deployment: {time.perf_counter() - t0:.1f} s from trigger to {run.state.name}")
    assert run.state.is_completed(), (run.state.message, log.read_text()[-3000:])
    assert (out / "encoder.pt").is_file() and (out / "stage.json").is_file()
    assert not (tmp_path / "finetune").exists()
    # the run's page shows its logs: read back through the API, INFO included (logs are shipped in
    # batches, so the last ones may land a moment after the state)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline, messages = time.monotonic() + 30, []
    while time.monotonic() < deadline and not any("pretrain ->" in m and "done" in m for m in messages):
        time.sleep(1)
        with temporary_settings({PREFECT_API_URL: prefect_api}):
            with get_client(sync_client=True) as client:
                logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        messages = [entry.message for entry in logs if entry.level == 20]
    assert any("pretrain ->" in m and "done" in m for m in messages), messages
    assert any("pretraining completed at step 2/2" in m for m in messages)  # the training's own output


def test_the_ui_of_a_server_started_on_another_port_points_at_that_port(prefect_api):
    import json
    import urllib.request

    root = prefect_api.removesuffix("/api")
    with urllib.request.urlopen(f"{root}/ui-settings", timeout=10) as resp:
        settings = json.loads(resp.read())
    assert settings["api_url"] == prefect_api and not prefect_api.endswith(":4200/api")
