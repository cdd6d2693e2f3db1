"""Two-rank (gloo, CPU) fine-tuning through torchrun: both ranks train, validate and checkpoint together."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pgl_core import checkpoint as ckpt
from pgl_core.sinks import read_jsonl
from tests.finetune.conftest import FAST, SMALL_PATCH

pytestmark = [pytest.mark.ddp, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]


def test_two_rank_finetune(kits_store, tmp_path):
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    sets = [a for s in [*FAST, *SMALL_PATCH, "finetune.steps=4", "finetune.eval_every=2"] for a in ("--set", s)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
           "pgl_core.finetune", "--store", kits_store, "--dataset", "kits", "--output", str(out), "--preset",
           "tiny", "--labelled", "3", "--device", "cpu", *sets]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.count("fine-tuning completed") == 1  # rank 0 reports
    state, _ = ckpt.load_latest(str(out))
    assert state["step"] == 4 and len(state["rng"]) == 2
    contract = json.loads((out / "model" / "contract.json").read_text())
    assert contract["config"]["finetune"]["steps"] == 4
    vals = [r for r in read_jsonl(out / "metrics.jsonl") if "val_dice" in r]
    assert [r["step"] for r in vals] == [2, 4]
    assert contract["metrics"]["best_val_dice"] == max(r["val_dice"] for r in vals)


def test_cli_nproc_2_launches_torchrun(kits_store, tmp_path, monkeypatch, capsys):
    from flows.cli import main as pgl

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    out = tmp_path / "cli"
    sets = [a for s in [*FAST, *SMALL_PATCH, "finetune.eval_every=2"] for a in ("--set", s)]
    code = pgl(["finetune", "--store", kits_store, "--dataset", "kits", "--output", str(out), "--preset", "tiny",
                "--steps", "2", "--labelled", "2", "--nproc", "2", "--device", "cpu",
                "--workdir", str(tmp_path / "w"), *sets])
    assert code == 0, capsys.readouterr()
    assert len(ckpt.load_latest(str(out))[0]["rng"]) == 2 and (out / "model" / "model.pt").is_file()
