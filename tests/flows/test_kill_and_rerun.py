"""A preprocess run killed mid-way leaves nothing that looks complete; the rerun finishes the job.
A forced rewrite killed mid-way leaves every case listed and readable (its old generation)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from phantoms import write_dataset
from storage.store import DatasetStore
from tests.store.readback import arrays_of, check_readable, check_tidy

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


def _snapshot(folder: Path) -> dict[str, int]:
    """Every file and folder below ``folder`` with its modification time (ns)."""
    out = {}
    for p in folder.rglob("*"):
        try:
            out[str(p)] = p.stat().st_mtime_ns
        except FileNotFoundError:  # removed while listing
            pass
    return out


def test_forced_rewrite_killed_at_random_times(tmp_path: Path):
    """``preprocess --force`` killed with SIGKILL at random moments of its rewrite, several times: the
    store lists every case after each kill and each listed case reads fully (the old generation stays
    until the new record is in place); a plain rerun then completes and tidies every case."""
    write_dataset(str(tmp_path / "raw"), "pool", 3, seed=4, shape_zyx=(40, 128, 128))
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "flows.cli", "preprocess", "--input", str(tmp_path / "raw" / "PhantomPool"),
           "--dataset", "pool", "--store", str(store), "--target-spacing", "1.5,1.5,2", "--workers", "1"]
    env = dict(os.environ, PGL_PROGRESS="0")
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    expected = arrays_of(DatasetStore(str(store), "pool"))
    assert len(expected) == 3
    rng = random.Random(20261201)
    kills = 0
    for _ in range(3):
        before = _snapshot(store / "pool")
        proc = subprocess.Popen(cmd + ["--force"], env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline and _snapshot(store / "pool") == before:
            time.sleep(0.02)  # until the rewrite has begun: the first write to the store
        time.sleep(rng.uniform(0.0, 0.6))  # mostly within the writes of the first cases
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait(timeout=30)
        check_readable(DatasetStore(str(store), "pool"), expected)
    assert kills >= 2, "the rewrites ended before they could be killed"
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "0 done, 3 skipped" in rerun.stdout
    ds = DatasetStore(str(store), "pool")
    check_readable(ds, expected)
    check_tidy(ds)
