"""Store datasets as MLflow run inputs on the embedded sqlite store: digest = manifest hash, source =
store URI + dataset (absolute, credentials redacted), the context, and sources MLflow can parse."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from storage.manifest import manifest_hash

pytestmark = pytest.mark.slow

SECRET = "PLANTEDsecretX9"


def _manifest(n_labelled: int, n_unlabelled: int = 0, plan: str = "p1") -> dict:
    cases = {f"l{i}": {"status": "done", "plan_hash": plan, "source_checksum": f"l{i}", "labelled": True}
             for i in range(n_labelled)}
    cases.update({f"u{i}": {"status": "done", "plan_hash": plan, "source_checksum": f"u{i}"}
                  for i in range(n_unlabelled)})
    cases["bad"] = {"status": "failed", "plan_hash": plan}
    return {"plan_hash": plan, "cases": cases}


@pytest.fixture
def sink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from flows.tracking.mlflow_run import start_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    run = start_run(tmp_path / "work", "pretrain")
    assert run.online
    yield run
    run.close()


def _inputs(sink) -> dict:
    run = sink._link.client.get_run(sink.run_id)
    return {i.dataset.name: i for i in run.inputs.dataset_inputs}


def test_each_dataset_is_an_input_with_its_manifest_hash(sink, tmp_path: Path, monkeypatch) -> None:
    import mlflow.data

    from flows.tracking.inputs import profile_of

    monkeypatch.chdir(tmp_path)
    manifests = {"pool": _manifest(0, 3), "spleen": _manifest(2, 1)}
    sink.log_manifests(manifests, "store", "training")  # a relative local store
    inputs = _inputs(sink)
    assert set(inputs) == {"pool", "spleen"}
    for name, manifest in manifests.items():
        entry, digest = inputs[name], manifest_hash(manifest)
        assert entry.dataset.digest == digest[:32]
        tags = {t.key: t.value for t in entry.tags}
        assert tags == {"mlflow.data.context": "training", "pgl.manifest_hash": digest}
        assert entry.dataset.source_type == "local"
        source = mlflow.data.get_source(entry)  # MLflow parses what was logged
        assert source.uri == os.path.join(str(tmp_path), "store", name)
        assert profile_of(entry)["manifest_hash"] == digest
    assert profile_of(inputs["spleen"])["cases_done"] == 3 and profile_of(inputs["spleen"])["cases_labelled"] == 2
    # params and tags of the hashes as before
    run = sink._link.client.get_run(sink.run_id)
    assert run.data.params["dataset.pool.manifest_hash"] == manifest_hash(manifests["pool"])


def test_object_store_sources_are_redacted_and_unknown_schemes_still_log(sink, tmp_path: Path) -> None:
    sink.log_inputs(f"s3://AKIAX:{SECRET}@bucket/store", {"ds": _manifest(1)}, "evaluation")
    sink.log_inputs("memory://scratch/store", {"mem": _manifest(1)}, "evaluation")
    inputs = _inputs(sink)
    assert inputs["ds"].dataset.source_type == "s3"
    assert SECRET not in inputs["ds"].dataset.source and "s3://***@bucket/store/ds" in inputs["ds"].dataset.source
    assert {t.key: t.value for t in inputs["ds"].tags}["mlflow.data.context"] == "evaluation"
    assert inputs["mem"].dataset.source_type == "pgl-store"
    assert "memory://scratch/store/mem" in inputs["mem"].dataset.source
    db = tmp_path / "work" / "mlflow" / "mlflow.db"
    assert db.is_file() and SECRET.encode() not in db.read_bytes()
