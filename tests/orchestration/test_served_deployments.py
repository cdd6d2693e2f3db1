"""``pgl serve`` against a real Prefect server on loopback: a stage's deployment triggered through
the client exactly as the UI does runs only that stage, to Completed, and writes its outputs; its
run page shows logs, progress and a result (read back through the API), links to its MLflow run
(and back); the deployment forms have no internal parameters and no "type None" toggles."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flows.serve import start_local_server, stop_process

pytestmark = [pytest.mark.flows, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[2]
SMALL = ["views.patch_vox=[8,16,16]", "train.batch_size=2", "train.log_every=1", "train.steps=2"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    home = tmp_path_factory.mktemp("prefect-server")
    t0 = time.perf_counter()
    proc, api = start_local_server(home, port=_free_port())
    print(f"prefect server healthy after {time.perf_counter() - t0:.1f} s")
    yield api
    stop_process(proc, timeout_s=20)


@pytest.fixture(scope="module")
def serve_workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve-work")


@pytest.fixture(scope="module")
def served(prefect_api, serve_workdir, tmp_path_factory):
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_URI")}  # the runs use --workdir's
    env = dict(env, PREFECT_API_URL=prefect_api, PREFECT_RUNNER_POLL_FREQUENCY="1",
               PREFECT_HOME=str(tmp_path_factory.mktemp("serve-home")), PYTHONPATH=str(REPO),
               PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="true", PGL_PROGRESS="0")
    log = tmp_path_factory.mktemp("serve-log") / "serve.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "serve", "--workdir", str(serve_workdir)],
                                env=env, stdout=fh,
                                stderr=subprocess.STDOUT, cwd=str(REPO))
    yield proc, log
    t0 = time.perf_counter()
    code = stop_process(proc, timeout_s=20)  # serve first, then the server (fixture order)
    print(f"pgl serve stopped in {time.perf_counter() - t0:.1f} s with status {code}")


def _wait_for_deployments(api: str, names: list[str], timeout_s: float = 120) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    deadline = time.monotonic() + timeout_s
    with temporary_settings({PREFECT_API_URL: api}):
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                found = {f"{d.name}/{d.name}" for d in client.read_deployments()}
                if set(names) <= found:
                    return
                time.sleep(1)
    raise TimeoutError(f"deployments {names} not registered within {timeout_s} s")


def test_served_pretrain_deployment_runs_only_that_stage(prefect_api, served, serve_workdir, synthetic_store,
                                                        tmp_path):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    proc, log = served
    names = ["preprocess/preprocess", "pretrain/pretrain", "finetune/finetune", "evaluate/evaluate",
             "pipeline/pipeline"]
    _wait_for_deployments(prefect_api, names)
    assert proc.poll() is None, log.read_text()[-3000:]
    out = tmp_path / "pretrain"
    params = {"store": synthetic_store, "datasets": ["dsa", "dsb"], "output": str(out), "preset": "tiny",
              "overrides": SMALL, "device": "cpu"}
    t0 = time.perf_counter()
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        run = run_deployment("pretrain/pretrain", parameters=params, timeout=300, poll_interval=1)
    print(f"served pretrain deployment: {time.perf_counter() - t0:.1f} s from trigger to {run.state.name}")
    assert run.state.is_completed(), (run.state.message, log.read_text()[-3000:])
    assert (out / "encoder.pt").is_file() and (out / "stage.json").is_file()
    assert not (tmp_path / "finetune").exists()
    # the run's page shows its logs: read back through the API, INFO included (logs are shipped in
    # batches, so the last ones may land a moment after the state)
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    deadline, messages = time.monotonic() + 30, []
    while time.monotonic() < deadline and not any("pretrain ->" in m and "done" in m for m in messages):
        time.sleep(1)
        with temporary_settings({PREFECT_API_URL: prefect_api}):
            with get_client(sync_client=True) as client:
                logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        messages = [entry.message for entry in logs if entry.level == 20]
    assert any("pretrain ->" in m and "done" in m for m in messages), messages
    assert any("pretraining completed at step 2/2" in m for m in messages)  # the training's own output

    found = _artifacts(prefect_api, run.id)
    assert found["pretrain-progress"].type == "progress" and float(found["pretrain-progress"].data) == 100.0
    assert "step 2/2" in found["pretrain-progress"].description
    training = found["pretrain-training"]
    assert training.type == "markdown" and "| step |" in training.data and "loss" in training.data
    # the two UIs point at each other: the flow run names its MLflow run, which names the flow run
    link = found["pretrain-mlflow-run"]
    mlflow_run = _mlflow_run(serve_workdir, link.data)
    assert mlflow_run.data.tags["prefect.flow_run_id"] == str(run.id)
    url = mlflow_run.data.tags["prefect.flow_run_url"]  # the page of this run in the server's own UI
    assert url.startswith(prefect_api.removesuffix("/api")) and url.endswith(f"/flow-run/{run.id}"), url
    assert mlflow_run.data.tags["pgl.output"] == str(out)


def _artifacts(api: str, flow_run_id) -> dict:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api}):
        with get_client(sync_client=True) as client:
            found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(
                any_=[flow_run_id])))
    latest = {}
    for art in sorted(found, key=lambda a: a.created):
        latest[art.key] = art
    return latest


def _mlflow_run(workdir: Path, text: str):
    import re

    import mlflow

    run_id = re.search(r"MLflow run `([0-9a-f]+)`", text).group(1)
    uri = f"sqlite:///{workdir.resolve() / 'mlflow' / 'mlflow.db'}"
    assert uri in text  # where it is, and the command that opens it
    return mlflow.MlflowClient(tracking_uri=uri).get_run(run_id)


def test_served_preprocess_run_shows_progress_and_a_table_of_cases(prefect_api, served, raw_root, tmp_path):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    proc, log = served
    _wait_for_deployments(prefect_api, ["preprocess/preprocess"])
    raw = tmp_path / "raw"
    shutil.copytree(raw_root / "PhantomSpleen", raw)
    (raw / "imagesTr" / "broken_case.nii.gz").write_bytes(b"not a volume")
    (raw / "labelsTr" / "broken_case.nii.gz").write_bytes(b"not a volume")
    params = {"input": str(raw), "dataset": "spleen", "store": str(tmp_path / "store"),
              "overrides": ["preprocess.zstd_level=2"]}
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        run = run_deployment("preprocess/preprocess", parameters=params, timeout=300, poll_interval=1)
    assert run.state.is_completed(), (run.state.message, log.read_text()[-3000:])
    found = _artifacts(prefect_api, run.id)
    progress = found["preprocess-spleen-progress"]
    assert float(progress.data) == 100.0 and "5/5 cases: 4 done" in progress.description
    rows = found["preprocess-spleen"].data
    rows = json.loads(rows) if isinstance(rows, str) else rows
    by_status = {}
    for row in rows:
        by_status.setdefault(row["status"], []).append(row)
    assert len(by_status["done"]) == 4 and len(by_status["failed"]) == 1
    assert "broken_case" in by_status["failed"][0]["case"] and by_status["failed"][0]["reason"]
    assert "4 done, 0 skipped (unchanged), 1 failed" in found["preprocess-spleen"].description
    # the config convention: overrides reached the plan
    attrs = json.loads((tmp_path / "store" / "spleen" / "zarr.json").read_text())["attributes"]
    assert attrs["pgl_dataset"]["plan"]["zstd_level"] == 2


def test_deployment_forms_hide_internals_and_show_optional_fields_plainly(prefect_api, served):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    _wait_for_deployments(prefect_api, ["pretrain/pretrain", "pipeline/pipeline"])
    with temporary_settings({PREFECT_API_URL: prefect_api}):
        with get_client(sync_client=True) as client:
            schemas = {d.name: d.parameter_openapi_schema for d in client.read_deployments()}
    assert set(schemas) == {"preprocess", "pretrain", "finetune", "evaluate", "pipeline"}
    for name, schema in schemas.items():
        props = schema["properties"]
        assert not {"workdir", "parent_run_id"} & set(props), name
        for field, spec in props.items():
            assert "anyOf" not in spec, (name, field, spec)  # Prefect's form shows it as a type toggle
            assert spec.get("description"), (name, field)
        if name != "evaluate":  # one configuration convention: a YAML file plus overrides
            assert props["config"]["type"] == "string" and props["overrides"]["type"] == "array", name
    assert schemas["pretrain"]["properties"]["device"]["enum"] == ["cpu", "cuda"]


def test_the_ui_of_a_server_started_on_another_port_points_at_that_port(prefect_api):
    import json
    import urllib.request

    root = prefect_api.removesuffix("/api")
    with urllib.request.urlopen(f"{root}/ui-settings", timeout=10) as resp:
        settings = json.loads(resp.read())
    assert settings["api_url"] == prefect_api and not prefect_api.endswith(":4200/api")
