"""Credentials never reach an output: a planted secret is searched for in everything a full
pipeline run writes (console, store objects, run outputs, the Prefect database, the MLflow server's
database and artifacts), and a store URI carrying credentials is refused before any of it exists."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from phantoms import write_dataset

pytestmark = [pytest.mark.flows, pytest.mark.s3, pytest.mark.slow]

AWS_SECRET = "PLANTEDawsSECRETx0x1x2x3"
MLFLOW_PASSWORD = "PLANTEDmlflowPWx4x5x6"
TINY = ["train.steps=2", "train.log_every=1", "finetune.steps=2", "finetune.eval_every=2", "finetune.log_every=1",
        "views.patch_vox=[8,16,16]", "train.batch_size=2", "finetune.patch_vox=[8,32,32]", "finetune.batch_size=1"]


def _files_containing(root: Path, needle: str) -> list[str]:
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and needle.encode() in path.read_bytes():
            hits.append(str(path))
    return hits


def _objects_containing(client, bucket: str, needle: str) -> list[str]:
    hits = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            if needle.encode() in body or needle in obj["Key"]:
                hits.append(obj["Key"])
    return hits


def _pgl(args: list[str], env: dict[str, str], timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flows.cli", *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_a_store_uri_with_credentials_is_refused_before_anything_records_it(tmp_path, s3_server):
    raw = tmp_path / "raw"
    write_dataset(str(raw), "pool", 1, seed=0, shape_zyx=(8, 16, 16))
    env = {**os.environ, **s3_server.env, "PREFECT_HOME": str(tmp_path / "prefect")}
    env.pop("PREFECT_API_URL", None)
    store = s3_server.make_bucket().replace("s3://", f"s3://AKIAPLANTED:{AWS_SECRET}@") + "/store"
    proc = _pgl(["preprocess", "--input", str(raw / "PhantomPool"), "--dataset", "pool", "--store", store], env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert AWS_SECRET not in proc.stdout + proc.stderr
    assert "s3://***@" in proc.stderr and "AWS_SECRET_ACCESS_KEY" in proc.stderr
    assert not _files_containing(tmp_path, AWS_SECRET)


def test_a_full_pipeline_run_writes_no_planted_secret_anywhere(tmp_path, s3_server, mlflow_server):
    raw = tmp_path / "raw"
    write_dataset(str(raw), "pool", 2, seed=1, shape_zyx=(16, 32, 32))
    write_dataset(str(raw), "spleen", 4, seed=2, shape_zyx=(16, 32, 32))
    bucket = s3_server.make_bucket("pgl-secrets").removeprefix("s3://")
    tracking = mlflow_server.url.replace("http://", f"http://pgluser:{MLFLOW_PASSWORD}@")
    env = {**os.environ, **s3_server.env, "AWS_SECRET_ACCESS_KEY": AWS_SECRET, "MLFLOW_TRACKING_URI": tracking}
    env.pop("PREFECT_API_URL", None)
    env.pop("PREFECT_HOME", None)  # the work folder holds the Prefect database: searched below
    args = ["pipeline", "--input", str(raw), "--store", f"s3://{bucket}/store", "--output", str(tmp_path / "out"),
            "--workdir", str(tmp_path / "work"), "--preset", "tiny", "--device", "cpu", "--parallel", "1",
            "--set", "preprocess.target_spacing_mm=[6,6,6]", *[a for s in TINY for a in ("--set", s)]]
    proc = _pgl(args, env)
    console = proc.stdout + proc.stderr
    assert proc.returncode == 0, console[-3000:]
    for secret in (AWS_SECRET, MLFLOW_PASSWORD):
        assert secret not in console
        assert not _files_containing(tmp_path, secret), secret
        assert not _files_containing(mlflow_server.log_path.parent, secret), secret
        for name in (bucket, mlflow_server.artifacts_destination.split("/")[2]):
            assert not _objects_containing(s3_server.client(), name, secret), (secret, name)
    # the run did reach the server: its stages are there
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=mlflow_server.url)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()],
                              filter_string="tags.`pgl.stage` = 'finetune'")
    assert runs
