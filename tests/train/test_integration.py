"""The real stack end to end on CPU: DatasetStore (zarr on disk) -> loader -> PGLModel -> outputs,
the ``python -m pgl_core.pretrain`` CLI (exit codes, SIGTERM, torchrun), and checkpoints on S3."""

from __future__ import annotations

import json

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.loader import write_synthetic_store
from pgl_core import checkpoint as ckpt
from pgl_core.config import load_config
from pgl_core.contracts import PretrainContract, load_encoder_state
from pgl_core.distributed import init_distributed
from pgl_core.loop import EXIT_PREEMPTED, EXIT_USAGE
from pgl_core.pretrain import main, run_pretraining

REPO = Path(__file__).resolve().parents[2]
SMALL = ["views.patch_vox=[8,16,16]", "train.batch_size=2", "train.log_every=1", "train.checkpoint_every_steps=2"]


@pytest.fixture(scope="module")
def store_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("store") / "store")
    write_synthetic_store(root, ["dsa", "dsb"], 2, (24, 48, 48))
    return root


def test_single_process_world_without_torchrun_env(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    world = init_distributed("cpu")
    assert (world.rank, world.world_size, world.distributed, world.device.type) == (0, 1, False, "cpu")
    assert world.is_main


def test_run_pretraining_real_model_and_store(store_root, tmp_path):
    cfg = load_config(preset="tiny", overrides=SMALL + ["train.steps=3", "train.probe_every=2",
                                                        "intensity.normalisation=foreground"])
    res = run_pretraining(cfg, store_root, ["dsa", "dsb"], str(tmp_path / "run"))
    assert res.status == "completed" and res.step == 3
    # the progress probe ran at step 0 (baseline), every 2 steps and at the end, through the sink
    assert [h["step"] for h in res.probe_history] == [0.0, 2.0, 3.0]
    assert all(set(h) >= {"probe_gap", "probe_nn_acc", "probe_true_dist"} for h in res.probe_history)
    logged = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("probe_gap" in row for row in logged)
    contract = PretrainContract.read(str(tmp_path / "run"))
    assert set(contract.datasets) == {"dsa", "dsb"} and all(len(h) == 64 for h in contract.datasets.values())
    assert contract.spacing_mm == [0.8, 0.8, 2.5] and contract.patch_vox == [8, 16, 16]
    assert contract.normalisation["kind"] == "foreground" and contract.normalisation["std_hu"] > 0
    lo, hi = contract.hu_window  # the body voxels' 0.5 / 99.5 percentiles, not the config's window
    assert -500 <= lo < 0 < hi and [lo, hi] != [-1024.0, 325.0]
    enc = load_encoder_state(str(tmp_path / "run"))
    state, _ = ckpt.load_latest(str(tmp_path / "run"))
    online = {k.removeprefix("online.backbone."): v for k, v in state["model"].items()
              if k.startswith("online.backbone.")}
    assert enc.keys() == online.keys()
    assert all(torch.equal(enc[k], online[k]) for k in enc)


def _cli(store_root: str, out: Path, *extra: str) -> list[str]:
    return ["--store", store_root, "--datasets", "dsa,dsb", "--output", str(out), "--preset", "tiny",
            *[a for s in SMALL for a in ("--set", s)], *extra]


def test_cli_max_steps_then_resume_and_usage_errors(store_root, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_cli(store_root, out, "--set", "train.steps=4", "--max-steps", "2")) == 0
    assert [s for s, _ in ckpt.list_checkpoints(str(out))] == [2] and not (out / "contract.json").exists()
    assert main(_cli(store_root, out, "--set", "train.steps=4")) == 0
    assert PretrainContract.read(str(out)).steps == 4
    # a terminal sees progress: step, losses, throughput and the time left, the last step included
    assert re.search(r"^step 4/4 \(100%\)  loss \d+\.\d{4}.*samples/s  ETA 0m00s$", capsys.readouterr().out, re.M)
    assert main(_cli(store_root, out, "--set", "train.nope=1")) == EXIT_USAGE
    assert "train.nope" in capsys.readouterr().err
    assert main(_cli(store_root, out, "--set", "model.widths=[4,8,8,8]")) == EXIT_USAGE  # resume mismatch


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    return env


@pytest.mark.slow
def test_cli_sigterm_checkpoints_and_exits_75(store_root, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "pgl_core.pretrain", *_cli(store_root, out, "--set", "train.steps=100000",
                                                             "--set", "train.checkpoint_every_steps=100000")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and metrics.read_text().count('"kind": "metrics"') >= 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=120)[0].decode()
    assert proc.returncode == EXIT_PREEMPTED, output
    state, _ = ckpt.load_latest(str(out))
    assert state["step"] >= 2 and state["step"] < 100000


@pytest.mark.slow
@pytest.mark.ddp
def test_torchrun_two_ranks_cli(store_root, tmp_path):
    out = tmp_path / "run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(port), "-m", "pgl_core.pretrain", *_cli(store_root, out, "--set", "train.steps=2")]
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        output = proc.communicate(timeout=240)[0].decode()
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert proc.returncode == 0, output[-4000:]
    state, _ = ckpt.load_latest(str(out))
    assert state["step"] == 2 and state["sampler"]["world_size"] == 2 and len(state["rng"]) == 2
    assert PretrainContract.read(str(out)).steps == 2


@pytest.mark.s3
def test_checkpoints_and_contract_on_s3(s3_bucket, s3_server):
    out, opts = f"{s3_bucket}/runs/r1", s3_server.storage_options
    for s in (1, 2, 3):
        ckpt.save_checkpoint(out, s, {"step": s, "w": torch.ones(2) * s}, opts, keep=2)
    assert [s for s, _ in ckpt.list_checkpoints(out, opts)] == [2, 3]
    from storage import blobs

    uri = ckpt.checkpoint_uri(out, 3)
    blobs.put_bytes_atomic(uri, blobs.get_bytes(uri, opts)[:50], opts)
    state, used = ckpt.load_latest(out, opts)
    assert state["step"] == 2 and used.endswith("step_00000002.pt")
