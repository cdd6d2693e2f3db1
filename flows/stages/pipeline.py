"""The ``pipeline`` flow: preprocess every dataset -> pretrain -> fine-tune (+ evaluate + register)
every labelled dataset for every (init, seed) of the grid, the fine-tunes in parallel.

Stages are the stage flows (subflows here) and hand each other URIs: the store + dataset names,
the pretraining output (or its registered ``models:/pgl-encoder/N``), model directories. Each
stage skips itself when its key (config section + input manifests + init contract) matches the
``stage.json`` of its output, so rerunning the pipeline with nothing changed only checks keys.
One failed fine-tune does not cancel the others; the run ends Failed naming every failed item.

``inits`` x ``seeds`` is the initialisation study: ``pgl`` (PGL encoder), ``global`` (BYOL-style
encoder, pretrained with ``loss.mode=global``) and ``random``; ``<output>/results.json`` (and
``<workdir>/results.json``) maps dataset -> init -> {mean_dice, std_dice, n_seeds, dice_per_seed}.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait

from flows import artifacts
from flows.cluster import dask_task_runner
from flows.stages.context import current, stage_context
from flows.stages.finetune import finetune_flow
from flows.stages.keys import resolve_config
from flows.stages.params import Device, Preset, Unset
from flows.stages.preprocess import preprocess_flow, request_overrides
from flows.stages.pretrain import encoder_output, pretrain_flow
from flows.stages.results import study_results, summarise_results, summary_lines
from flows.tracking.follow import TRACKING_LOCK, register_parent
from pgl_core.config import PGLConfig, config_to_dict
from storage import blobs
from storage.store import DatasetStore
from storage.uri import check_uris, join_uri

INITS = ("pgl", "global", "random")


class PipelineFailed(RuntimeError):
    """Some work items of a pipeline run failed (after all others finished); the message names them."""


def discover_inputs(input: str, datasets: list[str] | None) -> list[str]:
    """Dataset names: ``datasets`` if given, else the sub-folders of a local ``input`` folder."""
    if datasets:
        return list(datasets)
    root = Path(input)
    if "://" in input or not root.is_dir():
        raise ValueError(f"input {input!r}: give `datasets` (names of the folders under it) for non-local inputs")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise ValueError(f"input folder {input} holds no dataset folders")
    return names


def is_labelled(store: str, dataset: str) -> bool:
    """True when the dataset has at least one done case with a label."""
    manifest = DatasetStore(store, dataset).manifest()
    return any(c.get("labelled") and c.get("status") == "done" for c in (manifest.get("cases") or {}).values())


def _preprocess_all(input: str, names: list[str], store: str, cfg: PGLConfig, force: bool,
                    failures: list[str], dask_address: str | None = None) -> list[str]:
    """Preprocess each dataset (the first one's spacing is shared unless configured); returns usable names."""
    logger = get_run_logger()
    request = cfg.preprocess.model_copy()
    usable = []
    for name in names:
        try:
            summary = preprocess_flow.with_options(task_runner=dask_task_runner(dask_address))(
                join_uri(input, name), name, store, None, force, None, request_overrides(request))
        except Exception as err:  # noqa: BLE001 - one bad dataset does not stop the others
            failures.append(f"preprocess {name}: {type(err).__name__}: {err}")
            continue
        if request.target_spacing_mm is None:
            request.target_spacing_mm = tuple(summary["plan"]["target_spacing_mm"])
        failures += [f"preprocess {name} case {c}: {reason}" for c, _, reason in summary["failed"]]
        state = "skipped (unchanged)" if not summary["done"] and summary["skipped"] else "done"
        logger.info("preprocess %s: %s (%d new, %d unchanged, %d failed)", name, state, len(summary["done"]),
                    len(summary["skipped"]), len(summary["failed"]))
        if summary["done"] or summary["skipped"]:
            usable.append(name)
        elif not summary["failed"]:
            failures.append(f"preprocess {name}: no case found in {join_uri(input, name)}")
    return usable


_SLOTS: dict[int, threading.BoundedSemaphore] = {}


@task(name="finetune-job", cache_policy=NO_CACHE, task_run_name="finetune-{dataset}-{init_name}-seed{seed}")
def finetune_job(store: str, dataset: str, init_name: str, init: str, seed: int, output: str,
                 common: dict[str, Any], slots: int) -> dict[str, Any]:
    """One (dataset, init, seed) fine-tune as a subflow; at most ``slots`` run at once."""
    gate = _SLOTS.setdefault(slots, threading.BoundedSemaphore(slots))
    with gate:
        return finetune_flow.with_options(flow_run_name=f"finetune-{dataset}-{init_name}-seed{seed}")(
            store=store, dataset=dataset, output=output, init=init, seed=seed, **common)


def default_parallel(nproc: int) -> int:
    """Concurrent fine-tunes: one per visible GPU group, else one per two cores (at least one)."""
    try:
        import torch

        gpus = torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        gpus = 0
    if gpus:
        return max(1, gpus // max(nproc, 1))
    return max(1, (os.cpu_count() or 1) // 2)


def _pretrain_all(modes: list[str], store: str, names: list[str], output: str, common: dict[str, Any],
                  failures: list[str]) -> dict[str, dict[str, Any]]:
    done = {}
    for mode in modes:
        try:
            done[mode] = pretrain_flow.with_options(flow_run_name=f"pretrain-{mode}")(
                store=store, datasets=names, output=encoder_output(output, mode), mode=mode,
                register_model=(mode == "pgl"), **common)
        except Exception as err:  # noqa: BLE001 - the other mode's fine-tunes still run
            failures.append(f"pretrain ({mode}): {type(err).__name__}: {str(err)[:2000]}")
    return done


def _write_results(results: dict[str, Any], output: str, workdir: str | None) -> list[str]:
    text = json.dumps(results, indent=1, sort_keys=True).encode()
    targets = [join_uri(output, "results.json")] + ([str(Path(workdir) / "results.json")] if workdir else [])
    for uri in targets:
        blobs.put_bytes_atomic(uri, text)
    return targets


def run_pipeline(input: str, store: str, output: str, cfg: PGLConfig, datasets: list[str] | None = None,
                 inits: list[str] = ("pgl",), seeds: list[int] = (0,), labelled: float | None = None,
                 stage_args: dict[str, Any] | None = None, parallel: int | None = None,
                 workdir: str | None = None, force: bool = False, gate: bool = False,
                 gate_steps: int | None = None) -> dict[str, Any]:
    """Body of the pipeline flow. ``stage_args``: preset/config/overrides/nproc/... for every stage.
    ``gate``: also fine-tune each labelled dataset from random init with all its training labels
    (the study's supervised gate, ``<output>/finetune/DATASET/gate-random``), for ``gate_steps``
    steps (default ``finetune.steps``)."""
    from flows.tracking.mlflow_run import start_run

    logger = get_run_logger()
    check_uris(input=input, store=store, output=output)
    bad = [i for i in inits if i not in INITS]
    if bad:
        raise ValueError(f"unknown init(s) {bad}; choose from {list(INITS)}")
    failures: list[str] = []
    names = _preprocess_all(input, discover_inputs(input, datasets), store, cfg, force, failures,
                            (stage_args or {}).get("dask_address"))
    labelled_names = [n for n in names if is_labelled(store, n)]
    manifests = {n: DatasetStore(store, n).manifest() for n in names}
    with TRACKING_LOCK:
        parent = start_run(workdir, "pipeline", config=config_to_dict(cfg), manifests=manifests,
                           tags={"pgl.inits": ",".join(inits), "pgl.seeds": ",".join(map(str, seeds))})
        register_parent(parent)
    common = {**(stage_args or {}), "force": force}
    try:
        with stage_context(workdir=workdir, parent_run_id=parent.run_id):  # the stage subflows' runs nest
            encoders = _pretrain_all([m for m in ("pgl", "global") if m in inits], store, names, output, common,
                                     failures)
            jobs = finetune_grid(store, labelled_names, inits, seeds, encoders, output, labelled, common,
                                  parallel, failures, gate, gate_steps)
        items = [i for i in jobs if not i.get("gate")]
        gate_items = [i for i in jobs if i.get("gate")]
        results = {**study_results(items, gate_items), "mean_dice_all_classes": summarise_results(items)}
        written = _write_results(results, output, workdir)
        with TRACKING_LOCK:
            parent.log_dict(results, "results.json", "results")
            parent.set_tags({"pgl.failures": len(failures)})
    finally:
        with TRACKING_LOCK:
            parent.close("FAILED" if failures else "FINISHED")
    summary = {"datasets": names, "labelled": labelled_names, "pretrain": encoders, "finetune": items + gate_items,
               "results": results, "results_files": written, "failures": failures, "run_id": parent.run_id,
               "tracking_uri": parent.tracking_uri}
    lines = summary_lines(summary)
    for line in lines:
        logger.info(line)
    artifacts.markdown("pipeline-results", "```\n" + "\n".join(lines) + "\n```",
                       f"pipeline: {len(items)} fine-tune(s), {len(failures)} failure(s); results.json in {output}")
    if failures:
        raise PipelineFailed(f"{len(failures)} work item(s) failed: " + "; ".join(failures))
    return summary


def finetune_grid(store: str, datasets: list[str], inits: list[str], seeds: list[int],
                   encoders: dict[str, dict[str, Any]], output: str, labelled: float | None,
                   common: dict[str, Any], parallel: int | None, failures: list[str],
                   gate: bool = False, gate_steps: int | None = None) -> list[dict[str, Any]]:
    """Fine-tune every (dataset, init, seed) of the grid (and, with ``gate``, each dataset from random
    init with all its labels), at most ``parallel`` at once; returns the finished items' results and
    appends a reason per failed item to ``failures``."""
    nproc = int(common.get("nproc", 1))
    slots = parallel or default_parallel(nproc)
    ft_common = {k: v for k, v in common.items() if k not in ("steps", "mode")}
    ft_common.update(labelled=labelled)
    if ft_common.get("threads") is None and slots > 1:
        # parallel fine-tunes share the cores: never oversubscribe (a 2-core machine slows 50x)
        ft_common["threads"] = max(1, (os.cpu_count() or 1) // (slots * max(nproc, 1)))
    jobs = {}
    for dataset in datasets:
        for init_name in inits:
            if init_name != "random" and init_name not in encoders:
                failures.append(f"finetune {dataset} init {init_name}: no encoder (its pretraining failed)")
                continue
            init = "random" if init_name == "random" else encoders[init_name]["encoder_uri"]
            for seed in seeds:
                out = join_uri(output, "finetune", dataset, f"{init_name}-seed{seed}")
                # the registry holds the candidate models users deploy: the PGL fine-tunes (or the first
                # init when PGL is not in the grid); baselines are measured, not registered
                register = init_name == ("pgl" if "pgl" in inits else inits[0])
                fut = finetune_job.submit(store, dataset, init_name, init, int(seed), out,
                                          {**ft_common, "register_model": register}, slots)
                jobs[fut] = (dataset, init_name, int(seed))
    if gate:  # random init, every training label, no early evaluation: the supervised gate
        gate_common = {**ft_common, "labelled": None, "register_model": False,
                       "overrides": [*ft_common.get("overrides", []), "finetune.labelled=null",
                                     "finetune.early_eval_step=null",
                                     *([f"finetune.steps={int(gate_steps)}"] if gate_steps else [])]}
        for dataset in datasets:
            fut = finetune_job.submit(store, dataset, "gate", "random", int(seeds[0]),
                                      join_uri(output, "finetune", dataset, "gate-random"), gate_common, slots)
            jobs[fut] = (dataset, "gate", int(seeds[0]))
    wait(list(jobs))
    items = []
    for fut, (dataset, init_name, seed) in jobs.items():
        try:
            res = fut.result()
            items.append({**res, "init_name": "random" if init_name == "gate" else init_name, "seed": seed,
                          "gate": init_name == "gate"})
        except Exception as err:  # noqa: BLE001 - reported, the others finished
            failures.append(f"finetune {dataset} init {init_name} seed {seed}: {type(err).__name__}: "
                            f"{str(err)[-1500:]}")
    return items


@flow(name="pipeline", log_prints=True)
def pipeline_flow(input: str, store: str, output: str, datasets: list[str] | Unset = None,
                  preset: Preset = "paper", config: str | Unset = None,
                  overrides: list[str] | Unset = None,
                  inits: list[Literal["pgl", "global", "random"]] = ["pgl"],  # noqa: B006 - shown in the UI
                  seeds: list[int] = [0],  # noqa: B006
                  labelled: float | Unset = None, nproc: int = 1, nnodes: int = 1, dask_address: str | Unset = None,
                  device: Device | Unset = None, parallel: int | Unset = None,
                  force: bool = False, gate: bool = False, gate_steps: int | Unset = None) -> dict[str, Any]:
    """Preprocess every dataset, pretrain on all of them, fine-tune and evaluate every labelled one.

    Args:
        input: Folder (or URI) holding one raw dataset folder per dataset (MSD, volumes or DICOM).
        store: Store root: a folder or s3://bucket/prefix.
        output: Output root: pretrain-MODE/, finetune/DATASET/INIT-seedN/, results.json.
        datasets: Dataset folder names under input; empty = every sub-folder of a local input.
        preset: Config preset: paper (the defaults) or tiny (tests, demo).
        config: YAML config file applied on top of the preset (see deploy/configs/).
        overrides: Config overrides `section.key=value` (like --set), for every stage.
        inits: Initialisations to compare: pgl, global (BYOL-style) and/or random.
        seeds: Fine-tuning seeds per (dataset, init); results report mean and spread over them.
        labelled: Labelled training cases per fine-tune: a count (>= 1) or a fraction (< 1).
        nproc: Training processes per node (one per GPU).
        nnodes: Nodes per training run; more than 1 uses the Dask cluster (one torchrun per worker).
        dask_address: Dask scheduler for ingest and multi-node training (default: env PGL_DASK_ADDRESS).
        device: cpu, cuda or empty for automatic.
        parallel: Fine-tunes running at once (default: one per GPU, else one per two cores).
        force: Redo every stage even when its inputs and config are unchanged.
        gate: Also fine-tune every labelled dataset from random init with all training labels (the
            study's supervised gate; results.json says whether it passed).
        gate_steps: Fine-tune steps of the gate runs (empty = the config's finetune.steps).
    """
    cfg = resolve_config(preset, config, overrides)
    stage_args = {"preset": preset, "config": config, "overrides": list(overrides or []), "nproc": nproc,
                  "nnodes": nnodes, "dask_address": dask_address, "device": device}
    return run_pipeline(input, store, output, cfg, datasets, list(inits), [int(s) for s in seeds], labelled,
                        stage_args, parallel, current().workdir, force, gate, gate_steps)
