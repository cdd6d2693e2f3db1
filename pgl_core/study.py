"""The PGL-versus-baselines study's statistics: per-init summaries, paired differences with 95 %
confidence intervals, the supervised gate and a one-sentence verdict (docs/study.md).

Inputs are plain records, one per fine-tune: ``{"dataset", "init" (random | global | pgl),
"seed", "per_class": {class: dice}, "early_per_class": {...} (optional)}``. Within a dataset the
same seed means the same training cases for every init, so differences are *paired* by seed.

Headline Dice = the mean over the *learnable* classes of a dataset (organs large enough to learn
at the data's resolution); tumours and tiny structures are reported apart, never dropped.
The interval is Student's t on the per-seed paired differences (n - 1 degrees of freedom):
with 5 seeds that is mean ± 2.78 s / sqrt(5).
"""

from __future__ import annotations

import math
import statistics
from typing import Any

from scipy import stats as _st

INITS = ("random", "global", "pgl")
PAIRS = (("pgl", "random"), ("pgl", "global"), ("global", "random"))
# Structures too small or too variable to learn at phantom resolution (the gate leaves them out,
# the headline too); reported apart.
SMALL_STRUCTURES = ("liver_tumour", "kidney_tumour", "gallbladder", "inferior_vena_cava", "tumour")
GATE = {"PhantomLiTS": {"liver": 0.85}, "PhantomSpleen": {"spleen": 0.75},
        "PhantomBTCV": {"__mean__": 0.60}}
BTCV_LEARNABLE = ("liver", "spleen", "kidney_left", "kidney_right", "stomach", "aorta")


def learnable(classes: list[str]) -> list[str]:
    """The classes that count in the headline (all but :data:`SMALL_STRUCTURES`)."""
    keep = [c for c in classes if c not in SMALL_STRUCTURES]
    return keep or list(classes)


def headline(per_class: dict[str, float]) -> float:
    """Mean Dice over the learnable classes of one evaluation."""
    vals = [per_class[c] for c in learnable(sorted(per_class)) if not math.isnan(per_class[c])]
    return statistics.fmean(vals) if vals else math.nan


def ci95(values: list[float]) -> tuple[float, float, float]:
    """(mean, low, high): Student's t 95 % interval of the mean (a point when n < 2)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, mean, mean
    half = float(_st.t.ppf(0.975, n - 1)) * statistics.stdev(values) / math.sqrt(n)
    return mean, mean - half, mean + half


def summarise(records: list[dict[str, Any]], key: str = "per_class") -> dict[str, dict[str, Any]]:
    """dataset -> init -> {mean_dice, std_dice, n_seeds, dice_per_seed, per_class, small_per_class}."""
    out: dict[str, dict[str, Any]] = {}
    for ds in sorted({r["dataset"] for r in records}):
        for init in INITS:
            rs = sorted((r for r in records if r["dataset"] == ds and r["init"] == init and r.get(key)),
                        key=lambda r: r["seed"])
            if not rs:
                continue
            dice = [headline(r[key]) for r in rs]
            classes = sorted({c for r in rs for c in r[key]})
            per_class = {c: statistics.fmean(r[key].get(c, math.nan) for r in rs) for c in classes}
            out.setdefault(ds, {})[init] = {
                "mean_dice": statistics.fmean(dice), "std_dice": statistics.stdev(dice) if len(dice) > 1 else 0.0,
                "n_seeds": len(dice), "dice_per_seed": dice, "seeds": [r["seed"] for r in rs],
                "per_class": {c: v for c, v in per_class.items() if c in learnable(classes)},
                "small_per_class": {c: v for c, v in per_class.items() if c not in learnable(classes)}}
    return out


def paired(table: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """dataset -> "a-b" -> {mean, ci95, n, per_seed} over the seeds both inits have."""
    out: dict[str, dict[str, Any]] = {}
    for ds, by_init in table.items():
        for a, b in PAIRS:
            if a not in by_init or b not in by_init:
                continue
            da = dict(zip(by_init[a]["seeds"], by_init[a]["dice_per_seed"]))
            db = dict(zip(by_init[b]["seeds"], by_init[b]["dice_per_seed"]))
            diffs = [da[s] - db[s] for s in sorted(set(da) & set(db))]
            if diffs:
                mean, lo, hi = ci95(diffs)
                out.setdefault(ds, {})[f"{a}-{b}"] = {"mean": mean, "ci95": [lo, hi], "n": len(diffs),
                                                      "per_seed": diffs}
    return out


def gate(per_dataset: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The supervised gate (random init, all training labels): ``{"passed", "checks": [...]}``."""
    checks = []
    for ds, want in GATE.items():
        got = per_dataset.get(ds)
        if got is None:
            continue
        for cls, threshold in want.items():
            if cls == "__mean__":
                vals = [got[c] for c in BTCV_LEARNABLE if c in got]
                value, name = (statistics.fmean(vals) if vals else math.nan), "mean(" + ",".join(BTCV_LEARNABLE) + ")"
            else:
                value, name = got.get(cls, math.nan), cls
            checks.append({"dataset": ds, "class": name, "dice": value, "threshold": threshold,
                           "passed": bool(value >= threshold)})
    return {"passed": bool(checks) and all(c["passed"] for c in checks), "checks": checks}


def verdict(pairs: dict[str, dict[str, Any]], gate_result: dict[str, Any] | None) -> str:
    """One sentence: whether PGL beats both baselines, with how many datasets' intervals exclude 0."""
    if gate_result is not None and not gate_result["passed"]:
        failed = [f"{c['dataset']} {c['class']} {c['dice']:.2f} < {c['threshold']}" for c in gate_result["checks"]
                  if not c["passed"]]
        return "Supervised gate failed (" + "; ".join(failed) + "): initialisations were not compared."
    parts = []
    for name in ("pgl-random", "pgl-global", "global-random"):
        rows = [d[name] for d in pairs.values() if name in d]
        if not rows:
            continue
        above = sum(r["ci95"][0] > 0 for r in rows)
        below = sum(r["ci95"][1] < 0 for r in rows)
        mean = statistics.fmean(r["mean"] for r in rows)
        parts.append(f"{name} {mean:+.3f} (95% CI above 0 in {above}/{len(rows)} datasets, below 0 in "
                     f"{below}/{len(rows)})")
    wins = all(any(r["ci95"][0] > 0 for r in [d[n] for d in pairs.values() if n in d])
               for n in ("pgl-random", "pgl-global"))
    head = ("PGL beats both baselines on at least one dataset with 95% intervals excluding 0" if wins else
            "No decisive PGL advantage: the paired 95% intervals do not show PGL ahead of both baselines")
    return head + "; mean paired differences: " + "; ".join(parts) + "."


def results(records: list[dict[str, Any]], gate_records: list[dict[str, Any]]) -> dict[str, Any]:
    """The study's ``results.json`` (docs/study.md): gate, datasets, paired, early, verdict."""
    gate_table = {r["dataset"]: r["per_class"] for r in gate_records if r.get("per_class")}
    gate_result = gate(gate_table) if gate_table else None
    table = summarise(records)
    pairs = paired(table)
    early = summarise(records, "early_per_class")
    return {"gate": gate_table, "gate_checks": gate_result, "datasets": table, "paired": pairs,
            "early": {"datasets": early, "paired": paired(early)}, "verdict": verdict(pairs, gate_result)}
