"""Checkpoints: atomic layout, integrity check (corrupt / truncated / incomplete -> previous), retention,
RNG capture; the metrics sink; the output contract."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from pgl_core import checkpoint as ckpt
from pgl_core.config import config_to_dict, load_config
from pgl_core.contracts import PretrainContract, load_encoder_state
from pgl_core.sinks import JsonlSink, MultiSink, read_jsonl
from storage import blobs


def _state(step: int) -> dict:
    return {"step": step, "w": torch.full((3,), float(step))}


def _write_three(out: str) -> None:
    for s in (10, 20, 30):
        ckpt.save_checkpoint(out, s, _state(s))


def test_save_and_load_latest(tmp_path):
    out = str(tmp_path / "run")
    _write_three(out)
    state, uri = ckpt.load_latest(out)
    assert state["step"] == 30 and uri.endswith("checkpoints/step_00000030.pt")
    assert torch.equal(state["w"], torch.full((3,), 30.0))
    assert [s for s, _ in ckpt.list_checkpoints(out)] == [10, 20, 30]
    assert ckpt.load_latest(str(tmp_path / "empty")) is None


@pytest.mark.parametrize("damage", ["truncate", "flip", "no_sidecar", "garbage_sidecar"])
def test_damaged_latest_falls_back_to_previous(tmp_path, damage):
    out = str(tmp_path / "run")
    _write_three(out)
    latest = Path(ckpt.checkpoint_uri(out, 30))
    data = latest.read_bytes()
    if damage == "truncate":
        latest.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        latest.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif damage == "no_sidecar":
        Path(str(latest) + ".sha256").unlink()
    else:
        Path(str(latest) + ".sha256").write_text("{not json")
    with pytest.raises(ValueError, match="step_00000030"):
        ckpt.read_verified(str(latest))
    state, uri = ckpt.load_latest(out)
    assert state["step"] == 20 and uri.endswith("step_00000020.pt")


def test_keep_last_k(tmp_path):
    out = str(tmp_path / "run")
    for s in range(1, 6):
        ckpt.save_checkpoint(out, s, _state(s), keep=2)
    names = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert names == ["step_00000004.pt", "step_00000004.pt.sha256", "step_00000005.pt", "step_00000005.pt.sha256"]


def test_rng_capture_restore_roundtrip():
    state = ckpt.capture_rng()
    a = (random.random(), np.random.rand(), torch.rand(2))
    random.random(), np.random.rand(), torch.rand(5)
    ckpt.restore_rng(state)
    b = (random.random(), np.random.rand(), torch.rand(2))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])


def test_jsonl_sink_and_multisink(tmp_path):
    p1, p2 = tmp_path / "m" / "a.jsonl", tmp_path / "b.jsonl"
    sink = MultiSink(JsonlSink(p1), JsonlSink(str(p2)))
    sink.log_params({"optim.lr": 0.1, "name": "x"})
    sink.log_metrics(5, {"loss": 1.5, "lr": 0.01})
    sink.log_metrics(10, {"loss": float("nan")})
    sink.close()
    sink.close()
    for p in (p1, p2):
        rows = read_jsonl(p)
        assert [r["kind"] for r in rows] == ["params", "metrics", "metrics"]
        assert rows[0]["optim.lr"] == 0.1 and rows[1]["step"] == 5 and rows[1]["loss"] == 1.5
        assert rows[2]["loss"] == "nan"


def test_contract_roundtrip(tmp_path):
    cfg = load_config(preset="tiny")
    manifests = {"a": {"plan": {"target_spacing_mm": [1.0, 1.0, 2.0], "orientation": "LPS"}},
                 "b": {"plan": {"target_spacing_mm": [1.0, 1.0, 2.0]}}}
    norm = {"hu_window": (-1024.0, 325.0), "kind": "zscore", "mean_hu": -300.0, "std_hu": 400.0}
    contract = PretrainContract.build(config_to_dict(cfg), norm, manifests, {"a": "h1", "b": "h2"}, steps=50)
    enc = {"stem.weight": torch.randn(2, 1, 3, 3, 3)}
    enc_uri, con_uri = contract.write(str(tmp_path / "run"), enc)
    raw = json.loads(Path(con_uri).read_text())
    assert raw["kind"] == "pgl-encoder" and raw["format_version"] == 1
    assert raw["architecture"]["name"] == "ResidualUNet" and raw["architecture"]["widths"] == [8, 16, 32, 32]
    assert raw["spacing_mm"] == [1.0, 1.0, 2.0] and raw["orientation"] == "LPS"
    assert raw["normalisation"] == {"kind": "zscore", "mean_hu": -300.0, "std_hu": 400.0}
    assert raw["patch_vox"] == [16, 32, 32] and raw["datasets"] == {"a": "h1", "b": "h2"}
    loaded = PretrainContract.read(str(tmp_path / "run"))
    assert loaded == PretrainContract.read(con_uri) and loaded.steps == 50 and loaded.in_channels == 1
    assert torch.equal(load_encoder_state(str(tmp_path / "run"))["stem.weight"], enc["stem.weight"])
    Path(con_uri).write_text(json.dumps({**raw, "kind": "other"}))
    with pytest.raises(ValueError, match="kind"):
        PretrainContract.read(con_uri)


@pytest.mark.s3
def test_a_remote_jsonl_sink_reopened_appends_like_a_local_file(s3_server, s3_bucket) -> None:
    """A resumed run on an object store keeps the first run's records (it rewrote them before)."""
    target, opts = f"{s3_bucket}/run/metrics.jsonl", s3_server.storage_options
    first = JsonlSink(target, opts)
    first.log_params({"run": 1})
    first.log_metrics(1, {"loss": 1.0})
    first.close()
    second = JsonlSink(target, opts)
    second.log_params({"run": 2, "resumed_from": "step_1"})
    second.log_metrics(2, {"loss": 0.5})
    second.close()
    rows = [json.loads(line) for line in blobs.get_bytes(target, opts).decode().splitlines()]
    assert [(r["kind"], r.get("run"), r.get("step")) for r in rows] == [
        ("params", 1, None), ("metrics", None, 1), ("params", 2, None), ("metrics", None, 2)]
