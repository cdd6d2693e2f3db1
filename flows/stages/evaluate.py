"""The ``evaluate`` flow: Dice, HD95 and NSD of a segmenter on a split of a dataset, with its tables
and overlay PNGs as artifacts of the stage's MLflow run. It runs in this process (no torchrun).

A model reference is a model directory or a registered model (``models:/NAME@ALIAS``,
``models:/NAME/N``, ``runs:/...``), downloaded and cached under the work folder; the reference's
``contract.json`` hash is part of the stage key.
"""

from __future__ import annotations

import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows import artifacts
from flows.retries import retry_transient
from flows.stages.context import current
from flows.stages.keys import contract_hash, manifest_hashes, stage_key, unchanged, write_marker
from flows.stages.params import Device, Unset
from flows.tracking.eval_metrics import evaluation_metrics
from flows.tracking.follow import TRACKING_LOCK, stage_run
from pgl_core.evaluation.report import class_dice
from storage.store import DatasetStore
from storage.uri import check_uri, check_uris, redact_uri


def model_folder(uri: str) -> str:
    """The folder holding the contract for a reference to a local or remote folder: the folder itself,
    or the ``model/`` inside a run output of ``pgl finetune`` (whose root has no contract)."""
    from storage import blobs
    from storage.uri import join_uri

    if not blobs.exists(join_uri(uri, "contract.json")) and blobs.exists(join_uri(uri, "model", "contract.json")):
        return join_uri(uri, "model")
    return uri


def resolve_init(init: str, workdir: str | None) -> tuple[str, str, dict[str, str | None] | None]:
    """``(init argument for the training module, init hash, registry reference)``; registered models
    are downloaded, and the reference is what they were resolved to (``{"uri": "models:/NAME/N",
    "run_id": ...}``, an alias pinned to its version), None for ``random`` and folders."""
    if init == "random":
        return "random", "random", None
    if init.startswith(("models:/", "runs:/")):
        from flows.tracking.mlflow_run import tracking_uri
        from flows.tracking.registry import resolve_pinned

        cache = str(Path(workdir) / "model-cache") if workdir else None
        with TRACKING_LOCK:
            local, pin = resolve_pinned(init, cache_dir=cache, tracking_uri=tracking_uri(workdir))
        return local, contract_hash(local), {"uri": pin.uri, "run_id": pin.run_id}
    folder = model_folder(check_uri(init, "init"))
    return folder, contract_hash(folder), None


def _mean_dice(summary: dict[str, Any]) -> float | None:
    try:
        return float(summary["overall"]["dice"]["mean"])
    except (KeyError, TypeError, ValueError):
        return None


@task(name="evaluate-model", retries=2, retry_delay_seconds=[2, 10], retry_condition_fn=retry_transient,
      cache_policy=NO_CACHE)
def evaluate_task(model_dir: str, store: str, dataset: str, output: str, split: str, overlays: int,
                  device: str | None) -> dict[str, Any]:
    """Sliding-window evaluation of one model on one split (in this process)."""
    from pgl_core.evaluate import evaluate_model

    return evaluate_model(model_dir, store, dataset, output, split=split, overlays=overlays, device=device)


def run_evaluate(model: str, store: str, dataset: str, output: str, split: str = "test", overlays: int = 3,
                 device: str | None = None, force: bool = False, workdir: str | None = None,
                 parent_run_id: str | None = None) -> dict[str, Any]:
    """Body of the evaluate flow; ``output`` is a folder or URI (tables, overlays, stage.json)."""
    logger = get_run_logger()
    check_uris(store=store, output=output)
    model_dir, model_hash, model_ref = resolve_init(model, workdir)
    hashes = manifest_hashes(store, [dataset])
    key = stage_key("evaluate", {}, hashes, model_hash, {"split": split, "overlays": overlays})
    previous = None if force else unchanged(output, key, [])
    if previous is not None:
        logger.info("evaluate %s -> %s: skipped (unchanged model and dataset)", dataset, output)
        return {**previous, "status": "skipped"}
    with stage_run("evaluate", workdir, parent_run_id, output, {"pgl.dataset": dataset}) as sink, \
            written_locally(output) as folder:
        summary = evaluate_task(model_dir, store, dataset, folder, split, overlays, device)
        metrics = evaluation_metrics(summary, split)
        with TRACKING_LOCK:
            sink.log_params({"model": model, "dataset": dataset, "split": split,
                             **({"model_version": model_ref["uri"]} if model_ref else {})})
            sink.log_manifests({dataset: DatasetStore(store, dataset).manifest()}, store, "evaluation")
            dice = _mean_dice(summary)
            sink.log_metrics(0, {**({"mean_dice": dice} if dice is not None else {}), **metrics})
            sink.log_dict(summary, "summary.json", "eval")
            tables = local_files(folder, (".csv", ".json"))
            if tables:
                sink.log_artifacts([t for t in tables if not t.endswith("stage.json")], "eval")
            pngs = local_files(folder, (".png",))
            if pngs:
                sink.log_artifacts(pngs, "overlays")
    result = {"stage": "evaluate", "status": "done", "dataset": dataset, "model": model, "output": output,
              "key": key, "mean_dice": _mean_dice(summary), "split": split, "run_id": sink.run_id, "metrics": metrics,
              "overall": summary.get("overall"), "per_class": class_dice(summary)}
    write_marker(output, key, result)
    publish_evaluation(summary, dataset, split, model, output)
    logger.info("evaluate %s: mean Dice %s", dataset, result["mean_dice"])
    return result


@flow(name="evaluate", log_prints=True)
def evaluate_flow(model: str, store: str, dataset: str, output: str,
                  split: Literal["test", "val", "train", "all"] = "test", overlays: int = 3,
                  device: Device | Unset = None, force: bool = False) -> dict[str, Any]:
    """Evaluate a segmenter (Dice, HD95, NSD per case and class) on a split of a dataset.

    Args:
        model: Model directory, or a registered model such as models:/pgl-seg-NAME@champion.
        store: Store root: a folder or s3://bucket/prefix.
        dataset: Labelled dataset name in the store.
        output: Folder or URI for the tables (metrics.csv, metrics.json) and overlay PNGs.
        split: Which cases: the model's test, val or train split, or all labelled cases.
        overlays: Overlay PNGs written for the first cases.
        device: cpu, cuda or empty for automatic.
        force: Evaluate even when model and dataset are unchanged since the last evaluation.
    """
    ctx = current()
    return run_evaluate(model, store, dataset, output, split, overlays, device, force, ctx.workdir, ctx.parent_run_id)


def publish_evaluation(summary: dict[str, Any], dataset: str, split: str, model: str, output: str) -> None:
    """The run's result artifact: Dice, HD95 (mm) and NSD per class (mean over cases, and how many
    cases had a finite value), then the pooled row."""
    groups = [*(summary.get("per_class") or {}).items(), ("overall", summary.get("overall") or {})]
    rows = []
    for name, metrics in groups:
        row: dict[str, Any] = {"class": name}
        for metric in ("dice", "hd95", "nsd"):
            stats = metrics.get(metric) or {}
            row[f"{metric}_mean"] = stats.get("mean")
            row[f"{metric}_n"] = stats.get("n")
        rows.append(row)
    key = artifacts.artifact_key("evaluate", dataset, Path(output.rstrip("/")).name)
    artifacts.table(key, rows, f"{dataset} {split} split, {summary.get('n_cases', '?')} case(s), model "
                               f"{redact_uri(model)}: per-class Dice, HD95 (mm), NSD")


@contextmanager
def written_locally(output: str) -> Iterator[str]:
    """A local folder for the evaluation's files: ``output`` itself when it is local, else a
    temporary folder uploaded to ``output`` when the body succeeds (then removed)."""
    from storage import blobs
    from storage.uri import is_local, join_uri, local_path

    if is_local(output):
        yield local_path(output)
        return
    folder = Path(tempfile.mkdtemp(prefix="pgl-eval-"))
    try:
        yield str(folder)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            blobs.put_bytes_atomic(join_uri(output, path.relative_to(folder).as_posix()), path.read_bytes())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def local_files(folder: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files under a local ``folder`` with one of ``suffixes`` (none for remote folders)."""
    if "://" in folder and not folder.startswith("file://"):
        return []
    root = Path(folder.removeprefix("file://"))
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix in suffixes) if root.is_dir() else []
