"""The pretraining loop on CPU with a tiny stand-in model: outputs, kill-and-resume continuity,
SIGTERM checkpointing, the non-finite guard, the CLI."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from pgl_core import checkpoint as ckpt
from pgl_core.contracts import PretrainContract
from pgl_core.loop import NonFiniteLossError
from pgl_core.pretrain import Components, pretrain
from pgl_core.sinks import read_jsonl
from tests.train.standins import TinyPGL, mem_stores, standin_components, tiny_config


def _run(out, cfg=None, **kw):
    return pretrain(cfg or tiny_config(), mem_stores(), str(out), components=kw.pop("components", standin_components()),
                    device="cpu", **kw)


def _final_state(out) -> dict:
    state, _ = ckpt.load_latest(str(out))
    return state


class _CrashAt:
    """A sink that raises (a simulated crash) when it sees ``step``."""

    def __init__(self, step):
        self.step = step

    def log_metrics(self, step, metrics):
        if step >= self.step:
            raise RuntimeError(f"simulated crash at step {step}")

    def log_params(self, params):
        pass

    def close(self):
        pass


class _SigtermAt(_CrashAt):
    def log_metrics(self, step, metrics):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_run_writes_checkpoints_metrics_and_contract(tmp_path):
    res = _run(tmp_path / "run")
    assert res.status == "completed" and res.step == 8 and res.skipped_steps == 0
    assert torch.isfinite(torch.tensor(res.last_loss))
    steps = [s for s, _ in ckpt.list_checkpoints(str(tmp_path / "run"))]
    assert steps == [4, 8]
    rows = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    metrics = [r for r in rows if r["kind"] == "metrics"]
    assert [r["step"] for r in metrics] == [2, 4, 6, 8]
    for key in ("loss", "loss_global", "loss_local", "lr", "tau", "samples_per_s", "data_wait_fraction"):
        assert key in metrics[-1]
    assert 0.0 <= metrics[-1]["data_wait_fraction"] <= 1.0 and metrics[-1]["samples_per_s"] > 0
    assert metrics[0]["lr"] == pytest.approx(1e-3) and metrics[-1]["tau"] > 0.996
    contract = PretrainContract.read(str(tmp_path / "run"))
    assert contract.steps == 8 and contract.datasets == {"dsA": "hash-dsA", "dsB": "hash-dsB"}
    assert contract.normalisation["mean_hu"] == pytest.approx(-350.0)
    assert contract.spacing_mm == [1.5, 1.5, 3.0]


def test_training_changes_weights_and_target_follows(tmp_path):
    res = _run(tmp_path / "run")
    model = TinyPGL()
    torch.manual_seed(0)
    init = TinyPGL().state_dict()
    model.load_state_dict(_final_state(tmp_path / "run")["model"])
    assert res.step == 8
    assert not torch.equal(model.state_dict()["encoder.0.weight"], init["encoder.0.weight"])
    diff_online = (model.encoder[0].weight - init["encoder.0.weight"]).abs().max()
    diff_target = (model.target_encoder[0].weight - init["target_encoder.0.weight"]).abs().max()
    assert 0 < diff_target < diff_online


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6, rtol=0), k


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    _run(tmp_path / "full")
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(tmp_path / "crash", sink=_CrashAt(6))
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path / "crash"))] == [4]
    res = _run(tmp_path / "crash")
    assert res.status == "completed" and res.step == 8
    full, resumed = _final_state(tmp_path / "full"), _final_state(tmp_path / "crash")
    _assert_same_weights(full["model"], resumed["model"])
    opt_a, opt_b = full["optimizer"]["state"], resumed["optimizer"]["state"]
    for k in opt_a:
        _assert_same_weights(opt_a[k], opt_b[k])
    assert resumed["sampler"] == full["sampler"]


def test_resume_after_max_steps_stop_and_truncated_checkpoint(tmp_path):
    _run(tmp_path / "full")
    res = _run(tmp_path / "part", max_steps=6)
    assert res.status == "stopped" and res.step == 6
    assert not (tmp_path / "part" / "contract.json").exists()
    latest = tmp_path / "part" / "checkpoints" / "step_00000006.pt"
    latest.write_bytes(latest.read_bytes()[:1000])  # a partial write: step 4 must be used
    res = _run(tmp_path / "part")
    assert res.step == 8
    _assert_same_weights(_final_state(tmp_path / "full")["model"], _final_state(tmp_path / "part")["model"])


def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
    res = _run(tmp_path / "run", sink=_SigtermAt(6))
    assert res.status == "preempted"
    assert res.step == 7  # the flag is seen at the next step boundary
    state, uri = ckpt.load_latest(str(tmp_path / "run"))
    assert state["step"] == 7 and uri == res.checkpoint_uri
    assert not (tmp_path / "run" / "contract.json").exists()
    assert signal.getsignal(signal.SIGTERM) is not None
    res = _run(tmp_path / "run")
    assert res.status == "completed" and res.step == 8


class _NaNModel(TinyPGL):
    def __init__(self, bad_calls):
        super().__init__()
        self.bad_calls, self.calls = bad_calls, 0

    def forward(self, view_a, view_b, params):
        out = super().forward(view_a, view_b, params)
        self.calls += 1
        if self.calls in self.bad_calls:
            out["loss"] = out["loss"] * float("nan")
        return out


def _nan_components(bad_calls) -> Components:
    comps = standin_components()
    comps.model_factory = lambda cfg: _NaNModel(bad_calls)
    return comps


def test_nonfinite_steps_are_skipped_and_counted(tmp_path):
    res = _run(tmp_path / "run", components=_nan_components({3, 4}))
    assert res.status == "completed" and res.skipped_steps == 2
    state = _final_state(tmp_path / "run")
    assert state["skipped_steps"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_too_many_consecutive_nonfinite_steps_abort(tmp_path):
    with pytest.raises(NonFiniteLossError, match="consecutive"):
        _run(tmp_path / "run", cfg=tiny_config("train.steps=12"), components=_nan_components(set(range(1, 100))))


def test_time_based_checkpoints(tmp_path):
    cfg = tiny_config("train.checkpoint_every_minutes=1e-9", "train.checkpoint_every_steps=1000", "train.steps=5")
    res = _run(tmp_path / "run", cfg=cfg)
    assert res.status == "completed"
    assert [s for s, _ in ckpt.list_checkpoints(str(tmp_path / "run"))] == [1, 2, 3, 4, 5]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_loop_on_cuda_bf16(tmp_path):
    res = pretrain(tiny_config(), mem_stores(), str(tmp_path / "run"), components=standin_components(), device="cuda")
    assert res.status == "completed" and torch.isfinite(torch.tensor(res.last_loss))
