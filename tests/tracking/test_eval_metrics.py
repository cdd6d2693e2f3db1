"""Evaluation metrics as MLflow metrics: the naming scheme, undefined values left out, and every key
accepted by a real tracking store (the embedded sqlite one)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from flows.tracking.eval_metrics import evaluation_metrics, metric_key_part
from pgl_core.evaluation.report import summarise

NAN = math.nan


def _summary() -> dict:
    """Two cases; the tumour is missed in both (HD95 undefined), odd class names."""
    per_case = [
        {"case": "c0", "metrics": {"liver": {"dice": 0.9, "hd95": 4.0, "nsd": 0.8},
                                   "tumour": {"dice": 0.0, "hd95": NAN, "nsd": 0.0},
                                   "kidney/left (L)": {"dice": 0.5, "hd95": 10.0, "nsd": 0.4},
                                   "kidney_left__L_": {"dice": 0.7, "hd95": 2.0, "nsd": 0.6},
                                   "..": {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}}},
        {"case": "c1", "metrics": {"liver": {"dice": 0.7, "hd95": 6.0, "nsd": 0.6},
                                   "tumour": {"dice": 0.0, "hd95": NAN, "nsd": 0.0},
                                   "kidney/left (L)": {"dice": 0.3, "hd95": NAN, "nsd": 0.2},
                                   "kidney_left__L_": {"dice": 0.7, "hd95": 2.0, "nsd": 0.6},
                                   "..": {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}}},
    ]
    return summarise(per_case)


def test_scheme_names_each_class_and_leaves_undefined_values_out() -> None:
    metrics = evaluation_metrics(_summary(), "test")
    assert metrics["test_dice/liver"] == pytest.approx(0.8)
    assert metrics["test_hd95_mm/liver"] == pytest.approx(5.0)
    assert metrics["test_nsd/liver"] == pytest.approx(0.7)
    assert metrics["test_dice/tumour"] == 0.0 and metrics["test_nsd/tumour"] == 0.0
    assert "test_hd95_mm/tumour" not in metrics  # no case defines it
    # a class's HD95 over the cases that define it
    assert metrics["test_hd95_mm/kidney_left _L_"] == pytest.approx(10.0)
    assert metrics["test_dice/kidney_left__L_"] == pytest.approx(0.7)  # same base name, its own key
    assert metrics["test_dice/__"] == 1.0  # '..' cannot be a key segment
    overall = _summary()["overall"]
    assert metrics["test_mean_dice"] == pytest.approx(overall["dice"]["mean"])
    assert metrics["test_mean_hd95_mm"] == pytest.approx(overall["hd95"]["mean"])
    assert metrics["test_mean_nsd"] == pytest.approx(overall["nsd"]["mean"])
    assert metrics["test_n_cases"] == 2.0
    assert all(math.isfinite(v) for v in metrics.values())
    assert len([k for k in metrics if k.startswith("test_dice/")]) == 5
    assert set(evaluation_metrics(_summary(), "val")) == {k.replace("test_", "val_", 1) for k in metrics}


def test_key_parts_that_clash_after_cleaning_get_a_suffix() -> None:
    per_case = [{"case": "c", "metrics": {"a/b": {"dice": 0.1, "hd95": 1.0, "nsd": 0.1},
                                          "a_b": {"dice": 0.2, "hd95": 1.0, "nsd": 0.2},
                                          "a:b": {"dice": 0.3, "hd95": 1.0, "nsd": 0.3}}}]
    metrics = evaluation_metrics(summarise(per_case))
    assert [metrics[f"test_dice/{k}"] for k in ("a_b", "a_b_2", "a_b_3")] == [0.1, 0.2, 0.3]
    assert metric_key_part("") == "_" and metric_key_part(" liver ") == "liver"


@pytest.mark.slow
def test_every_key_lands_in_the_embedded_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.tracking.mlflow_run import start_run

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    metrics = evaluation_metrics(_summary())
    with start_run(tmp_path / "work", "evaluate") as sink:
        sink.log_metrics(0, metrics)
    assert sink.online, "the run was not recorded"
    logged = sink._link.client.get_run(sink.run_id).data.metrics
    assert logged == pytest.approx(metrics)
