"""The MLflow server dies during training (``pgl pretrain`` against a real ``mlflow server``, killed
with SIGKILL once the first metrics rows exist): training completes with every step's row in
``metrics.jsonl``, the console says once that tracking is unavailable, and after the server is
restarted on the same backend store, ``pgl replay-metrics`` fills the run's history (a second
replay logs nothing).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.plugins.mlflow_server import start_mlflow_server

pytestmark = [pytest.mark.topology, pytest.mark.s3]

STEPS = 16
# a tiny model and batch: ~0.2-1.5 s a step on 2 shared cores, so the run outlives the kill by
# several steps and the whole training takes ~15-30 s after its start-up
TRAIN = [f"train.steps={STEPS}", "train.log_every=1", "train.probe_every=0", "train.batch_size=2",
         "views.patch_vox=[8,16,16]", "train.checkpoint_every_steps=8"]


def _metric_rows(output: Path) -> list[dict]:
    path = output / "metrics.jsonl"
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("kind") == "metrics":
            rows.append(row)
    return rows


def _kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.mark.timeout(420)
def test_training_outlives_the_tracking_server_and_its_metrics_are_replayed(tmp_path: Path, s3_server):
    from benchmarks.loader import write_synthetic_store

    store, output = str(tmp_path / "store"), tmp_path / "out"
    write_synthetic_store(store, ["dsa"], 2, (24, 48, 48))
    folder = tmp_path / "mlflow"
    folder.mkdir()
    bucket = s3_server.make_bucket("pgl-mlflow-down")
    server, info = start_mlflow_server(folder, s3_server.env, s3_server.endpoint_url, bucket)
    port = int(info.url.rsplit(":", 1)[1])
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, **info.env, "PGL_PROGRESS": "0", "PREFECT_HOME": str(tmp_path / "prefect"),
           "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    env.pop("PREFECT_API_URL", None)
    cmd = [sys.executable, "-m", "flows.cli", "pretrain", "--store", store, "--datasets", "dsa", "--output",
           str(output), "--preset", "tiny", "--device", "cpu", "--workdir", str(tmp_path / "work"),
           *[a for s in TRAIN for a in ("--set", s)]]
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()
        deadline = time.monotonic() + 240
        while not _metric_rows(output):
            assert proc.poll() is None, "pretrain ended before the server was killed:\n" + "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "no metrics row in time"
            time.sleep(0.05)
        _kill(server)
        rows_at_kill = len(_metric_rows(output))
        proc.wait(timeout=240)
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            _kill(proc)
        if server.poll() is None:
            _kill(server)
    console = "".join(lines)
    print(console)  # shown when the test fails
    assert proc.returncode == 0, console[-4000:]
    assert rows_at_kill < STEPS, "training ended before the server was killed: nothing was tested"
    assert (output / "encoder.pt").is_file()
    assert [int(r["step"]) for r in _metric_rows(output)] == list(range(1, STEPS + 1))
    # reported once, on one line, without a traceback
    said = [line for line in console.splitlines() if "tracking unavailable" in line.lower()]
    assert len(said) == 1, said
    assert "Traceback" not in console, console[-4000:]

    run_id = json.loads((output / "mlflow-run.json").read_text())["run_id"]
    assert json.loads((output / "stage.json").read_text())["result"]["run_id"] == run_id

    server, info = start_mlflow_server(folder, s3_server.env, s3_server.endpoint_url, bucket, port=port)
    try:
        import mlflow

        client = mlflow.MlflowClient(tracking_uri=info.url)
        before = {m.step for m in client.get_metric_history(run_id, "loss")}
        assert len(before) < STEPS, "every step reached the server before it died: nothing to replay"
        assert client.get_run(run_id).info.status == "RUNNING"  # the server was away when the stage ended it
        replay = [sys.executable, "-m", "flows.cli", "replay-metrics", "--output", str(output),
                  "--workdir", str(tmp_path / "work")]
        first = subprocess.run(replay, env=env, capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stdout + first.stderr
        assert f"-> run {run_id} on {info.url}" in first.stdout, first.stdout
        for key in ("loss", "loss_global", "loss_local", "lr"):
            assert sorted(m.step for m in client.get_metric_history(run_id, key)) == list(range(1, STEPS + 1)), key
        assert client.get_run(run_id).info.status == "FINISHED"
        again = subprocess.run(replay, env=env, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stdout + again.stderr
        assert " 0 value(s) logged" in again.stdout, again.stdout
        assert len(client.get_metric_history(run_id, "loss")) == STEPS
    finally:
        _kill(server)
