"""MLflow metric names of an evaluation summary: one key per (metric, class) and per metric mean, so
that runs compare column by column in the MLflow UI.

Scheme (``<split>`` is the evaluated split, ``test`` by default; class names as in the dataset's
``label_names``):

- ``<split>_dice/<class>``, ``<split>_hd95_mm/<class>``, ``<split>_nsd/<class>``: the class's mean
  over the split's cases (HD95 in mm; Dice and NSD in [0, 1]);
- ``<split>_mean_dice``, ``<split>_mean_hd95_mm``, ``<split>_mean_nsd``: pooled over every
  (case, class) value, as ``overall`` in ``metrics.json``;
- ``<split>_n_cases``: the number of evaluated cases.

Undefined values are not logged: a statistic with no finite value (HD95 of a class that is missing
from the prediction or the truth in every case) has no key; ``metrics.json`` holds it as ``null``
with ``n`` = 0, and a class's HD95 over the cases where it is defined is logged with the others.
Characters MLflow refuses in a key (anything but letters, digits, ``_ - .`` and space; ``/``
separates the class) become ``_``; two classes that clash after that get ``_2``, ``_3``, ...
"""

from __future__ import annotations

import math
import re
from typing import Any

# what the summary calls a metric -> its name in MLflow (the unit where it has one)
NAMES = {"dice": "dice", "hd95": "hd95_mm", "nsd": "nsd"}
_BAD = re.compile(r"[^\w.\- ]")


def metric_key_part(name: str) -> str:
    """``name`` as one segment of an MLflow metric key (no ``/``, not ``.`` or ``..``, not empty)."""
    part = _BAD.sub("_", str(name)).strip()
    return "_" * max(1, len(part)) if part in ("", ".", "..") else part


def _class_parts(names: list[str]) -> dict[str, str]:
    """A distinct key segment per class name."""
    taken: set[str] = set()
    parts = {}
    for name in names:
        base = part = metric_key_part(name)
        n = 1
        while part in taken:
            n += 1
            part = f"{base}_{n}"
        taken.add(part)
        parts[name] = part
    return parts


def _finite(value: Any) -> float | None:
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def evaluation_metrics(summary: dict[str, Any], split: str = "test") -> dict[str, float]:
    """The MLflow metrics of an evaluation ``summary`` (:func:`pgl_core.evaluation.report.summarise`):
    ``{key: value}`` by the scheme above, finite values only."""
    prefix = metric_key_part(split)
    out: dict[str, float] = {}
    per_class = summary.get("per_class") or {}
    for name, part in _class_parts(list(per_class)).items():
        for metric, label in NAMES.items():
            value = _finite(((per_class[name] or {}).get(metric) or {}).get("mean"))
            if value is not None:
                out[f"{prefix}_{label}/{part}"] = value
    for metric, label in NAMES.items():
        value = _finite(((summary.get("overall") or {}).get(metric) or {}).get("mean"))
        if value is not None:
            out[f"{prefix}_mean_{label}"] = value
    n_cases = _finite(summary.get("n_cases"))
    if n_cases is not None:
        out[f"{prefix}_n_cases"] = n_cases
    return out
