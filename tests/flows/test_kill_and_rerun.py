"""A preprocess run killed mid-way leaves nothing that looks complete; the rerun finishes the job."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phantoms import write_dataset
from storage.store import DatasetStore

pytestmark = [pytest.mark.flows, pytest.mark.slow]


def test_killed_run_then_rerun(tmp_path: Path):
    write_dataset(str(tmp_path / "raw"), "pool", 6, seed=3, shape_zyx=(48, 160, 160))
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "flows.cli", "preprocess", "--input", str(tmp_path / "raw" / "PhantomPool"),
           "--dataset", "pool", "--store", str(store), "--target-spacing", "1.5,1.5,2", "--workers", "1"]
    env = dict(os.environ, PGL_PROGRESS="0")
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    records = store / "pool" / "_cases"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (records.exists() and list(records.glob("*.json"))):
        assert proc.poll() is None, "preprocess ended before it could be killed"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    done_before = sorted(p.stem for p in records.glob("*.json"))
    assert 1 <= len(done_before) < 6, done_before
    # every case group without a record is incomplete and must not be reported as done
    ds = DatasetStore(str(store), "pool")
    assert set(ds.done_cases()) <= set(done_before)
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{6 - len(done_before)} done, {len(done_before)} skipped" in rerun.stdout
    assert len(DatasetStore(str(store), "pool").done_cases()) == 6
