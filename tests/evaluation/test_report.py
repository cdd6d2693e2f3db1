"""Summary statistics (nan-aware, with counts) and the CSV / JSON tables."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from pgl_core.evaluation.report import summarise, write_tables

NAN = float("nan")


def records():
    return [
        {"case": "c1", "metrics": {"liver": {"dice": 0.9, "hd95": 4.0, "nsd": 0.8},
                                   "tumour": {"dice": 0.0, "hd95": NAN, "nsd": 0.0}}},
        {"case": "c2", "metrics": {"liver": {"dice": 0.7, "hd95": 8.0, "nsd": 0.6},
                                   "tumour": {"dice": 0.5, "hd95": 10.0, "nsd": 0.4}}},
        {"case": "c3", "metrics": {"liver": {"dice": 0.8, "hd95": 6.0, "nsd": 0.7},
                                   "tumour": {"dice": 0.6, "hd95": 12.0, "nsd": 0.5}}},
    ]


def test_summary_means_stds_and_counts_skip_nan():
    s = summarise(records())
    assert s["n_cases"] == 3 and list(s["per_class"]) == ["liver", "tumour"]
    liver = s["per_class"]["liver"]
    assert liver["dice"]["mean"] == pytest.approx(0.8)
    assert liver["dice"]["std"] == pytest.approx(np.std([0.9, 0.7, 0.8]))
    hd = s["per_class"]["tumour"]["hd95"]
    assert hd["mean"] == pytest.approx(11.0) and hd["n"] == 2 and hd["n_total"] == 3
    assert s["per_class"]["tumour"]["dice"]["n"] == 3
    overall = s["overall"]["hd95"]
    assert overall["mean"] == pytest.approx(np.mean([4, 8, 6, 10, 12]))
    assert overall["n"] == 5 and overall["n_total"] == 6


def test_class_with_no_finite_value_reports_nan_and_zero_count():
    s = summarise([{"case": "a", "metrics": {"x": {"dice": 0.0, "hd95": NAN, "nsd": 0.0}}}])
    stats = s["per_class"]["x"]["hd95"]
    assert math.isnan(stats["mean"]) and math.isnan(stats["std"]) and stats["n"] == 0


def test_records_missing_metrics_are_refused():
    with pytest.raises(ValueError, match="case 'c9', class 'liver'.*nsd"):
        summarise([{"case": "c9", "metrics": {"liver": {"dice": 1.0, "hd95": 0.0}}}])


def test_tables_round_trip(tmp_path):
    per_case = records()
    summary = summarise(per_case)
    paths = write_tables(per_case, summary, str(tmp_path / "eval"))
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["case", "class", "dice", "hd95", "nsd"]
    case_rows = [r for r in rows if r["case"].startswith("c")]
    assert len(case_rows) == 6
    missed = next(r for r in case_rows if r["case"] == "c1" and r["class"] == "tumour")
    assert missed["hd95"] == "" and float(missed["dice"]) == 0.0
    mean_rows = {r["class"]: r for r in rows if r["case"] == "mean"}
    assert set(mean_rows) == {"liver", "tumour", "overall"}
    assert float(mean_rows["tumour"]["hd95"]) == pytest.approx(11.0)
    n_rows = {r["class"]: r for r in rows if r["case"] == "n"}
    assert n_rows["tumour"]["hd95"] == "2"
    data = json.loads(open(paths["json"]).read())
    assert data["per_case"][0]["metrics"]["tumour"]["hd95"] is None
    assert data["summary"]["per_class"]["liver"]["dice"]["mean"] == pytest.approx(0.8)


def test_case_named_like_a_summary_row_is_refused(tmp_path):
    bad = [{"case": "mean", "metrics": {"x": {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}}}]
    with pytest.raises(ValueError, match="mean"):
        write_tables(bad, summarise(bad), str(tmp_path))
