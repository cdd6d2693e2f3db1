"""The pipeline flow end to end on tiny phantoms (embedded Prefect + embedded MLflow), its rerun
skipping every unchanged stage, a single-stage rerun picking up the champion encoder, and failure
isolation (one failed item does not stop the others; the run fails naming it)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from prefect import flow

from flows.stages.context import stage_context
from flows.stages.pipeline import PipelineFailed, finetune_grid, pipeline_flow
from flows.stages.finetune import finetune_flow
from tests.orchestration.conftest import TINY

pytestmark = [pytest.mark.flows, pytest.mark.slow]


@pytest.fixture(scope="module")
def first_run(raw_root: Path, tmp_path_factory, monkeypatch_module):
    base = tmp_path_factory.mktemp("pipe")
    paths = {"store": str(base / "store"), "output": str(base / "out"), "workdir": str(base / "work")}
    t0 = time.perf_counter()
    with stage_context(workdir=paths["workdir"]):
        summary = pipeline_flow(str(raw_root), paths["store"], paths["output"], preset="tiny", overrides=TINY,
                                inits=["pgl"], seeds=[0])
    return summary, paths, time.perf_counter() - t0


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    mp.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield mp
    mp.undo()


def _client(workdir: str):
    import mlflow

    uri = f"sqlite:///{Path(workdir).resolve() / 'mlflow' / 'mlflow.db'}"
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_pipeline_runs_every_stage_and_registers(first_run):
    summary, paths, seconds = first_run
    print(f"pipeline first run: {seconds:.1f} s")
    assert summary["datasets"] == ["PhantomPool", "PhantomSpleen"] and summary["labelled"] == ["PhantomSpleen"]
    pre = summary["pretrain"]["pgl"]
    assert pre["status"] == "done" and pre["encoder_uri"] == "models:/pgl-encoder/1"
    assert (Path(paths["output"]) / "pretrain-pgl" / "encoder.pt").is_file()
    [item] = summary["finetune"]
    assert item["status"] == "done" and item["init"] == "models:/pgl-encoder/1"
    model_dir = Path(paths["output"]) / "finetune" / "PhantomSpleen" / "pgl-seed0" / "model"
    assert (model_dir / "contract.json").is_file()
    assert 0.0 <= item["mean_dice"] <= 1.0 and item["registration"]["name"] == "pgl-seg-PhantomSpleen"
    results = json.loads((Path(paths["workdir"]) / "results.json").read_text())
    assert results["datasets"]["PhantomSpleen"]["pgl"]["n_seeds"] == 1
    # one class: the headline (learnable classes) is the overall mean Dice
    assert results["datasets"]["PhantomSpleen"]["pgl"]["mean_dice"] == pytest.approx(item["mean_dice"])
    assert set(results) >= {"gate", "datasets", "paired", "verdict"}
    client = _client(paths["workdir"])
    parent = client.get_run(summary["run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{summary['run_id']}'")
    assert {c.data.tags["pgl.stage"] for c in children} == {"pretrain", "finetune"}
    pre_run = [c for c in children if c.data.tags["pgl.stage"] == "pretrain"][0]
    assert [m.step for m in client.get_metric_history(pre_run.info.run_id, "loss")] == [1, 2, 3]
    ft_run = [c for c in children if c.data.tags["pgl.stage"] == "finetune"][0]
    evals = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{ft_run.info.run_id}'")
    assert [e.data.tags["pgl.stage"] for e in evals] == ["evaluate"]
    arts = {a.path for a in client.list_artifacts(evals[0].info.run_id, "overlays")}
    assert arts and all(p.endswith(".png") for p in arts)
    champion = client.get_model_version_by_alias("pgl-seg-PhantomSpleen", "champion")
    assert float(champion.tags["pgl.metric.mean_dice"]) == pytest.approx(item["mean_dice"])
    # datasets are run inputs; the evaluation's per-class metrics reach the finetune and evaluate runs
    inputs = {(i.dataset.name, {t.key: t.value for t in i.tags}["mlflow.data.context"])
              for i in pre_run.inputs.dataset_inputs}
    assert inputs == {("PhantomPool", "training"), ("PhantomSpleen", "training")}
    assert ft_run.data.metrics["test_dice/spleen"] == pytest.approx(item["per_class"]["spleen"])
    assert evals[0].data.metrics["test_mean_dice"] == pytest.approx(item["mean_dice"])
    contract = json.loads((model_dir / "contract.json").read_text())
    assert contract["lineage"]["pretraining"]["uri"] == "models:/pgl-encoder/1"
    assert contract["lineage"]["pretraining"]["run_id"] == pre_run.info.run_id
    assert "pgl predict --model models:/pgl-seg-PhantomSpleen/" in champion.description


def test_stage_runs_show_progress_results_and_their_mlflow_run(first_run):
    """Through the (embedded) Prefect API: the fine-tune's flow run holds its training progress and
    losses, the evaluation's per-class table and its MLflow run; the pipeline's run its results."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    summary, paths, _ = first_run
    [item] = summary["finetune"]
    with get_client(sync_client=True) as client:
        [ft] = client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(
            any_=["finetune-PhantomSpleen-pgl-seed0"])))
        found = {a.key: a for a in sorted(client.read_artifacts(), key=lambda a: a.created)
                 if a.flow_run_id == ft.id}
        pipeline = [a for a in client.read_artifacts() if a.key == "pipeline-results"]
    assert float(found["finetune-progress"].data) == 100.0 and "step 3/3" in found["finetune-progress"].description
    assert "loss" in found["finetune-training"].data
    table = found["evaluate-phantomspleen-eval-test"]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["class"] for r in rows] == [*item["per_class"], "overall"]
    assert rows[-1]["dice_mean"] == pytest.approx(item["mean_dice"], abs=1e-4)
    assert item["run_id"] in found["finetune-mlflow-run"].data
    assert _client(paths["workdir"]).get_run(item["run_id"]).data.tags["prefect.flow_run_id"] == str(ft.id)
    assert pipeline and "Dice" in pipeline[-1].data


def test_rerun_skips_unchanged_stages(first_run, raw_root: Path):
    summary, paths, first_seconds = first_run
    t0 = time.perf_counter()
    with stage_context(workdir=paths["workdir"]):
        again = pipeline_flow(str(raw_root), paths["store"], paths["output"], preset="tiny", overrides=TINY,
                              inits=["pgl"], seeds=[0])
    seconds = time.perf_counter() - t0
    print(f"pipeline rerun, nothing changed: {seconds:.1f} s (first run {first_seconds:.1f} s)")
    assert again["pretrain"]["pgl"]["status"] == "skipped"
    assert [i["status"] for i in again["finetune"]] == ["skipped"]
    assert again["results"] == summary["results"]
    assert seconds < first_seconds


def test_finetune_alone_resolves_the_champion_encoder(first_run):
    summary, paths, _ = first_run
    out = str(Path(paths["output"]) / "finetune" / "PhantomSpleen" / "pgl-seed0")
    # same output and the champion is the encoder the pipeline used: the same key, so skipped
    with stage_context(workdir=paths["workdir"]):
        res = finetune_flow(paths["store"], "PhantomSpleen", out, preset="tiny", overrides=TINY, seed=0)
    assert res["status"] == "skipped" and res["init"] == "models:/pgl-encoder/1"


def test_failures_are_isolated_and_named(first_run, raw_root: Path, tmp_path: Path):
    summary, paths, _ = first_run
    encoders = {"pgl": summary["pretrain"]["pgl"], "global": {"encoder_uri": str(tmp_path / "missing")}}

    @flow
    def grid() -> tuple[list, list]:
        failures: list[str] = []
        items = finetune_grid(paths["store"], ["PhantomSpleen"], ["pgl", "global"], [0], encoders,
                               paths["output"], None, {"preset": "tiny", "overrides": TINY}, 2, failures)
        return items, failures

    with stage_context(workdir=paths["workdir"]):
        items, failures = grid()
    assert [(i["init_name"], i["status"]) for i in items] == [("pgl", "skipped")]
    assert len(failures) == 1 and failures[0].startswith("finetune PhantomSpleen init global seed 0")
    with pytest.raises(PipelineFailed, match="preprocess NoSuchDataset"), stage_context(workdir=paths["workdir"]):
        pipeline_flow(str(raw_root), paths["store"], paths["output"],
                      datasets=["PhantomPool", "PhantomSpleen", "NoSuchDataset"], preset="tiny", overrides=TINY,
                      inits=["pgl"], seeds=[0])
