"""Summary tables of per-case metrics: nan-aware mean / std per class and overall, CSV and JSON.

A per-case record is ``{"case": str, "metrics": {class_name: {"dice", "hd95", "nsd"}}}``, the
``metrics`` part being exactly what :func:`pgl_core.evaluation.metrics.segmentation_metrics`
returns. Units: Dice and NSD are fractions in [0, 1], HD95 is in mm.

Statistics skip non-finite values (HD95 is nan when only one of prediction / truth has the class)
and report ``n``, the number of values that contributed, next to ``n_total``. ``std`` is the
population standard deviation (ddof = 0); a statistic with no contributing value is nan in
Python and ``null`` in JSON / empty in CSV. "overall" pools every (case, class) value.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("dice", "hd95", "nsd")
SUMMARY_CASES = ("mean", "std", "n")  # case-column markers of the summary rows in the CSV
OVERALL = "overall"


def _stats(values: Sequence[float]) -> dict[str, float | int]:
    """{"mean", "std", "n", "n_total"} of the finite values."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0, "n_total": int(arr.size)}
    return {"mean": float(finite.mean()), "std": float(finite.std()), "n": int(finite.size), "n_total": int(arr.size)}


def _check_record(record: dict[str, Any]) -> None:
    if "case" not in record or "metrics" not in record:
        raise ValueError(f"per-case record needs 'case' and 'metrics', got keys {sorted(record)}")
    for name, values in record["metrics"].items():
        missing = [m for m in METRICS if m not in values]
        if missing:
            raise ValueError(f"case {record['case']!r}, class {name!r}: missing metrics {missing}")


def summarise(per_case: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean / std / n per class and overall, for each metric.

    Args:
        per_case: records ``{"case", "metrics": {class: {"dice", "hd95", "nsd"}}}``.

    Returns:
        ``{"n_cases": int, "per_class": {class: {metric: stats}}, "overall": {metric: stats}}`` with
        ``stats = {"mean", "std", "n", "n_total"}``; classes in first-seen order.
    """
    values: dict[str, dict[str, list[float]]] = {}
    for record in per_case:
        _check_record(record)
        for name, metrics in record["metrics"].items():
            per_metric = values.setdefault(str(name), {m: [] for m in METRICS})
            for m in METRICS:
                per_metric[m].append(float(metrics[m]))
    per_class = {name: {m: _stats(v[m]) for m in METRICS} for name, v in values.items()}
    overall = {m: _stats([x for v in values.values() for x in v[m]]) for m in METRICS}
    return {"n_cases": len(per_case), "per_class": per_class, "overall": overall}


def class_dice(summary: dict[str, Any]) -> dict[str, float]:
    """``{class: mean Dice}`` of a summary (:func:`summarise`); classes without a usable Dice are left out."""
    out = {}
    for name, metrics in (summary.get("per_class") or {}).items():
        try:
            out[name] = float(metrics["dice"]["mean"])
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _csv_value(x: float | int) -> str:
    return "" if isinstance(x, float) and not math.isfinite(x) else repr(x) if isinstance(x, float) else str(x)


def _csv_rows(per_case: list[dict[str, Any]], summary: dict[str, Any]) -> list[list[str]]:
    """Per-case rows, then ``mean`` / ``std`` / ``n`` rows per class and for ``overall``."""
    rows = [
        [str(r["case"]), str(name)] + [_csv_value(float(v[m])) for m in METRICS]
        for r in per_case
        for name, v in r["metrics"].items()
    ]
    groups = list(summary["per_class"].items()) + [(OVERALL, summary["overall"])]
    for stat in SUMMARY_CASES:
        rows += [[stat, name] + [_csv_value(g[m][stat]) for m in METRICS] for name, g in groups]
    return rows


def _jsonable(x: Any) -> Any:
    """Replace non-finite floats by None, recursively (strict JSON)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def write_tables(per_case: list[dict[str, Any]], summary: dict[str, Any], out_dir: str) -> dict[str, str]:
    """Write ``metrics.csv`` and ``metrics.json`` into the local folder ``out_dir``.

    CSV columns ``case, class, dice, hd95, nsd`` (HD95 in mm; nan as an empty cell): one row per
    (case, class), then summary rows whose ``case`` is ``mean``, ``std`` or ``n`` (class
    ``overall`` pools all classes). A case literally named ``mean`` / ``std`` / ``n`` is refused.
    JSON: ``{"per_case": [...], "summary": {...}}`` with nan as ``null``.

    Returns:
        ``{"csv": path, "json": path}``.
    """
    clashes = sorted({str(r["case"]) for r in per_case} & set(SUMMARY_CASES))
    if clashes:
        raise ValueError(f"case ids {clashes} clash with the summary row markers {SUMMARY_CASES}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = out / "metrics.csv", out / "metrics.json"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["case", "class", *METRICS])
        writer.writerows(_csv_rows(per_case, summary))
    payload = _jsonable({"per_case": per_case, "summary": summary})
    json_path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return {"csv": str(csv_path), "json": str(json_path)}
