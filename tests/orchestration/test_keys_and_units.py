"""Stage keys, stage.json markers, worker picking, results tables, schedules and the CLI parsers
(fast: no flow runs, no subprocesses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flows.launch import pick_workers, train_argv, worker_host
from flows.serve import DEPLOYMENT_FLOWS, build_deployments, load_schedules
from flows.stages.keys import config_sections, read_marker, resolve_config, stage_key, unchanged, write_marker
from flows.stages.pipeline import discover_inputs
from flows.stages.results import summarise_results
from flows.stages.finetune import FINETUNE_SECTIONS, finetune_key
from flows.stages.pretrain import PRETRAIN_SECTIONS, pretrain_key


def test_pretrain_key_depends_on_its_sections_and_manifests_only():
    base = resolve_config("tiny")
    key = pretrain_key(base, {"a": "h1", "b": "h2"})
    assert key == pretrain_key(resolve_config("tiny"), {"b": "h2", "a": "h1"})  # order-free
    assert key != pretrain_key(resolve_config("tiny", overrides=["train.steps=7"]), {"a": "h1", "b": "h2"})
    assert key != pretrain_key(base, {"a": "h1", "b": "h3"})
    assert key != pretrain_key(base, {"a": "h1"})
    # fine-tuning settings do not decide pretraining
    assert key == pretrain_key(resolve_config("tiny", overrides=["finetune.steps=7"]), {"a": "h1", "b": "h2"})
    assert set(config_sections(base, PRETRAIN_SECTIONS)) == set(PRETRAIN_SECTIONS)


def test_finetune_key_depends_on_init_contract_labels_and_its_sections():
    cfg = resolve_config("tiny")
    key = finetune_key(cfg, {"ds": "m"}, "init1", None, True, "test")
    assert key != finetune_key(cfg, {"ds": "m"}, "init2", None, True, "test")
    assert key != finetune_key(cfg, {"ds": "m"}, "init1", 2.0, True, "test")
    assert key != finetune_key(resolve_config("tiny", overrides=["finetune.seed=1"]), {"ds": "m"}, "init1",
                               None, True, "test")
    assert key == finetune_key(resolve_config("tiny", overrides=["train.steps=9"]), {"ds": "m"}, "init1",
                               None, True, "test")
    assert "train" not in FINETUNE_SECTIONS


def test_marker_round_trip_and_unchanged_needs_key_and_outputs(tmp_path: Path):
    out = str(tmp_path / "stage")
    assert read_marker(out) is None and unchanged(out, "k", []) is None
    write_marker(out, "k1", {"value": 3})
    assert json.loads((tmp_path / "stage" / "stage.json").read_text())["key"] == "k1"
    assert unchanged(out, "k1", []) == {"value": 3}
    assert unchanged(out, "k2", []) is None
    assert unchanged(out, "k1", ["encoder.pt"]) is None  # outputs gone -> not unchanged
    (tmp_path / "stage" / "encoder.pt").write_bytes(b"x")
    assert unchanged(out, "k1", ["encoder.pt"]) == {"value": 3}
    assert stage_key("s", {}, {}) != stage_key("t", {}, {})


def test_train_argv_passes_flags_and_the_full_config():
    argv = train_argv({"store": "s3://b/store", "datasets": "a,b", "device": None}, "/tmp/c.yaml")
    assert argv == ["--store", "s3://b/store", "--datasets", "a,b", "--preset", "paper", "--config", "/tmp/c.yaml"]


def test_pick_workers_prefers_gpu_tags_and_distinct_hosts():
    workers = {"tcp://10.0.0.1:4001": {"resources": {"GPU": 4}}, "tcp://10.0.0.1:4002": {"resources": {"GPU": 4}},
               "tcp://10.0.0.2:4001": {"resources": {"GPU": 4}}, "tcp://10.0.0.3:4001": {"resources": {}}}
    assert pick_workers(workers, 2) == ["tcp://10.0.0.1:4001", "tcp://10.0.0.2:4001"]
    assert pick_workers(workers, 3)[2] == "tcp://10.0.0.1:4002"  # same host only after distinct ones
    with pytest.raises(ValueError, match="need 4 Dask workers.*3 with resource 'GPU'"):
        pick_workers(workers, 4)
    plain = {"tcp://[::1]:5001": {}, "tcp://node-b:5001": {"resources": None}}
    assert sorted(worker_host(a) for a in pick_workers(plain, 2)) == ["::1", "node-b"]


def test_results_table_mean_std_over_seeds():
    items = [{"dataset": "A", "init_name": "pgl", "seed": s, "mean_dice": d} for s, d in ((0, 0.5), (1, 0.7))]
    items += [{"dataset": "A", "init_name": "random", "seed": 0, "mean_dice": 0.2},
              {"dataset": "B", "init_name": "pgl", "seed": 0, "mean_dice": None}]
    table = summarise_results(items)
    assert set(table) == {"A"}
    pgl = table["A"]["pgl"]
    assert pgl["n_seeds"] == 2 and pgl["mean_dice"] == pytest.approx(0.6) and pgl["std_dice"] == pytest.approx(0.1)
    assert pgl["dice_per_seed"] == {"0": 0.5, "1": 0.7} and table["A"]["random"]["std_dice"] == 0.0


def test_discover_inputs(tmp_path: Path):
    (tmp_path / "B").mkdir()
    (tmp_path / "A").mkdir()
    (tmp_path / ".hidden").mkdir()
    assert discover_inputs(str(tmp_path), None) == ["A", "B"]
    assert discover_inputs("s3://bucket/raw", ["X"]) == ["X"]
    with pytest.raises(ValueError, match="give `datasets`"):
        discover_inputs("s3://bucket/raw", None)


def test_schedules_file_and_deployments(tmp_path: Path):
    good = tmp_path / "s.yaml"
    good.write_text("deployments:\n  pipeline:\n    cron: '0 2 * * *'\n    parameters: {input: /raw, store: /s, output: /o}\n")
    entries = load_schedules(good)
    deps = build_deployments(entries)
    assert [d.name for d in deps] == list(DEPLOYMENT_FLOWS)
    assert [d.flow_name for d in deps] == list(DEPLOYMENT_FLOWS)
    pipe = deps[-1]
    assert pipe.parameters == {"input": "/raw", "store": "/s", "output": "/o"}
    assert pipe.schedules and pipe.schedules[0].schedule.cron == "0 2 * * *"
    props = pipe._parameter_openapi_schema.properties
    assert props["inits"]["default"] == ["pgl"] and "Initialisations" in props["inits"]["description"]
    pre = [d for d in deps if d.name == "pretrain"][0]._parameter_openapi_schema
    assert {"store", "datasets", "output"} <= set(pre.required)
    bad = tmp_path / "bad.yaml"
    bad.write_text("deployments:\n  pipeline:\n    crn: x\n")
    with pytest.raises(ValueError, match="unknown key.*crn"):
        load_schedules(bad)


def test_cli_parses_pipeline_and_serve():
    from flows.cli import build_parser
    from flows.cli.ops import cmd_pipeline, cmd_serve

    args = build_parser().parse_args(["pipeline", "--input", "raw", "--store", "st", "--output", "out",
                                      "--inits", "pgl,random", "--seeds", "0,1,2", "--set", "train.steps=2"])
    assert args.inits == ["pgl", "random"] and args.seeds == [0, 1, 2] and args.overrides == ["train.steps=2"]
    assert args.handler is cmd_pipeline
    args = build_parser().parse_args(["serve", "--only", "pretrain,pipeline"])
    assert args.only == ["pretrain", "pipeline"] and args.handler is cmd_serve


def test_deploy_files_match_the_flows():
    import yaml

    from pgl_core.config import load_config

    repo = Path(__file__).resolve().parents[2]
    spec = yaml.safe_load((repo / "deploy" / "prefect.yaml").read_text())
    names = [d["name"] for d in spec["deployments"]]
    assert names == list(DEPLOYMENT_FLOWS)
    for dep in spec["deployments"]:
        path, func = dep["entrypoint"].split(":")
        module = path.removesuffix(".py").replace("/", ".")
        assert DEPLOYMENT_FLOWS[dep["name"]] == f"{module}:{func}"
        assert (repo / path).is_file()
    for name, preset in (("smoke", "tiny"), ("demo", "tiny"), ("paper", "paper")):
        load_config(repo / "deploy" / "configs" / f"{name}.yaml", preset=preset)
