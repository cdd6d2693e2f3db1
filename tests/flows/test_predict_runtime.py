"""``pgl predict`` sets its CPU thread policy before torch is imported (OpenMP reads it at load)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SPY = """
import os, sys
import flows.runtime as runtime
from flows.cli import main
configure = runtime.configure_cpu_inference
def spy():
    print("torch imported:", "torch" in sys.modules)
    configure()
runtime.configure_cpu_inference = spy
rc = main(["predict", "--model", sys.argv[1], "--input", sys.argv[2], "--output", sys.argv[3]])
print("policy:", os.environ.get("OMP_WAIT_POLICY"))
"""


def _run(tmp_path: Path, env: dict[str, str]) -> str:
    args = [str(tmp_path / "model"), str(tmp_path / "missing.nii.gz"), str(tmp_path / "out.nii.gz")]
    done = subprocess.run([sys.executable, "-c", SPY, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    return done.stdout


def test_passive_wait_policy_is_set_before_torch_and_an_exported_one_is_kept(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    out = _run(tmp_path, env)
    assert "torch imported: False" in out and "policy: PASSIVE" in out, out
    assert "policy: ACTIVE" in _run(tmp_path, {**env, "OMP_WAIT_POLICY": "ACTIVE"})
