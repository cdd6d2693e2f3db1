"""The MLflow sink on the embedded default (sqlite DB + local artifact folder under a work dir)."""

from __future__ import annotations

import importlib.metadata
import os
import json
from pathlib import Path

import pytest

from pgl_core.config import config_to_dict, flatten, load_config
from pgl_core.sinks import MetricsSink, read_jsonl


@pytest.fixture
def no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)


@pytest.mark.slow
def test_parent_and_stage_runs_land_in_the_workdir_sqlite(tmp_path: Path, no_server) -> None:
    from flows.tracking import mlflow_run as tracking

    cfg = config_to_dict(load_config(preset="tiny"))
    manifest = {"plan_hash": "p1", "cases": {"c0": {"status": "done", "plan_hash": "p1",
                                                    "source_checksum": "x"}}}
    parent = tracking.start_run(tmp_path / "work", "pipeline-1", config=cfg, manifests={"ds": manifest})
    assert parent.online and parent.tracking_uri == f"sqlite:///{(tmp_path / 'work/mlflow/mlflow.db').resolve()}"
    out = tmp_path / "out" / "pretrain"
    child = parent.stage("pretrain", str(out))
    assert isinstance(child, MetricsSink)
    child.log_params({"world_size": 1, "train.steps": 3})
    for step in (1, 2, 3):
        child.log_metrics(step, {"loss": 1.0 / step, "loss_local": 0.5 / step, "lr": 1e-3})
    overlay = tmp_path / "overlay.png"
    overlay.write_bytes(b"\x89PNG fake")
    child.log_artifacts([overlay], "overlays")
    child.log_table([{"case": "c0", "dice": 0.8}, {"case": "c1", "dice": 0.6}], "per_case")
    child.close()
    child.close()  # the protocol allows closing twice
    parent.close()

    client = parent._link.client
    prun, crun = client.get_run(parent.run_id), client.get_run(child.run_id)
    flat = flatten(cfg)
    assert prun.data.params["train.steps"] == json.dumps(flat["train.steps"])
    assert prun.data.params["views.patch_vox"] == json.dumps(flat["views.patch_vox"])
    assert len([k for k in prun.data.params if not k.startswith("dataset.")]) == len(flat)
    assert prun.data.tags["pgl.stage"] == "pipeline" and "pgl.python" in prun.data.tags
    assert prun.data.tags["pgl.torch"] == importlib.metadata.version("torch")
    assert prun.data.tags.get("pgl.git_commit") == tracking.git_commit()
    assert prun.data.params["dataset.ds.manifest_hash"] == prun.data.tags["pgl.dataset.ds.manifest_hash"]
    assert crun.data.tags["mlflow.parentRunId"] == parent.run_id
    assert crun.data.tags["pgl.stage"] == "pretrain"
    assert crun.info.status == "FINISHED" and prun.info.status == "FINISHED"
    history = client.get_metric_history(child.run_id, "loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.0), (2, 0.5), (3, pytest.approx(1 / 3))]

    art_root = Path(crun.info.artifact_uri.removeprefix("file://"))
    assert str(art_root).startswith(str((tmp_path / "work/mlflow/artifacts").resolve()))
    png = art_root / "plots" / "loss_curves.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and png.stat().st_size > 2000
    assert (art_root / "overlays" / "overlay.png").read_bytes() == b"\x89PNG fake"
    assert (art_root / "eval" / "per_case.csv").read_text().splitlines() == ["case,dice", "c0,0.8", "c1,0.6"]
    parent_art = Path(prun.info.artifact_uri.removeprefix("file://"))
    assert json.loads((parent_art / "config" / "config.json").read_text()) == cfg
    assert (parent_art / "config" / "config.yaml").is_file()
    assert json.loads((parent_art / "manifests" / "ds.json").read_text()) == manifest

    records = read_jsonl(out / "metrics.jsonl")  # the local record is kept online too
    assert [r["step"] for r in records if r["kind"] == "metrics"] == [1, 2, 3]


@pytest.mark.slow
def test_embedded_registry_and_resolve(tmp_path: Path, no_server, capfd) -> None:
    from flows.tracking import mlflow_run as tracking
    from flows.tracking import registry
    from tests.tracking.standins import make_model_dir

    parent = tracking.start_run(tmp_path / "work", "pipeline")
    stage = parent.stage("finetune")
    reg = registry.register_segmenter(make_model_dir(tmp_path / "m", threshold_hu=42.0), "demo", stage.run_id,
                                      {"mean_dice": 0.5}, tracking_uri=parent.tracking_uri)
    stage.close()
    parent.close()
    assert (reg.name, reg.version, reg.champion_moved) == ("pgl-seg-demo", "1", True)
    printed = capfd.readouterr()
    assert "registered model" not in printed.out + printed.err and "Created version" not in printed.err  # ours
    assert "there was none" in reg.decision
    cache = tmp_path / "cache"
    by_alias = registry.resolve_model("models:/pgl-seg-demo@champion", cache, parent.tracking_uri)
    assert json.loads((Path(by_alias) / "contract.json").read_text())["threshold_hu"] == 42.0
    by_run = registry.resolve_model(f"runs:/{stage.run_id}/model", cache, parent.tracking_uri)
    assert (Path(by_run) / "model.pt").read_bytes() == (Path(by_alias) / "model.pt").read_bytes()
    assert str((tmp_path / "work/mlflow/artifacts").resolve()) in \
        stage._link.client.get_run(stage.run_id).info.artifact_uri


def test_a_registry_call_leaves_the_next_stage_its_own_work_folder(tmp_path: Path, no_server) -> None:
    """MLflow's URI setters export MLFLOW_TRACKING_URI; the registry adapter must not leave it
    behind, or every later stage of the process would record into the first one's folder."""
    from flows.tracking import mlflow_run as tracking
    from flows.tracking import registry

    first = tracking.tracking_uri(tmp_path / "a")
    registry.registered_models(tracking_uri=first)
    assert "MLFLOW_TRACKING_URI" not in os.environ
    assert tracking.tracking_uri(tmp_path / "b") == f"sqlite:///{(tmp_path / 'b' / 'mlflow' / 'mlflow.db').resolve()}"
