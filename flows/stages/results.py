"""What a pipeline run reports: the study's results (gate, per-init Dice, paired differences with
95 % intervals, verdict; :func:`pgl_core.study.results`), the all-class mean Dice table, and the
summary lines the CLI prints."""

from __future__ import annotations

import statistics
from typing import Any


def study_results(items: list[dict[str, Any]], gate_items: list[dict[str, Any]]) -> dict[str, Any]:
    """The study's results (:func:`pgl_core.study.results`) from finished fine-tune items."""
    from pgl_core.study import results

    def record(item: dict[str, Any]) -> dict[str, Any]:
        return {"dataset": item["dataset"], "init": item["init_name"], "seed": item["seed"],
                "per_class": item.get("per_class") or {}, "early_per_class": item.get("early_per_class") or {}}

    return results([record(i) for i in items if i.get("per_class")],
                   [record(i) for i in gate_items if i.get("per_class")])


def summarise_results(items: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """dataset -> init -> {mean_dice, std_dice, n_seeds, dice_per_seed} over the finished items."""
    table: dict[str, dict[str, dict[int, float]]] = {}
    for item in items:
        if item.get("mean_dice") is not None:
            table.setdefault(item["dataset"], {}).setdefault(item["init_name"], {})[item["seed"]] = item["mean_dice"]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for dataset, by_init in sorted(table.items()):
        for init, per_seed in sorted(by_init.items()):
            values = [per_seed[s] for s in sorted(per_seed)]
            out.setdefault(dataset, {})[init] = {
                "mean_dice": statistics.fmean(values), "std_dice": statistics.pstdev(values) if len(values) > 1 else 0.0,
                "n_seeds": len(values), "dice_per_seed": {str(s): per_seed[s] for s in sorted(per_seed)}}
    return out


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Human-readable stage statuses and the results table."""
    lines = [f"pretrain ({mode}): {r['status']} -> {r['encoder_uri']}" for mode, r in summary["pretrain"].items()]
    for item in summary["finetune"]:
        dice = item.get("mean_dice")
        lines.append(f"finetune {item['dataset']} init {item['init_name']} seed {item['seed']}: {item['status']}"
                     f", test mean Dice {'n/a' if dice is None else format(dice, '.3f')}")
    results = summary["results"]
    for check in (results.get("gate_checks") or {}).get("checks", []):
        lines.append(f"  gate {check['dataset']:<14} {check['class']:<10.40} Dice {check['dice']:.3f} "
                     f"(>= {check['threshold']}: {'pass' if check['passed'] else 'FAIL'})")
    for dataset, by_init in results.get("datasets", {}).items():
        for init, r in by_init.items():
            lines.append(f"  {dataset:<16} {init:<7} Dice {r['mean_dice']:.3f} +- {r['std_dice']:.3f} "
                         f"({r['n_seeds']} seed(s), learnable classes)")
    for dataset, pairs in results.get("paired", {}).items():
        for name, p in pairs.items():
            lines.append(f"  {dataset:<16} {name:<13} {p['mean']:+.3f}  95% CI [{p['ci95'][0]:+.3f}, "
                         f"{p['ci95'][1]:+.3f}] (n={p['n']})")
    if results.get("verdict"):
        lines.append(f"  verdict: {results['verdict']}")
    lines += [f"FAILED {f}" for f in summary["failures"]]
    return lines
