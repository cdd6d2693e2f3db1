"""The ``pretrain`` flow: PGL pretraining of an encoder on Zarr datasets, registered as ``pgl-encoder``.

Training runs under torchrun in a subprocess (one node) or on several Dask workers (``nnodes`` > 1,
:mod:`flows.launch`); its rank 0 writes ``<output>/metrics.jsonl``, which this flow forwards to
the stage's MLflow run while training runs. Outputs: ``<output>/encoder.pt``, ``contract.json``,
checkpoints and ``stage.json`` (the stage key; a rerun with the same key is skipped).
"""

from __future__ import annotations

from typing import Any, Literal

from prefect import flow, get_run_logger

from flows.launch import LaunchSpec, launch_task
from flows.stages.context import current
from flows.stages.keys import config_sections, manifest_hashes, resolve_config, stage_key, unchanged, write_marker
from flows.stages.params import Device, Preset, Unset
from flows.tracking.follow import TRACKING_LOCK, follow_metrics, stage_run
from pgl_core.config import PGLConfig, config_to_dict
from storage import blobs
from storage.store import DatasetStore
from storage.uri import check_uris, join_uri

PRETRAIN_MODULE = "pgl_core.pretrain"
PRETRAIN_SECTIONS = ("intensity", "views", "model", "loss", "optim", "train")
PRETRAIN_OUTPUTS = ["encoder.pt", "contract.json"]


def pretrain_key(cfg: PGLConfig, hashes: dict[str, str]) -> str:
    """The pretrain stage key: its config sections and the input datasets' manifest hashes."""
    return stage_key("pretrain", config_sections(cfg, PRETRAIN_SECTIONS), hashes)


def register_output(output: str, run_id: str | None, tracking: str | None,
                    storage_options: dict | None = None) -> dict[str, Any] | None:
    """Register a pretraining output as a ``pgl-encoder`` version; None (and a warning) on failure."""
    from flows.tracking.registry import register_encoder

    try:
        with TRACKING_LOCK:
            return register_encoder(output, run_id, tracking_uri=tracking, storage_options=storage_options).to_dict()
    except Exception as err:  # noqa: BLE001 - registration never fails a finished training
        get_run_logger().warning("pretrain: registering %s failed (%s: %s); use the folder URI instead",
                                 output, type(err).__name__, err)
        return None


def run_pretrain(store: str, datasets: list[str], output: str, cfg: PGLConfig, spec: LaunchSpec = LaunchSpec(),
                 device: str | None = None, register: bool = True, force: bool = False,
                 workdir: str | None = None, parent_run_id: str | None = None,
                 storage_options: dict | None = None, max_steps: int | None = None) -> dict[str, Any]:
    """Body of the pretrain flow; returns the stage result (``status`` "done", "skipped", or "stopped"
    when ``max_steps`` ended this run before the last step: rerun to resume)."""
    logger = get_run_logger()
    check_uris(store=store, output=output)
    hashes = manifest_hashes(store, datasets, storage_options)
    key = pretrain_key(cfg, hashes)
    previous = None if force else unchanged(output, key, PRETRAIN_OUTPUTS, storage_options)
    if previous is not None:
        logger.info("pretrain -> %s: skipped (unchanged config and inputs, key %s)", output, key[:12])
        return {**previous, "status": "skipped"}
    tags = {"pgl.mode": cfg.loss.mode, "pgl.datasets": ",".join(datasets)}
    with stage_run("pretrain", workdir, parent_run_id, output, tags) as sink:
        with TRACKING_LOCK:
            sink.log_config(config_to_dict(cfg))
            sink.log_manifests({d: DatasetStore(store, d, storage_options).manifest() for d in datasets}, store,
                               "training")
        flags = {"store": store, "datasets": ",".join(datasets), "output": output, "device": device,
                 "max-steps": max_steps}
        with follow_metrics(sink, output, storage_options, stage="pretrain", total_steps=cfg.train.steps):
            nodes = launch_task(PRETRAIN_MODULE, flags, cfg, spec)
        if not all(blobs.exists(join_uri(output, f), storage_options) for f in PRETRAIN_OUTPUTS):
            logger.info("pretrain -> %s: stopped after --max-steps %s; rerun to resume", output, max_steps)
            return {"stage": "pretrain", "status": "stopped", "output": output, "key": key, "run_id": sink.run_id}
        if register and not sink.online:
            logger.warning("pretrain: MLflow tracking is unavailable, so %s is not registered (use the folder as the "
                           "encoder; `pgl replay-metrics --output %s` sends its metrics later)", output, output)
            register = False
        registration = register_output(output, sink.run_id, sink.tracking_uri, storage_options) if register else None
    result = {"stage": "pretrain", "status": "done", "output": output, "key": key, "mode": cfg.loss.mode,
              "datasets": hashes, "nodes": nodes, "run_id": sink.run_id, "registration": registration,
              "encoder_uri": registration["model_uri"] if registration else output}
    write_marker(output, key, result, storage_options)
    logger.info("pretrain -> %s: done (%s)", output, result["encoder_uri"])
    return result


@flow(name="pretrain", log_prints=True)
def pretrain_flow(store: str, datasets: list[str], output: str, preset: Preset = "paper",
                  config: str | Unset = None, overrides: list[str] | Unset = None,
                  steps: int | Unset = None, mode: Literal["pgl", "global", "local"] | Unset = None,
                  nproc: int = 1, nnodes: int = 1, dask_address: str | Unset = None,
                  threads: int | Unset = None, device: Device | Unset = None,
                  register_model: bool = True, force: bool = False,
                  max_steps: int | Unset = None) -> dict[str, Any]:
    """PGL self-supervised pretraining of an encoder; registers it as `pgl-encoder`.

    Args:
        store: Store root: a folder or s3://bucket/prefix.
        datasets: Dataset names in the store to pretrain on (labelled and unlabelled alike).
        output: Run output folder or URI (checkpoints, encoder.pt, contract.json, stage.json).
        preset: Config preset: paper (the defaults) or tiny (tests, demo).
        config: YAML config file applied on top of the preset (see deploy/configs/).
        overrides: Config overrides `section.key=value`, e.g. ["train.steps=200"] (like --set).
        steps: Optimisation steps (sets train.steps).
        mode: pgl (global + local), global (the BYOL baseline) or local (sets loss.mode).
        nproc: Training processes per node (one per GPU).
        nnodes: Nodes; more than 1 launches one torchrun per Dask worker (needs a Dask cluster).
        dask_address: Dask scheduler for nnodes > 1 (default: env PGL_DASK_ADDRESS).
        threads: CPU threads per training process (OMP_NUM_THREADS); empty = cores / processes.
        device: cpu, cuda or empty for automatic.
        register_model: Register the encoder in the MLflow model registry.
        force: Train even when config and inputs are unchanged since the last finished run.
        max_steps: Stop after this many steps of this run (resumable: the stage is done only when
            every step ran).
    """
    extra = list(overrides or [])
    if steps:
        extra.append(f"train.steps={steps}")
    if mode:
        extra.append(f"loss.mode={mode}")
    cfg = resolve_config(preset, config, extra)
    spec = LaunchSpec(nproc=nproc, nnodes=nnodes, dask_address=dask_address, threads=threads)
    ctx = current()
    return run_pretrain(store, list(datasets), output, cfg, spec, device=device, register=register_model, force=force,
                        workdir=ctx.workdir, parent_run_id=ctx.parent_run_id, max_steps=max_steps)


def encoder_output(output_root: str, mode: str) -> str:
    """Where the pipeline puts the pretraining run of ``mode`` (``<output>/pretrain-<mode>``)."""
    return join_uri(output_root, f"pretrain-{mode}")
