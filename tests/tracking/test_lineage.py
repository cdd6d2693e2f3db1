"""Registry lineage and run metrics of a fine-tune from a registered encoder (embedded sqlite store,
the finetune flow as users run it): the segmenter points at the encoder version the alias named and
at its run, never at the local model cache; both versions are described; the fine-tuning run
carries the test metrics and its dataset as an input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from storage.store import DatasetStore
from tests.finetune.conftest import FAST, make_store, tiny_cfg, write_pretrain_output

pytestmark = [pytest.mark.slow, pytest.mark.flows]
STEPS = ["finetune.steps=2", "finetune.eval_every=2"]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    from flows.stages.context import stage_context
    from flows.stages.finetune import finetune_flow
    from flows.tracking.mlflow_run import start_run
    from flows.tracking.registry import register_encoder

    base = tmp_path_factory.mktemp("lineage")
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        store = make_store(str(base / "store"), "kits", n_cases=4)
        workdir = str(base / "work")
        pre_out = write_pretrain_output(str(base / "pretrain"), store, "kits", tiny_cfg())
        with start_run(workdir, "pretrain") as pre:
            encoder = register_encoder(pre_out, pre.run_id, tracking_uri=pre.tracking_uri)
        out = str(base / "finetune")
        with stage_context(workdir=workdir):
            result = finetune_flow(store, "kits", out, init="models:/pgl-encoder@champion", preset="tiny",
                                   overrides=[*FAST, *STEPS], threads=1, device="cpu")
    finally:
        mp.undo()
    return {"store": store, "workdir": workdir, "pre_run": pre.run_id, "encoder": encoder, "result": result,
            "uri": pre.tracking_uri, "out": out}


def _client(uri: str):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_the_segmenter_points_at_the_encoder_version_and_its_run(finetuned) -> None:
    res, pre_run = finetuned["result"], finetuned["pre_run"]
    assert res["status"] == "done" and finetuned["encoder"].version == "1"
    text = (Path(res["model_dir"]) / "contract.json").read_text()
    contract = json.loads(text)
    assert contract["init"] == "models:/pgl-encoder/1"
    assert contract["lineage"]["pretraining"]["uri"] == "models:/pgl-encoder/1"
    assert contract["lineage"]["pretraining"]["run_id"] == pre_run
    assert "model-cache" not in text and finetuned["workdir"] not in text
    version = _client(finetuned["uri"]).get_model_version("pgl-seg-kits", res["registration"]["version"])
    assert version.tags["pgl.lineage.init"] == "models:/pgl-encoder/1"
    assert version.tags["pgl.lineage.init_run"] == pre_run
    assert json.loads(version.tags["pgl.lineage.pretraining"])["run_id"] == pre_run
    run = _client(finetuned["uri"]).get_run(res["run_id"])
    assert run.data.params["init"] == "models:/pgl-encoder@champion"
    assert run.data.params["init_model"] == "models:/pgl-encoder/1"


def test_versions_carry_descriptions(finetuned) -> None:
    res = finetuned["result"]
    digest = DatasetStore(finetuned["store"], "kits").manifest_hash()
    client = _client(finetuned["uri"])
    seg = client.get_model_version("pgl-seg-kits", res["registration"]["version"]).description
    n = res["registration"]["version"]
    assert "PGL segmenter for **kits**" in seg and "kidney" in seg
    assert f"kits (manifest {digest[:12]})" in seg
    assert "`models:/pgl-encoder/1`" in seg and finetuned["pre_run"] in seg
    assert "fine-tuning steps: 2" in seg and f"test mean Dice: {res['mean_dice']:.3f}" in seg
    assert f"pgl predict --model models:/pgl-seg-kits/{n} " in seg
    enc = client.get_model_version("pgl-encoder", "1").description
    assert f"kits (manifest {digest[:12]})" in enc and "steps: 0" in enc
    assert "pgl finetune --init models:/pgl-encoder/1 " in enc


def test_the_finetune_run_carries_the_test_metrics_and_its_dataset(finetuned) -> None:
    res = finetuned["result"]
    client = _client(finetuned["uri"])
    run = client.get_run(res["run_id"])
    evaluation = res["evaluation"]
    assert evaluation["metrics"]["test_mean_dice"] == pytest.approx(res["mean_dice"])
    for name, dice in evaluation["per_class"].items():
        assert run.data.metrics[f"test_dice/{name}"] == pytest.approx(dice)
    head = {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}
    assert head == pytest.approx(evaluation["metrics"])
    assert [m.step for m in client.get_metric_history(res["run_id"], "test_mean_dice")] == [2]
    eval_run = client.get_run(evaluation["run_id"])
    assert {k: v for k, v in eval_run.data.metrics.items() if k.startswith("test_")} == pytest.approx(head)
    assert eval_run.data.params["model"] == res["model_dir"] and "model_version" not in eval_run.data.params
    digest = DatasetStore(finetuned["store"], "kits").manifest_hash()
    for r, context in ((run, "training"), (eval_run, "evaluation")):
        [entry] = r.inputs.dataset_inputs
        assert (entry.dataset.name, entry.dataset.digest) == ("kits", digest[:32])
        assert {t.key: t.value for t in entry.tags}["mlflow.data.context"] == context
        assert json.loads(entry.dataset.source)["uri"] == str(Path(finetuned["store"]).resolve() / "kits")


def test_an_alias_is_pinned_to_the_version_it_names_now(finetuned, tmp_path, monkeypatch) -> None:
    from flows.tracking.mlflow_run import start_run
    from flows.tracking.registry import ModelPin, pin_model, register_encoder, resolve_pinned

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = finetuned["uri"]
    with start_run(finetuned["workdir"], "pretrain") as pre:  # artifacts under the work folder
        second = register_encoder(str(Path(finetuned["out"]).parent / "pretrain"), pre.run_id, tracking_uri=uri)
    assert second.version == "2" and second.run_id == pre.run_id
    _client(uri).set_registered_model_alias("pgl-encoder", "champion", second.version)
    assert pin_model("models:/pgl-encoder@champion", uri) == ModelPin(
        uri="models:/pgl-encoder/2", run_id=pre.run_id, name="pgl-encoder", version="2")
    local, pin = resolve_pinned("models:/pgl-encoder@champion", tmp_path / "cache", uri)
    assert pin.uri == "models:/pgl-encoder/2" and (Path(local) / "encoder.pt").is_file()
    assert pin_model("runs:/abc123/model").run_id == "abc123"
    with pytest.raises(LookupError, match="has no version 99"):
        pin_model("models:/pgl-encoder/99", uri)
