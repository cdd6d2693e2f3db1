"""Registry and pyfunc against a real ``mlflow server`` (sqlite backend, S3 artifacts on moto)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from tests.tracking.standins import make_model_dir, write_ct

pytestmark = [pytest.mark.slow, pytest.mark.s3]
ROOT = Path(__file__).resolve().parents[2]
THRESHOLDS = {1: 100.0, 2: 250.0, 3: 400.0}
DICE = {1: 0.70, 2: 0.80, 3: 0.75}


@pytest.fixture(scope="module")
def segmenter(mlflow_server, tmp_path_factory):
    """Three versions of ``pgl-seg-<ds>`` registered from one pipeline run's finetune stages."""
    from flows.tracking import mlflow_run as tracking
    from flows.tracking import registry

    dataset = f"ds{uuid.uuid4().hex[:6]}"
    tmp = tmp_path_factory.mktemp("segmenter")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
        parent = tracking.start_run(tmp / "work", "pipeline", tags={"pgl.dataset": dataset})
        assert parent.online and parent.tracking_uri == mlflow_server.url
        regs = {}
        for v in (1, 2, 3):
            stage = parent.stage("finetune", str(tmp / f"ft{v}"))
            stage.log_metrics(1, {"mean_dice": DICE[v]})
            model_dir = make_model_dir(tmp / f"model{v}", threshold_hu=THRESHOLDS[v])
            regs[v] = registry.register_segmenter(model_dir, dataset, stage.run_id, {"mean_dice": DICE[v]},
                                                  tracking_uri=mlflow_server.url)
            assert stage._link.client.get_run(stage.run_id).info.status == "RUNNING"  # still its owner's
            stage.close()
        parent.close()
    return dataset, regs, parent


def test_candidate_on_every_version_champion_only_when_better(segmenter, mlflow_server) -> None:
    import mlflow

    dataset, regs, parent = segmenter
    name = f"pgl-seg-{dataset}"
    assert [regs[v].version for v in (1, 2, 3)] == ["1", "2", "3"]
    assert [regs[v].champion_moved for v in (1, 2, 3)] == [True, True, False]
    assert regs[2].previous_champion == "1" and regs[2].previous_metric == pytest.approx(0.70)
    assert regs[3].previous_champion == "2" and "does not beat" in regs[3].decision
    client = mlflow.MlflowClient(mlflow_server.url, registry_uri=mlflow_server.url)
    assert client.get_model_version_by_alias(name, "candidate").version == "3"
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    v3 = client.get_model_version(name, "3")
    assert v3.tags["pgl.champion_decision"] == regs[3].decision
    assert "strictly greater" in v3.tags["pgl.champion_rule"]
    assert float(v3.tags["pgl.metric.mean_dice"]) == pytest.approx(0.75)
    assert v3.tags["pgl.lineage.pretrain_run"] == "r-0"
    assert json.loads(v3.tags["pgl.contract.label_names"]) == ["background", "bone"]
    assert v3.run_id == regs[3].run_id
    stage_run = client.get_run(regs[3].run_id)
    assert stage_run.data.tags["mlflow.parentRunId"] == parent.run_id
    assert stage_run.info.status == "FINISHED"
    assert stage_run.info.artifact_uri.startswith("mlflow-artifacts:")


def test_resolve_model_downloads_the_champion_dir(segmenter, mlflow_server, s3_server, tmp_path) -> None:
    from flows.tracking.registry import resolve_model

    dataset, _, _ = segmenter
    local = resolve_model(f"models:/pgl-seg-{dataset}@champion", cache_dir=tmp_path / "cache",
                          tracking_uri=mlflow_server.url)
    contract = json.loads((Path(local) / "contract.json").read_text())
    assert contract["kind"] == "pgl-segmenter" and contract["threshold_hu"] == THRESHOLDS[2]
    assert (Path(local) / "model.pt").stat().st_size > 0
    again = resolve_model(f"models:/pgl-seg-{dataset}/2", cache_dir=tmp_path / "cache",
                          tracking_uri=mlflow_server.url)
    assert again == local  # cached by version
    bucket = mlflow_server.artifacts_destination.split("/")[2]
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    assert any(k.endswith("contract.json") for k in keys), "artifacts did not land in S3"
    with pytest.raises(LookupError, match="alias 'nope'"):
        resolve_model(f"models:/pgl-seg-{dataset}@nope", cache_dir=tmp_path / "cache",
                      tracking_uri=mlflow_server.url)


_LOAD_AND_PREDICT = """
import json, sys
import mlflow.pyfunc
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict([{"input": sys.argv[2], "output": sys.argv[3]}])
print("OUTPUTS=" + json.dumps(list(out["output"])))
"""


def test_fresh_process_loads_the_champion_pyfunc_and_predicts(segmenter, mlflow_server, tmp_path) -> None:
    dataset, _, _ = segmenter
    ct, arr = write_ct(tmp_path / "ct.nii.gz", seed=3)
    out = tmp_path / "pred" / "seg.nii.gz"
    env = {**os.environ, **mlflow_server.env, "PYTHONPATH": str(ROOT)}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "MLFLOW_S3_ENDPOINT_URL"):
        env.pop(key, None)  # artifacts come through the server's proxy
    proc = subprocess.run([sys.executable, "-c", _LOAD_AND_PREDICT, f"models:/pgl-seg-{dataset}@champion",
                           ct, str(out)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f'OUTPUTS=["{out}"]' in proc.stdout
    seg = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(seg), (arr > THRESHOLDS[2]).astype(np.uint8))
    assert seg.GetOrigin() == pytest.approx(sitk.ReadImage(ct).GetOrigin())


def test_register_encoder_from_s3_output(mlflow_server, s3_server, tmp_path) -> None:
    from flows.tracking.registry import register_encoder, resolve_model
    from storage import blobs

    output_uri = s3_server.make_bucket() + "/pretrain/run-1"
    contract = {"kind": "pgl-encoder", "format_version": 1, "datasets": {"ds": "cd" * 32},
                "spacing_mm": [1.0, 1.0, 2.0], "hu_window": [-1024.0, 325.0], "steps": 5}
    opts = s3_server.storage_options
    blobs.put_bytes_atomic(output_uri + "/encoder.pt", b"weights", storage_options=opts)
    blobs.put_bytes_atomic(output_uri + "/contract.json", json.dumps(contract).encode(), storage_options=opts)
    reg = register_encoder(output_uri, None, tracking_uri=mlflow_server.url, storage_options=opts)
    assert reg.name == "pgl-encoder" and reg.metric is None
    import mlflow

    client = mlflow.MlflowClient(mlflow_server.url, registry_uri=mlflow_server.url)
    version = client.get_model_version("pgl-encoder", reg.version)
    assert version.tags["pgl.dataset.ds.manifest_hash"] == "cd" * 32
    assert version.tags["pgl.lineage.output_uri"] == output_uri
    local = Path(resolve_model(f"models:/pgl-encoder/{reg.version}", cache_dir=tmp_path, tracking_uri=mlflow_server.url))
    assert (local / "encoder.pt").read_bytes() == b"weights"
    assert json.loads((local / "contract.json").read_text()) == contract
