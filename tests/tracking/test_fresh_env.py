"""A registered segmenter serves from its own ``requirements.txt``: a fresh virtual environment
(``python -m venv``, no project installed, no PYTHONPATH) gets exactly those requirements, loads the
model from the registry with ``mlflow.pyfunc.load_model`` and predicts a phantom CT; the label map
equals the one the development environment predicts.

Building the environment installs mlflow and torch (~75 s on 2 cores with wheels served locally;
without compiling their bytecode, which took another ~40 s: the model's imports compile what they use).
``PGL_TEST_MODEL_ENV=DIR`` keeps it in ``DIR/<hash of requirements.txt>`` for the next run (a CI
cache); without it every run builds a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.finetune.conftest import make_store
from tests.tracking.tiny_segmenter import write_segmenter

pytestmark = pytest.mark.slow
INSTALL_TIMEOUT_S = 1200

_LOAD_AND_PREDICT = """
import importlib.util, json, sys
assert importlib.util.find_spec("pgl_core") is None, "the project is importable before the model loads"
import mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict([{"input": sys.argv[2], "output": sys.argv[3]}])
import flows, torch
print("RESULT=" + json.dumps({"outputs": list(out["output"]), "flows": flows.__file__, "torch": torch.__version__}))
"""


def _requirements(model_uri: str, tracking: str, dest: Path) -> list[str]:
    import mlflow

    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dest),
                                                     tracking_uri=tracking))
    assert (local / "code" / "flows" / "tracking" / "pyfunc_model.py").is_file()
    assert (local / "code" / "pgl_core" / "predict.py").is_file() and (local / "code" / "storage").is_dir()
    assert not list(local.rglob("__pycache__"))
    return [line.strip() for line in (local / "requirements.txt").read_text().splitlines() if line.strip()]


def _fresh_env(requirements: list[str], tmp_path: Path) -> tuple[Path, float]:
    """A virtual environment with exactly ``requirements``; (its python, seconds spent building it)."""
    text = "\n".join(requirements) + "\n"
    cache = os.environ.get("PGL_TEST_MODEL_ENV")
    root = Path(cache) / hashlib.sha256(text.encode()).hexdigest()[:16] if cache else tmp_path / "venv"
    python = root / "bin" / "python"
    if (root / ".complete").is_file():
        return python, 0.0
    shutil.rmtree(root, ignore_errors=True)
    (tmp_path / "requirements.txt").write_text(text)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-compile", "-r",
                           str(tmp_path / "requirements.txt")],
                          capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    (root / ".complete").write_text(text)
    return python, time.perf_counter() - t0


def test_a_registered_segmenter_serves_from_its_own_requirements(tmp_path: Path, monkeypatch) -> None:
    from flows.tracking.mlflow_run import start_run
    from flows.tracking.registry import register_segmenter
    from pgl_core.predict import predict_file

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = make_store(str(tmp_path / "store"), "kits", n_cases=2)
    model_dir = write_segmenter(str(tmp_path / "model"), store, "kits")
    with start_run(tmp_path / "work", "finetune") as run:
        reg = register_segmenter(model_dir, "kits", run.run_id, {"mean_dice": 0.5}, tracking_uri=run.tracking_uri)
    requirements = _requirements(reg.model_uri, run.tracking_uri, tmp_path / "download")
    assert all("==" in r and "+" not in r for r in requirements), requirements
    names = {r.split("==")[0].lower() for r in requirements}
    assert {"mlflow", "torch", "simpleitk", "pydicom", "nibabel", "pandas", "pydantic", "pyyaml"} <= names
    assert "pgl-ct" not in names  # the project's code travels in the model (code_paths)

    python, seconds = _fresh_env(requirements, tmp_path)
    print(f"fresh model environment: {seconds:.0f} s to build" if seconds else "fresh model environment: cached")
    ct = str(Path(store + "-raw") / "kits" / "case00.nii.gz")
    ours, theirs = tmp_path / "ours.nii.gz", tmp_path / "theirs.nii.gz"
    predict_file(model_dir, ct, str(ours), device="cpu")
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DO_NOT_TRACK": "true",
           "MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_TRACKING_URI": run.tracking_uri, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([str(python), "-c", _LOAD_AND_PREDICT, reg.model_uri, ct, str(theirs)], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT=", 1)[1])
    assert result["outputs"] == [str(theirs)]
    assert "/code/flows/" in result["flows"] and not result["flows"].startswith(str(Path(__file__).parents[2]))
    assert result["torch"].split("+")[0] == [r for r in requirements if r.startswith("torch==")][0][7:]
    a, b = sitk.ReadImage(str(ours)), sitk.ReadImage(str(theirs))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert b.GetSpacing() == pytest.approx(a.GetSpacing()) and b.GetOrigin() == pytest.approx(a.GetOrigin())
    assert len(np.unique(sitk.GetArrayFromImage(a))) > 1  # a label map, not one constant class
