"""The PGL study on synthetic phantoms without services (no Prefect, no MLflow): random vs
global-only (BYOL) vs PGL initialisation, at any size, on CPU or GPU. The pipeline runs the same
protocol through Prefect (``pgl study``, ``make demo``); this script is what a bare GPU machine runs
(``benchmarks/study_gpu.sh``).

1. write phantom datasets (``phantoms``, portal venous): an unlabelled pool plus the
   labelled kinds (``--kinds``; btcv, lits, kits, spleen), ``--cases`` each, ``--shape`` (z, y, x);
2. ingest them all with ONE plan (``--spacing`` x y z mm) into a local Zarr store;
3. pretrain twice on the pool plus every image of every dataset: ``loss.mode=global`` (BYOL) and
   ``loss.mode=pgl`` (same config, same seed, same data stream);
4. the supervised gate: each labelled kind from random init with all its training labels
   (``--gate-steps``); then every kind from each init (random, global, pgl) for each seed, with
   ``finetune.labelled`` cases, evaluated at the end and at ``finetune.early_eval_step``;
5. ``results.json`` (:func:`pgl_core.study.results`): gate, per-init Dice over the learnable
   classes, paired differences with 95 % t intervals, the early evaluation, a verdict; plus runs
   and timings under ``_meta``. Fine-tunes run ``--parallel`` at a time (processes).

Usage::

    python benchmarks/study.py --config deploy/configs/study-small.yaml --work /tmp/pgl-study
    python benchmarks/study.py --small ...   # a seconds-long smoke version (tests)

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
SMALL = {"shape": (16, 32, 32), "cases": 4, "pool": 2, "seeds": 2,
         "set": ["train.steps=4", "finetune.steps=4", "finetune.eval_every=4", "train.log_every=2"]}


def write_phantoms(raw_dir: str, shape_zyx: tuple[int, int, int], cases: int, pool: int,
                   seed: int) -> dict[str, str]:
    """Phantom datasets under ``raw_dir``; returns kind -> MSD folder (pool included when > 0)."""
    from phantoms import write_dataset

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


def _class_dice(model_dir: str, store_root: str, dataset: str, out: str, device: str | None) -> dict[str, float]:
    from pgl_core.evaluate import evaluate_model

    from pgl_core.evaluation.report import class_dice

    return class_dice(evaluate_model(model_dir, store_root, dataset, out, split="test", overlays=0, device=device))


def finetune_eval(cfg: Any, store_root: str, dataset: str, init: str, seed: int, work: str,
                  tag: str | None = None, device: str | None = None) -> dict[str, Any]:
    """One fine-tune (``finetune.seed=seed``) + test-split evaluation (final and early weights):
    per-class Dice of both, plus the split and timings."""
    from pgl_core.finetune import EARLY_MODEL_DIR, run_finetuning
    from pgl_core.sinks import NullSink
    from pgl_core.study import headline

    cfg = cfg.model_copy(deep=True)
    cfg.finetune.seed = int(seed)
    tag = tag or ("random" if init == "random" else os.path.basename(init).split("-")[0])
    out = os.path.join(work, "finetune", f"{dataset}-{tag}-s{seed}")
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    res = run_finetuning(cfg, store_root, dataset, init, out, sink=NullSink(), device=device)
    per_class = _class_dice(res.model_dir, store_root, dataset, os.path.join(out, "eval"), device)
    early = {}
    early_dir = os.path.join(out, EARLY_MODEL_DIR)
    if cfg.finetune.early_eval_step and os.path.isdir(early_dir):
        early = _class_dice(early_dir, store_root, dataset, os.path.join(out, "eval-early"), device)
    return {"dice": headline(per_class), "per_class": per_class, "early_per_class": early,
            "best_val_dice": res.best_val_dice, "best_step": res.best_step, "test": res.split["test"],
            "train": res.split["train"], "seconds": time.perf_counter() - t0}


def format_table(table: dict[str, Any], inits: list[str]) -> str:
    """Markdown table: dataset x init, mean Dice (learnable classes) +- std (n seeds), and the mean."""
    lines = ["| dataset | " + " | ".join(inits) + " |", "|---" * (len(inits) + 1) + "|"]
    for ds, row in table.items():
        cells = [f"{row[i]['mean_dice']:.3f} ± {row[i]['std_dice']:.3f} (n={row[i]['n_seeds']})" if i in row else "-"
                 for i in inits]
        lines.append(f"| {ds} | " + " | ".join(cells) + " |")
    means = [statistics.fmean(table[d][i]["mean_dice"] for d in table if i in table[d]) for i in inits]
    lines.append("| **mean** | " + " | ".join(f"**{m:.3f}**" for m in means) + " |")
    return "\n".join(lines)


def format_paired(pairs: dict[str, Any]) -> str:
    """Markdown table of paired differences with their 95 % intervals."""
    lines = ["| dataset | difference | mean | 95% CI | n |", "|---|---|---|---|---|"]
    for ds, d in pairs.items():
        for name, p in d.items():
            lines.append(f"| {ds} | {name} | {p['mean']:+.3f} | [{p['ci95'][0]:+.3f}, {p['ci95'][1]:+.3f}] | {p['n']} |")
    return "\n".join(lines)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=None, help="YAML config on top of the tiny preset.")
    p.add_argument("--shape", type=int, nargs=3, default=(24, 48, 48), help="Phantom shape (z, y, x) voxels.")
    p.add_argument("--spacing", type=float, nargs=3, default=(8.0, 8.0, 10.0), help="Plan spacing (x, y, z) mm.")
    p.add_argument("--cases", type=int, default=10, help="Labelled cases per dataset kind.")
    p.add_argument("--pool", type=int, default=16, help="Unlabelled pool cases.")
    p.add_argument("--seeds", type=int, default=5, help="Fine-tune seeds 0..N-1 (default 5).")
    p.add_argument("--gate-steps", type=int, default=None,
                   help="Fine-tune steps of the supervised gate (default: finetune.steps); 0 = no gate.")
    p.add_argument("--parallel", type=int, default=1, help="Fine-tunes at once (processes; GPU: several).")
    p.add_argument("--threads", type=int, default=1, help="torch threads per fine-tune (CPU).")
    p.add_argument("--device", default=None, help="cpu, cuda or empty for automatic.")
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

    from pgl_core.study import results as study_results

    torch.set_num_threads(args.threads)
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
    gate_steps = ft_cfg.finetune.steps if args.gate_steps is None else args.gate_steps
    jobs = [(names[k], "gate", 0) for k in args.kinds] if gate_steps else []
    jobs += [(names[k], init, seed) for k in args.kinds for seed in range(args.seeds) for init in args.inits]
    records = finetune_jobs(args, ft_cfg, store_root, inits, jobs, gate_steps, timings)
    timings["total"] = time.perf_counter() - t_all
    out = {**study_results([r for r in records if not r["gate"]], [r for r in records if r["gate"]]),
           "_meta": {"timings_s": timings, "runs": records,
                     "settings": {**{k: v for k, v in vars(args).items() if k not in ("fresh",)},
                                  "finetune_labelled": ft_cfg.finetune.labelled, "gate_steps": gate_steps}}}
    with open(args.out or os.path.join(args.work, "results.json"), "w") as fh:
        json.dump(out, fh, indent=1, default=str)
    return out


def _one_job(job: tuple[str, str, int], cfg: Any, gate_cfg: Any, store_root: str, inits: dict[str, str],
             work: str, device: str | None, threads: int) -> dict[str, Any]:
    """One fine-tune in its own process (weights are seeded from torch's global generator, which
    threads would share: processes keep every (dataset, init, seed) reproducible)."""
    import torch

    torch.set_num_threads(threads)
    ds, init, seed = job
    gate = init == "gate"
    rec = finetune_eval(gate_cfg if gate else cfg, store_root, ds, "random" if gate else inits[init], seed,
                        work, tag=init, device=device)
    print(f"  {ds:14s} {init:6s} seed {seed}: Dice {rec['dice']:.3f} ({rec['seconds']:.1f} s)", flush=True)
    return {**rec, "dataset": ds, "init": "random" if gate else init, "seed": seed, "gate": gate}


def finetune_jobs(args: argparse.Namespace, cfg: Any, store_root: str, inits: dict[str, str],
                  jobs: list[tuple[str, str, int]], gate_steps: int, timings: dict[str, Any]) -> list[dict[str, Any]]:
    """Run (dataset, init or "gate", seed) fine-tunes, ``args.parallel`` processes at a time."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from functools import partial

    gate_cfg = cfg.model_copy(deep=True)
    gate_cfg.finetune.labelled, gate_cfg.finetune.early_eval_step = None, None
    gate_cfg.finetune.steps = max(int(gate_steps), 1)
    run = partial(_one_job, cfg=cfg, gate_cfg=gate_cfg, store_root=store_root, inits=inits, work=args.work,
                  device=args.device, threads=args.threads)
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, args.parallel), mp_context=ctx) as pool:
        records = list(pool.map(run, jobs))
    seconds = [r["seconds"] for r in records]
    timings["finetune_each_mean"] = statistics.fmean(seconds) if seconds else 0.0
    timings["finetune_total"] = sum(seconds)
    return records


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if args.small:
        _apply_small(args)
    results = run_study(args)
    for check in (results.get("gate_checks") or {}).get("checks", []):
        print(f"gate {check['dataset']} {check['class']}: {check['dice']:.3f} (>= {check['threshold']}: "
              f"{'pass' if check['passed'] else 'FAIL'})")
    print(format_table(results["datasets"], list(args.inits)))
    print(format_paired(results["paired"]))
    if results["early"]["paired"]:
        print("early evaluation (finetune.early_eval_step):")
        print(format_paired(results["early"]["paired"]))
    print("verdict:", results["verdict"])
    print("timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in results["_meta"]["timings_s"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
