"""Tracking is never required: an unreachable server costs one warning and a few seconds at most."""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import pytest

from pgl_core.sinks import read_jsonl
from tests.plugins.mlflow_server import free_port


def test_unreachable_server_warns_once_and_keeps_metrics_locally(tmp_path: Path, monkeypatch) -> None:
    from flows.tracking import mlflow_run as tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")  # nothing listens
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        parent = tracking.start_run(tmp_path / "work", "offline", config={"train": {"steps": 4}},
                                    output_dir=str(tmp_path / "out"))
        child = parent.stage("pretrain", str(tmp_path / "out" / "pretrain"))
        child.log_params({"train.steps": 4})
        for step in range(1, 5):
            child.log_metrics(step, {"loss": 2.0 / step})
        child.set_tags({"pgl.note": "x"})
        overlay = tmp_path / "overlay.png"
        overlay.write_bytes(b"png")
        child.log_artifacts([overlay], "overlays")
        child.close()
        parent.close()
    elapsed = time.monotonic() - start
    ours = [w for w in caught if issubclass(w.category, tracking.TrackingUnavailableWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    assert "127.0.0.1" in str(ours[0].message)
    assert elapsed < 10.0, f"offline tracking took {elapsed:.1f} s"
    assert not parent.online and not child.online and child.run_id is None
    records = read_jsonl(tmp_path / "out" / "pretrain" / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in records if r["kind"] == "metrics"] == \
        [(1, 2.0), (2, 1.0), (3, pytest.approx(2 / 3)), (4, 0.5)]
    assert any(r["kind"] == "params" and r["train.steps"] == 4 for r in records)
    kept = tmp_path / "out" / "pretrain" / "tracking-artifacts"
    assert (kept / "overlays" / "overlay.png").read_bytes() == b"png"
    assert (kept / "plots" / "loss_curves.png").stat().st_size > 2000
    assert not (tmp_path / "work" / "mlflow").exists()  # no embedded DB when a server is configured


def test_a_failure_mid_run_goes_offline_without_raising(tmp_path: Path, monkeypatch) -> None:
    from flows.tracking import mlflow_run as tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    link = tracking._Link(client=_Broken(), online=True)
    sink = tracking.MlflowSink(link, "run-1", output_dir=str(tmp_path))
    with pytest.warns(tracking.TrackingUnavailableWarning) as caught:
        for step in range(3):
            sink.log_metrics(step, {"loss": float(step)})
        sink.close()
    assert len(caught) == 1 and _Broken.calls == 1  # one failed call, then no more attempts
    assert len([r for r in read_jsonl(tmp_path / "metrics.jsonl") if r["kind"] == "metrics"]) == 3


class _Broken:
    """A tracking client whose every call fails (as a dropped connection would)."""

    calls = 0

    def __getattr__(self, name: str):
        def fail(*args, **kwargs):
            type(self).calls += 1
            raise ConnectionError(f"{name}: connection refused")
        return fail
