"""The service-free study script runs end to end in its small mode and writes a valid results.json."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

from pgl_core.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "study.py")
CONFIG = os.path.join(ROOT, "deploy", "configs", "study-small.yaml")


def test_study_config_loads_on_the_tiny_preset():
    cfg = load_config(CONFIG, preset="tiny")
    assert cfg.finetune.labelled is not None and cfg.finetune.labelled >= 1
    assert cfg.loss.mode == "pgl"


@pytest.mark.slow
def test_small_mode_writes_valid_results(tmp_path):
    out = tmp_path / "results.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, SCRIPT, "--small", "--config", CONFIG, "--work", str(tmp_path / "w"),
                           "--out", str(out), "--kinds", "lits", "spleen"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert set(results) >= {"gate", "gate_checks", "datasets", "paired", "early", "verdict", "_meta"}
    assert sorted(results["gate"]) == ["PhantomLiTS", "PhantomSpleen"]  # random init, all labels
    datasets = results["datasets"]
    assert sorted(datasets) == ["PhantomLiTS", "PhantomSpleen"]
    for ds in datasets:
        assert sorted(datasets[ds]) == ["global", "pgl", "random"]
        for init, row in datasets[ds].items():
            assert row["n_seeds"] == len(row["dice_per_seed"]) == 2
            assert all(0.0 <= d <= 1.0 for d in row["dice_per_seed"])
            assert math.isclose(row["mean_dice"], sum(row["dice_per_seed"]) / row["n_seeds"])
            assert row["std_dice"] >= 0.0 and row["per_class"]
        for name in ("pgl-random", "pgl-global", "global-random"):
            p = results["paired"][ds][name]
            assert p["n"] == 2 and p["ci95"][0] <= p["mean"] <= p["ci95"][1]
    assert isinstance(results["verdict"], str) and results["verdict"]
    timings = results["_meta"]["timings_s"]
    assert timings["pretrain_global"] > 0 and timings["pretrain_pgl"] > 0
    assert "| PhantomLiTS |" in proc.stdout and "verdict:" in proc.stdout
