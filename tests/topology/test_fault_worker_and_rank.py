"""Faults the topology survives: a Dask worker killed in the middle of ingest (the run completes on
the other worker, no case is half written, a rerun has nothing left to do), and a training rank
killed (the stage fails with the rank's log; rerunning it resumes from the last checkpoint)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from phantoms import write_dataset
from storage import blobs
from storage.store import DatasetStore
from tests.topology.conftest import upload_tree

pytestmark = [pytest.mark.topology, pytest.mark.s3, pytest.mark.slow]


def _pgl(topology, *args: str, timeout: float = 300) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "flows.cli", *args], env=topology.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=str(topology.folder))


def _processing(topology) -> dict[str, list[str]]:
    from distributed import Client

    with Client(topology.dask_address, timeout="20s") as client:
        return {addr: [str(k) for k in keys] for addr, keys in client.processing().items()}


@pytest.mark.timeout(600)
def test_a_dask_worker_killed_during_ingest(topology, s3_server, tmp_path: Path):
    raw = tmp_path / "raw"
    write_dataset(str(raw), "lits", 6, seed=7, shape_zyx=(64, 160, 160), formats=("nifti",), name="Big")
    upload_tree(s3_server, raw / "Big", f"{topology.bucket}/raw-faults/Big")
    store = f"{topology.bucket}/store-faults"
    args = ["preprocess", "--input", f"{topology.bucket}/raw-faults/Big", "--dataset", "big", "--store", store]
    proc = _pgl(topology, *args)
    victim = topology.workers()["worker-1"]
    deadline, killed = time.monotonic() + 240, False
    while time.monotonic() < deadline and proc.poll() is None and not killed:
        if any("ingest" in k for k in _processing(topology).get(victim, [])):
            time.sleep(0.3)  # in the middle of the case: reading, resampling or writing chunks
            topology.procs["worker-1"].send_signal(signal.SIGKILL)
            killed = True
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=300)
    assert killed, f"worker-1 never got an ingest task:\n{out}"
    try:
        assert proc.returncode == 0, out + topology.logs_tail()
        assert "6 done, 0 skipped (unchanged), 0 failed" in out, out
        ds = DatasetStore(store, "big", topology.storage_options)
        cases = ds.manifest()["cases"]
        assert len(cases) == 6 and all(c["status"] == "done" for c in cases.values())
        for case_id in cases:  # every chunk there: the stored statistics match the stored voxels
            image = ds.read_full(case_id)
            stats = ds.case_attrs(case_id)["stats"]
            clipped = np.clip(image, *stats["clip_hu"]).astype(np.float64)
            assert image.size == stats["n_vox"] and float(clipped.sum()) == pytest.approx(stats["sum_hu"], rel=1e-9)
        again = subprocess.run([sys.executable, "-m", "flows.cli", *args], env=topology.env(), capture_output=True,
                               text=True, timeout=300, cwd=str(topology.folder))
        assert again.returncode == 0 and "0 done, 6 skipped (unchanged), 0 failed" in again.stdout, again.stdout
    finally:  # the next tests need two workers again
        topology.start_worker("worker-1")
        topology.wait_workers(2)


def _node_rank_worker(node_rank: int) -> psutil.Process | None:
    """The training process started by the torchrun agent of ``node_rank``."""
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if "torch.distributed.run" in cmd and f"--node-rank={node_rank}" in cmd:
            children = proc.children()
            return children[0] if children else None
    return None


@pytest.mark.timeout(900)
def test_a_killed_rank_fails_the_stage_with_its_log_and_the_rerun_resumes(topology, tmp_path: Path):
    from benchmarks.loader import write_synthetic_store

    store = str(tmp_path / "store")
    write_synthetic_store(store, ["dsa"], 2, (24, 48, 48))
    output = f"{topology.bucket}/runs-faults/pretrain"
    overrides = ["views.patch_vox=[8,16,16]", "train.batch_size=2", "train.log_every=1", "train.steps=60",
                 "train.checkpoint_every_steps=10"]
    params = {"store": store, "datasets": ["dsa"], "output": output, "preset": "tiny", "overrides": overrides,
              "nnodes": 2, "device": "cpu", "register_model": False}
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(topology.run_deployment, "pretrain", params, 600)
        deadline, killed = time.monotonic() + 400, None
        while time.monotonic() < deadline and not first.done() and killed is None:
            ckpts = blobs.list_uris(f"{output}/checkpoints/", storage_options=topology.storage_options) \
                if blobs.exists(f"{output}/checkpoints", topology.storage_options) else []
            if any(u.endswith(".pt") for u in ckpts):
                victim = _node_rank_worker(1)
                if victim is not None:
                    victim.send_signal(signal.SIGKILL)
                    killed = victim.pid
            time.sleep(0.2)
        run = first.result(timeout=600)
    assert killed, "no checkpoint or no rank of node 1 seen"
    assert run.state.is_failed(), run.state
    message = run.state.message or ""
    logs = "\n".join(topology.flow_run_logs(run.id))
    assert "of 2" in message + logs and "last output" in message + logs, message  # which node, and its log
    rows = [json.loads(x) for x in blobs.get_bytes(f"{output}/metrics.jsonl", topology.storage_options).decode().splitlines()]
    steps_before = max(r["step"] for r in rows if r.get("kind") == "metrics")
    assert steps_before < 60

    rerun = topology.run_deployment("pretrain", params, 600)
    assert rerun.state.is_completed(), (rerun.state.message, topology.logs_tail())
    rows = [json.loads(x) for x in blobs.get_bytes(f"{output}/metrics.jsonl", topology.storage_options).decode().splitlines()]
    starts = [r for r in rows if r.get("kind") == "params"]
    assert len(starts) == 2 and starts[1]["resumed_from"], starts  # the second start resumed ...
    resumed_steps = [r["step"] for r in rows[rows.index(starts[1]):] if r.get("kind") == "metrics"]
    assert resumed_steps[0] > 10 and resumed_steps[-1] == 60  # ... from a checkpoint, not from scratch
    assert blobs.exists(f"{output}/encoder.pt", topology.storage_options)
