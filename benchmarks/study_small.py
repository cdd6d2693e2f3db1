"""Demo-sized PGL study on synthetic phantoms: random vs global-only (BYOL) vs PGL initialisation.

The paper's protocol at demo size, with the pgl_core / storage APIs only (no Prefect):

1. write phantom datasets (``storage.phantoms``): an unlabelled pool plus the four labelled kinds
   btcv, lits, kits, spleen (``--cases`` each, ``--shape`` (z, y, x) voxels);
2. ingest them all with ONE plan (``--spacing`` x y z mm) into a local Zarr store;
3. pretrain twice on the pool plus every image of every dataset: ``loss.mode=global`` (BYOL) and
   ``loss.mode=pgl`` (same config, same seed, same data stream);
4. fine-tune every labelled kind from each init (random, global, pgl) for each fine-tune seed
   (``finetune.seed``; it also draws the split and the label budget, so for one seed all three
   inits see the same training, validation and test cases), with ``finetune.labelled`` cases;
5. evaluate Dice on each run's test split; print the table (mean +- std over seeds) and write
   ``results.json``: dataset -> init -> {"mean_dice", "std_dice", "n_seeds", "dice_per_seed",
   "per_class"}, plus "paired" (pgl - random, pgl - global per dataset) and "timings_s".

Usage (the demo study; about 10 minutes on 2 CPU cores)::

    OMP_NUM_THREADS=1 python benchmarks/study_small.py --config deploy/configs/study-small.yaml \\
        --work /tmp/pgl-study --out /tmp/pgl-study/results.json

    python benchmarks/study_small.py --small ...   # a seconds-long smoke version (tests)

``--set key=value`` overrides apply to pretraining and fine-tuning alike; ``--pretrain-set``
only to pretraining, ``--finetune-set`` only to fine-tuning (ablations). Pretraining outputs are
reused when ``--work`` already holds a completed one with the same config (``--fresh`` redoes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ.setdefault("OMP_NUM_THREADS", "1")

KINDS = ("btcv", "lits", "kits", "spleen")
INITS = ("random", "global", "pgl")
SMALL = {"shape": (16, 32, 32), "cases": 4, "pool": 2, "seeds": 1,
         "set": ["train.steps=4", "finetune.steps=4", "finetune.eval_every=4", "train.log_every=2"]}


def write_phantoms(raw_dir: str, shape_zyx: tuple[int, int, int], cases: int, pool: int,
                   seed: int) -> dict[str, str]:
    """Phantom datasets under ``raw_dir``; returns kind -> MSD folder (pool included when > 0)."""
    from storage.phantoms import write_dataset

    folders = {}
    for kind, n in [("pool", pool)] + [(k, cases) for k in KINDS]:
        if n > 0:
            folders[kind] = write_dataset(raw_dir, kind, n, seed=seed, shape_zyx=shape_zyx)["folders"]["nifti"]
    return folders


def ingest(folders: dict[str, str], store_root: str, spacing_mm: tuple[float, float, float]) -> dict[str, str]:
    """Ingest every folder with one plan at ``spacing_mm`` (x, y, z); returns kind -> dataset name."""
    from storage.ingest import ingest_case
    from storage.plan import Plan
    from storage.readers import discover_cases
    from storage.store import DatasetStore

    plan = Plan(target_spacing_mm=tuple(float(v) for v in spacing_mm))
    names = {}
    for kind, folder in folders.items():
        name = os.path.basename(folder.rstrip("/"))
        cases, problems, info = discover_cases(folder)
        if problems:
            raise RuntimeError(f"{folder}: unreadable inputs {problems[:3]}")
        ds = DatasetStore(store_root, name, create=True)
        ds.ensure(plan.to_dict(), info["label_names"])
        failed = [r for r in (ingest_case(c, store_root, name, plan) for c in cases) if r.status == "failed"]
        if failed:
            raise RuntimeError(f"{name}: ingest failed for {[(r.case_id, r.reason) for r in failed[:3]]}")
        ds.consolidate_manifest()
        names[kind] = name
    return names


def load_cfg(config: str | None, overrides: list[str]) -> Any:
    from pgl_core.config import load_config

    return load_config(config, overrides, preset="tiny")


def _cfg_key(cfg: Any) -> str:
    from pgl_core.config import config_to_dict

    return hashlib.sha256(json.dumps(config_to_dict(cfg), sort_keys=True).encode()).hexdigest()[:10]


def pretrain(cfg: Any, store_root: str, datasets: list[str], mode: str, work: str) -> tuple[str, float, float]:
    """Pretrain with ``loss.mode=mode``; returns (output folder, seconds, last logged loss).
    A completed output of the same config under ``work`` is reused (seconds = 0)."""
    from pgl_core.pretrain import run_pretraining

    cfg = cfg.model_copy(deep=True)
    cfg.loss.mode = mode
    out = os.path.join(work, "pretrain", f"{mode}-{_cfg_key(cfg)}")
    if os.path.isfile(os.path.join(out, "encoder.pt")):
        return out, 0.0, float("nan")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    res = run_pretraining(cfg, store_root, datasets, out)
    if res.status != "completed":
        raise RuntimeError(f"pretraining {mode} ended {res.status} at step {res.step}")
    return out, time.perf_counter() - t0, res.last_loss


def finetune_eval(cfg: Any, store_root: str, dataset: str, init: str, seed: int, work: str) -> dict[str, Any]:
    """One fine-tune (``finetune.seed=seed``) + test-split evaluation; Dice overall and per class."""
    from pgl_core.evaluate import evaluate_model
    from pgl_core.finetune import run_finetuning
    from pgl_core.metrics import NullSink

    cfg = cfg.model_copy(deep=True)
    cfg.finetune.seed = int(seed)
    tag = "random" if init == "random" else os.path.basename(init).split("-")[0]
    out = os.path.join(work, "finetune", f"{dataset}-{tag}-s{seed}")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    res = run_finetuning(cfg, store_root, dataset, init, out, sink=NullSink())
    summary = evaluate_model(res.model_dir, store_root, dataset, os.path.join(out, "eval"), split="test",
                             overlays=0, device="cpu")
    per_class = {name: float(v["dice"]["mean"]) for name, v in summary["per_class"].items()}
    return {"dice": float(summary["overall"]["dice"]["mean"]), "per_class": per_class,
            "best_val_dice": res.best_val_dice, "best_step": res.best_step, "test": res.split["test"],
            "train": res.split["train"], "seconds": time.perf_counter() - t0}


def _std(xs: list[float]) -> float:
    return statistics.stdev(xs) if len(xs) > 1 else 0.0


def aggregate(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """dataset -> init -> {"mean_dice", "std_dice", "n_seeds", "dice_per_seed", "per_class"}."""
    table: dict[str, Any] = {}
    for ds, by_init in runs.items():
        table[ds] = {}
        for init, rs in by_init.items():
            dice = [r["dice"] for r in rs]
            classes = sorted({c for r in rs for c in r["per_class"]})
            table[ds][init] = {"mean_dice": statistics.fmean(dice), "std_dice": _std(dice), "n_seeds": len(dice),
                               "dice_per_seed": dice,
                               "per_class": {c: statistics.fmean(r["per_class"].get(c, float("nan")) for r in rs)
                                             for c in classes}}
    return table


def paired(runs: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, Any]:
    """Per dataset, the per-seed differences pgl - random and pgl - global (same split per seed)."""
    out: dict[str, Any] = {}
    for ds, by_init in runs.items():
        out[ds] = {}
        for base in ("random", "global"):
            if "pgl" in by_init and base in by_init:
                diffs = [a["dice"] - b["dice"] for a, b in zip(by_init["pgl"], by_init[base])]
                out[ds][f"pgl-{base}"] = {"mean": statistics.fmean(diffs), "std": _std(diffs), "per_seed": diffs}
    return out


def format_table(table: dict[str, Any], inits: list[str]) -> str:
    """Markdown table: dataset x init, mean Dice +- std (n seeds), plus the across-dataset mean."""
    lines = ["| dataset | " + " | ".join(inits) + " |", "|---" * (len(inits) + 1) + "|"]
    for ds, row in table.items():
        cells = [f"{row[i]['mean_dice']:.3f} ± {row[i]['std_dice']:.3f} (n={row[i]['n_seeds']})" for i in inits]
        lines.append(f"| {ds} | " + " | ".join(cells) + " |")
    means = [statistics.fmean(table[d][i]["mean_dice"] for d in table) for i in inits]
    lines.append("| **mean** | " + " | ".join(f"**{m:.3f}**" for m in means) + " |")
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="YAML config on top of the tiny preset.")
    p.add_argument("--shape", type=int, nargs=3, default=(24, 48, 48), help="Phantom shape (z, y, x) voxels.")
    p.add_argument("--spacing", type=float, nargs=3, default=(8.0, 8.0, 10.0), help="Plan spacing (x, y, z) mm.")
    p.add_argument("--cases", type=int, default=10, help="Labelled cases per dataset kind.")
    p.add_argument("--pool", type=int, default=16, help="Unlabelled pool cases.")
    p.add_argument("--seeds", type=int, default=3, help="Fine-tune seeds 0..N-1.")
    p.add_argument("--labelled", type=float, default=None, help="Label budget (overrides finetune.labelled).")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="Labelled kinds to fine-tune.")
    p.add_argument("--inits", nargs="+", default=list(INITS), choices=INITS, help="Initialisations to compare.")
    p.add_argument("--data-seed", type=int, default=0, help="Phantom generator seed.")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="Override for both stages.")
    p.add_argument("--pretrain-set", action="append", default=[], help="Override for pretraining only.")
    p.add_argument("--finetune-set", action="append", default=[], help="Override for fine-tuning only.")
    p.add_argument("--work", default="/tmp/pgl-study", help="Working folder (phantoms, store, runs).")
    p.add_argument("--out", default=None, help="results.json path (default <work>/results.json).")
    p.add_argument("--fresh", action="store_true", help="Delete the working folder first.")
    p.add_argument("--small", action="store_true", help="Seconds-long smoke version (tests).")
    return p.parse_args(argv)


def _apply_small(args: argparse.Namespace) -> None:
    args.shape, args.cases, args.pool, args.seeds = SMALL["shape"], SMALL["cases"], SMALL["pool"], SMALL["seeds"]
    args.overrides = list(SMALL["set"]) + list(args.overrides)


def prepare_data(args: argparse.Namespace, timings: dict[str, float]) -> tuple[str, dict[str, str]]:
    """Phantoms + ingest under ``args.work`` (reused when the store already exists)."""
    store_root = os.path.join(args.work, "store")
    done = os.path.join(args.work, "data.json")
    key = {"shape": list(args.shape), "spacing": list(args.spacing), "cases": args.cases, "pool": args.pool,
           "seed": args.data_seed}
    if os.path.isfile(done) and json.load(open(done))["key"] == key:
        return store_root, json.load(open(done))["names"]
    shutil.rmtree(os.path.join(args.work, "raw"), ignore_errors=True)
    shutil.rmtree(store_root, ignore_errors=True)
    t0 = time.perf_counter()
    folders = write_phantoms(os.path.join(args.work, "raw"), tuple(args.shape), args.cases, args.pool,
                             args.data_seed)
    timings["phantoms"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    names = ingest(folders, store_root, tuple(args.spacing))
    timings["ingest"] = time.perf_counter() - t0
    with open(done, "w") as fh:
        json.dump({"key": key, "names": names}, fh)
    return store_root, names


def run_study(args: argparse.Namespace) -> dict[str, Any]:
    """The whole protocol; returns the results dict (also written to ``args.out``)."""
    import torch

    torch.set_num_threads(1)
    if args.fresh:
        shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work, exist_ok=True)
    timings: dict[str, Any] = {}
    t_all = time.perf_counter()
    store_root, names = prepare_data(args, timings)
    base = args.overrides + ([f"finetune.labelled={args.labelled}"] if args.labelled else [])
    pre_cfg = load_cfg(args.config, base + args.pretrain_set)
    ft_cfg = load_cfg(args.config, base + args.finetune_set)
    inits = {"random": "random"}
    for mode in [m for m in ("global", "pgl") if m in args.inits]:
        inits[mode], timings[f"pretrain_{mode}"], _ = pretrain(pre_cfg, store_root, list(names.values()), mode,
                                                               args.work)
    runs = finetune_grid(args, ft_cfg, store_root, names, inits, timings)
    timings["total"] = time.perf_counter() - t_all
    results = {"table": aggregate(runs), "paired": paired(runs), "timings_s": timings, "runs": runs,
               "settings": {**{k: v for k, v in vars(args).items() if k not in ("fresh",)},
                            "finetune_labelled": ft_cfg.finetune.labelled}}
    flat = {ds: results["table"][ds] for ds in results["table"]}
    out = args.out or os.path.join(args.work, "results.json")
    with open(out, "w") as fh:
        json.dump({**flat, "_meta": {k: results[k] for k in ("paired", "timings_s", "runs", "settings")}}, fh,
                  indent=1, default=str)
    return results


def finetune_grid(args: argparse.Namespace, cfg: Any, store_root: str, names: dict[str, str],
                  inits: dict[str, str], timings: dict[str, Any]) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """kinds x inits x seeds fine-tunes; dataset name -> init -> list (by seed) of run records."""
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {}
    ft_seconds = []
    for kind in args.kinds:
        ds = names[kind]
        runs[ds] = {i: [] for i in args.inits}
        for seed in range(args.seeds):
            for init in args.inits:
                rec = finetune_eval(cfg, store_root, ds, inits[init], seed, args.work)
                runs[ds][init].append(rec)
                ft_seconds.append(rec["seconds"])
                print(f"  {ds:14s} {init:6s} seed {seed}: Dice {rec['dice']:.3f} "
                      f"(val {rec['best_val_dice']:.3f} @ {rec['best_step']}, {rec['seconds']:.1f} s)", flush=True)
    timings["finetune_each_mean"] = statistics.fmean(ft_seconds) if ft_seconds else 0.0
    timings["finetune_total"] = sum(ft_seconds)
    return runs


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.small:
        _apply_small(args)
    results = run_study(args)
    print(format_table(results["table"], list(args.inits)))
    for ds, d in results["paired"].items():
        if d:
            print(f"  {ds}: " + ", ".join(f"{k} {v['mean']:+.3f} ± {v['std']:.3f}" for k, v in d.items()))
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in results["timings_s"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
