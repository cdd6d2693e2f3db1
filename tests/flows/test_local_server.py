"""The machine's shared local Prefect server: the first command starts it, the next ones use it (their
runs are on its API), and it stops by itself once unused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows import local_server

pytestmark = [pytest.mark.flows, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, "PREFECT_HOME": str(home), "PGL_LOCAL_SERVER": "1", "PYTHONPATH": str(REPO), "PGL_PROGRESS": "0",
            **extra}


@pytest.mark.timeout(300)
def test_commands_share_one_local_server_that_stops_when_unused(tmp_path: Path, monkeypatch):
    from phantoms import write_dataset

    home = tmp_path / "prefect"
    write_dataset(str(tmp_path / "raw"), "spleen", 1, seed=3, shape_zyx=(24, 48, 48), formats=("nifti",))
    args = [sys.executable, "-m", "flows.cli", "preprocess", "--input", str(tmp_path / "raw" / "PhantomSpleen"),
            "--dataset", "s", "--store", str(tmp_path / "store")]
    env = _env(home, PGL_LOCAL_SERVER_IDLE_MIN="0.25")  # stop after 15 s unused
    first = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
    assert first.returncode == 0, first.stdout + first.stderr
    assert "started a local Prefect server" in first.stderr
    state = json.loads((home / local_server.STATE_FILE).read_text())
    try:
        second = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240, cwd=str(tmp_path))
        assert second.returncode == 0 and "0 done, 1 skipped" in second.stdout, second.stdout + second.stderr
        assert "started a local Prefect server" not in second.stderr  # the same server, found at once
        assert json.loads((home / local_server.STATE_FILE).read_text())["api"] == state["api"]
        from prefect.client.orchestration import SyncPrefectClient

        with SyncPrefectClient(state["api"]) as client:  # both commands' runs are on that server
            runs = [r for r in client.read_flow_runs() if r.state and r.state.is_completed()]
        assert len(runs) >= 2
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and local_server.healthy(state["api"], 1.0):
            time.sleep(1)
        assert not local_server.healthy(state["api"], 1.0), "still running after it was unused"
        assert not (home / local_server.STATE_FILE).exists()
    finally:
        try:
            os.kill(state["supervisor"], signal.SIGTERM)
        except ProcessLookupError:
            pass


def test_off_switch_and_a_configured_api_leave_prefect_alone(monkeypatch):
    monkeypatch.setenv("PGL_LOCAL_SERVER", "0")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    assert not local_server.enabled()
    monkeypatch.setenv("PGL_LOCAL_SERVER", "1")
    assert local_server.enabled()
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:9/api")
    assert not local_server.enabled()
