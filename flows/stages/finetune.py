"""The ``finetune`` flow: one dataset's segmenter, its test-set evaluation, and its registration as
``pgl-seg-<dataset>`` with the evaluation's mean Dice (so ``champion`` moves only when a new version
beats it).

``finetune`` starts from an init reference: ``random``, a pretraining output folder / URI, or a
registered encoder (``models:/pgl-encoder@champion``, the default, resolved at run time: rerunning
only this stage picks up the latest champion). Training runs under torchrun in a subprocess (or on
Dask workers for ``nnodes`` > 1); ``<output>/metrics.jsonl`` is forwarded to MLflow while it runs.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from flows.launch import LaunchSpec, launch_task
from flows.stages.context import current
from flows.stages.evaluate import resolve_init, run_evaluate
from flows.stages.keys import config_sections, manifest_hashes, resolve_config, stage_key, unchanged, write_marker
from flows.stages.params import Device, Preset, Unset
from flows.tracking.follow import TRACKING_LOCK, follow_metrics, register_parent, stage_run
from pgl_core.config import PGLConfig, config_to_dict
from storage import blobs
from storage.store import DatasetStore
from storage.uri import check_uris, join_uri

FINETUNE_MODULE = "pgl_core.finetune"
FINETUNE_SECTIONS = ("intensity", "model", "finetune")
DEFAULT_INIT = "models:/pgl-encoder@champion"


def _register(model_dir: str, dataset: str, run_id: str | None, dice: float | None,
              tracking: str | None) -> dict[str, Any] | None:
    from flows.tracking.registry import register_segmenter

    try:
        with TRACKING_LOCK:
            metrics = {"mean_dice": dice} if dice is not None else {}
            return register_segmenter(model_dir, dataset, run_id, metrics, tracking_uri=tracking).to_dict()
    except Exception as err:  # noqa: BLE001 - registration never fails a finished training
        get_run_logger().warning("finetune %s: registering %s failed (%s: %s)", dataset, model_dir,
                                 type(err).__name__, err)
        return None


def finetune_key(cfg: PGLConfig, dataset_hash: dict[str, str], init_hash: str, labelled: float | None,
                 evaluate: bool, split: str) -> str:
    """The finetune stage key: its config sections, the dataset manifest and the init contract."""
    return stage_key("finetune", config_sections(cfg, FINETUNE_SECTIONS), dataset_hash, init_hash,
                     {"labelled": labelled, "evaluate": evaluate, "split": split})


def run_finetune(store: str, dataset: str, output: str, cfg: PGLConfig, init: str = DEFAULT_INIT,
                 labelled: float | None = None, spec: LaunchSpec = LaunchSpec(), device: str | None = None,
                 evaluate: bool = True, split: str = "test", register: bool = True, force: bool = False,
                 workdir: str | None = None, parent_run_id: str | None = None,
                 max_steps: int | None = None) -> dict[str, Any]:
    """Body of the finetune flow: train, evaluate, register; returns the stage result (``status``
    "done", "skipped", or "stopped" when ``max_steps`` ended this run early: rerun to resume)."""
    logger = get_run_logger()
    check_uris(store=store, output=output)
    init_arg, init_hash, init_ref = resolve_init(init, workdir)
    hashes = manifest_hashes(store, [dataset])
    key = finetune_key(cfg, hashes, init_hash, labelled, evaluate, split)
    previous = None if force else unchanged(output, key, ["model/contract.json"])
    if previous is not None:
        logger.info("finetune %s (init %s) -> %s: skipped (unchanged config, dataset and init)", dataset, init, output)
        return {**previous, "status": "skipped"}
    tags = {"pgl.dataset": dataset, "pgl.init": init, "pgl.seed": cfg.finetune.seed}
    with stage_run("finetune", workdir, parent_run_id, output, tags) as sink:
        register_parent(sink)
        with TRACKING_LOCK:
            sink.log_config(config_to_dict(cfg))
            sink.log_manifests({dataset: DatasetStore(store, dataset).manifest()}, store, "training")
            sink.log_params({"init": init, "init_contract_hash": init_hash,
                             **({"init_model": init_ref["uri"]} if init_ref else {})})
        flags = {"store": store, "dataset": dataset, "init": init_arg, "output": output, "device": device,
                 "labelled": None if labelled is None else repr(float(labelled)), "max-steps": max_steps,
                 "init-ref": (init_ref or {}).get("uri"), "init-run": (init_ref or {}).get("run_id")}
        with follow_metrics(sink, output, stage="finetune", total_steps=cfg.finetune.steps):
            nodes = launch_task(FINETUNE_MODULE, flags, cfg, spec)
        model_dir = join_uri(output, "model")
        if not blobs.exists(join_uri(model_dir, "contract.json")):
            logger.info("finetune %s -> %s: stopped after --max-steps %s; rerun to resume", dataset, output, max_steps)
            return {"stage": "finetune", "status": "stopped", "dataset": dataset, "output": output, "key": key,
                    "run_id": sink.run_id}
        evaluation = None
        if evaluate:
            evaluation = run_evaluate(model_dir, store, dataset, join_uri(output, f"eval-{split}"), split,
                                      device=device, force=True, workdir=workdir, parent_run_id=sink.run_id)
        early = None
        if evaluate and cfg.finetune.early_eval_step is not None and cfg.finetune.early_eval_step < cfg.finetune.steps:
            early = run_evaluate(join_uri(output, "model-early"), store, dataset, join_uri(output, f"eval-early-{split}"),
                                 split, overlays=0, device=device, force=True, workdir=workdir,
                                 parent_run_id=sink.run_id)
        dice = evaluation["mean_dice"] if evaluation else None
        if evaluation:  # the headline test metrics on the fine-tuning run too (same names)
            with TRACKING_LOCK:
                sink.log_metrics(cfg.finetune.steps, evaluation.get("metrics") or {})
        registration = _register(model_dir, dataset, sink.run_id, dice, sink.tracking_uri) if register else None
    result = {"stage": "finetune", "status": "done", "dataset": dataset, "init": init, "seed": cfg.finetune.seed,
              "output": output, "model_dir": model_dir, "key": key, "nodes": nodes, "run_id": sink.run_id,
              "mean_dice": dice, "evaluation": evaluation, "registration": registration,
              "per_class": (evaluation or {}).get("per_class"), "early_per_class": (early or {}).get("per_class"),
              "early_step": cfg.finetune.early_eval_step if early else None}
    write_marker(output, key, result)
    logger.info("finetune %s (init %s, seed %d): done, test mean Dice %s", dataset, init, cfg.finetune.seed, dice)
    return result


@flow(name="finetune", log_prints=True)
def finetune_flow(store: str, dataset: str, output: str, init: str = DEFAULT_INIT,
                  preset: Preset = "paper", config: str | Unset = None,
                  overrides: list[str] | Unset = None, labelled: float | Unset = None, seed: int | Unset = None,
                  steps: int | Unset = None, nproc: int = 1, nnodes: int = 1, dask_address: str | Unset = None,
                  threads: int | Unset = None,
                  device: Device | Unset = None, evaluate: bool = True, register_model: bool = True,
                  force: bool = False, max_steps: int | Unset = None) -> dict[str, Any]:
    """Fine-tune a segmenter on one dataset, evaluate it on its test split and register it.

    Args:
        store: Store root: a folder or s3://bucket/prefix.
        dataset: Labelled dataset name in the store.
        output: Run output folder or URI (checkpoints, split.json, model/, stage.json).
        init: random, a pretraining output folder, or a registered encoder (models:/pgl-encoder@champion).
        preset: Config preset: paper (the defaults) or tiny (tests, demo).
        config: YAML config file applied on top of the preset (see deploy/configs/).
        overrides: Config overrides `section.key=value`, e.g. ["finetune.steps=200"] (like --set).
        labelled: Labelled training cases: a count (>= 1) or a fraction (< 1); empty = the config's.
        seed: Seed of split, weights and sampling (sets finetune.seed).
        steps: Optimisation steps (sets finetune.steps).
        nproc: Training processes per node (one per GPU).
        nnodes: Nodes; more than 1 launches one torchrun per Dask worker (needs a Dask cluster).
        dask_address: Dask scheduler for nnodes > 1 (default: env PGL_DASK_ADDRESS).
        threads: CPU threads per training process (OMP_NUM_THREADS); empty = cores / processes.
        device: cpu, cuda or empty for automatic.
        evaluate: Evaluate on the test split after training (its mean Dice decides the champion).
        register_model: Register the segmenter as pgl-seg-DATASET in the MLflow model registry.
        force: Train even when config, dataset and init are unchanged since the last finished run.
        max_steps: Stop after this many steps of this run (resumable: the stage is done only when
            every step ran).
    """
    extra = list(overrides or [])
    if seed is not None:
        extra.append(f"finetune.seed={seed}")
    if steps:
        extra.append(f"finetune.steps={steps}")
    cfg = resolve_config(preset, config, extra)
    spec = LaunchSpec(nproc=nproc, nnodes=nnodes, dask_address=dask_address, threads=threads)
    ctx = current()
    return run_finetune(store, dataset, output, cfg, init, labelled, spec, device, evaluate,
                        register=register_model, force=force, workdir=ctx.workdir, parent_run_id=ctx.parent_run_id,
                        max_steps=max_steps)
