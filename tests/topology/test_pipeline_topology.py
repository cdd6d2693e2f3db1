"""The whole pipeline through its deployment on the production topology (natively on loopback):
DICOM and NIfTI phantoms in S3 -> Zarr in S3 (ingest on the two Dask workers) -> two-rank
pretraining launched across the two Dask workers -> fine-tuning -> registered segmenter on the
MLflow server -> ``pgl predict`` in a fresh process pulling ``models:/...@champion``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import SimpleITK as sitk

from storage import blobs
from storage.store import DatasetStore
from tests.topology.conftest import RAW
from tests.topology.stack import REPO

pytestmark = [pytest.mark.topology, pytest.mark.s3, pytest.mark.slow]
TINY = ["train.steps=3", "train.log_every=1", "finetune.steps=3", "finetune.eval_every=3", "finetune.log_every=1"]


def _params_rows(output: str, opts: dict) -> list[dict]:
    rows = [json.loads(line) for line in blobs.get_bytes(f"{output}/metrics.jsonl", opts).decode().splitlines()]
    return [r for r in rows if r.get("kind") == "params"]


@pytest.mark.timeout(900)
def test_pipeline_deployment_runs_every_stage_on_the_topology_then_predict_pulls_the_champion(
        topology, raw_local: Path, tmp_path: Path):
    bucket, opts = topology.bucket, topology.storage_options
    params = {"input": f"{bucket}/raw", "store": f"{bucket}/store", "output": f"{bucket}/runs",
              "datasets": list(RAW), "preset": "tiny", "overrides": TINY, "inits": ["pgl"], "seeds": [0],
              "nnodes": 2, "device": "cpu"}
    run = topology.run_deployment("pipeline", params, timeout_s=780)
    assert run.state.is_completed(), (run.state.message, topology.logs_tail())

    # ingest: both formats into Zarr on S3, every case done
    for name, (_, n, _, _) in RAW.items():
        cases = DatasetStore(f"{bucket}/store", name, opts).manifest()["cases"]
        assert len(cases) == n and all(c["status"] == "done" for c in cases.values()), (name, cases)
    # pretraining: one process group of two ranks, one torchrun node per Dask worker
    marker = json.loads(blobs.get_bytes(f"{bucket}/runs/pretrain-pgl/stage.json", opts))
    assert [n["node_rank"] for n in marker["result"]["nodes"]] == [0, 1]
    assert _params_rows(f"{bucket}/runs/pretrain-pgl", opts)[0]["world_size"] == 2
    assert blobs.exists(f"{bucket}/runs/pretrain-pgl/encoder.pt", opts)
    # fine-tuning from the registered encoder, evaluated, registered as the champion on the server
    client = mlflow.MlflowClient(tracking_uri=topology.mlflow_url, registry_uri=topology.mlflow_url)
    encoder = client.get_model_version_by_alias("pgl-encoder", "champion")
    seg = client.get_model_version_by_alias("pgl-seg-PhantomSpleen", "champion")
    assert seg.tags["pgl.lineage.init"] == f"models:/pgl-encoder/{encoder.version}"
    evaluation = f"{bucket}/runs/finetune/PhantomSpleen/pgl-seed0/eval-test"
    assert blobs.exists(f"{evaluation}/metrics.json", opts) and blobs.exists(f"{evaluation}/metrics.csv", opts)
    assert not (REPO / "s3:").exists()  # an s3:// output is never taken for a local folder name
    logs = topology.flow_run_logs(run.id)
    assert any("verdict" in m or "Dice" in m for m in logs), logs[-20:]

    # a fresh process segments a scan with the champion, pulled from the registry (artifacts via S3)
    image = next((raw_local / "PhantomSpleen" / "imagesTr").glob("*.nii.gz"))
    out = tmp_path / "seg.nii.gz"
    env = topology.env()
    for key in topology.s3_env:  # the model comes through the MLflow server: no S3 credentials needed
        env.pop(key, None)
    done = subprocess.run([sys.executable, "-m", "flows.cli", "predict", "--model",
                           "models:/pgl-seg-PhantomSpleen@champion", "--input", str(image), "--output", str(out),
                           "--device", "cpu"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    got, src = sitk.ReadImage(str(out)), sitk.ReadImage(str(image))
    assert got.GetSize() == src.GetSize() and got.GetSpacing() == pytest.approx(src.GetSpacing())
    assert got.GetOrigin() == pytest.approx(src.GetOrigin()) and got.GetDirection() == pytest.approx(src.GetDirection())
