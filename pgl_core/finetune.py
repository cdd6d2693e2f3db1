"""Supervised segmentation fine-tuning and its ``torchrun`` entry point.

One straight-line loop on 1..N processes (``python -m pgl_core.finetune`` or ``torchrun
--nproc-per-node N -m pgl_core.finetune ...``), in the style of :mod:`pgl_core.pretrain`:
labelled int16 patches from the store (foreground-aware, :mod:`pgl_core.seg_data`) -> HU window +
fine-tuning augmentation in HU (:mod:`pgl_core.seg_augment`), then normalisation, on the device -> SegmentationUNet under
bf16 autocast (CUDA) -> Dice + CE -> backward (DDP) -> clip -> non-finite guard -> step ->
validation Dice (sliding window over the val cases, shared between ranks) every ``eval_every``
steps -> checkpoints (resume restores weights, optimiser, best-so-far, RNG and the data position).

Initialisation: ``init="random"`` or a pretraining output URI (``contract.json`` + ``encoder.pt``);
the pretraining contract is checked against the config and the dataset plan first
(:mod:`pgl_core.seg_contract`). The split and label budget come from :mod:`pgl_core.split` and are
stored with the run (``split.json``). The best-on-validation weights become ``<output>/model/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from pgl_core import checkpoint as ckpt
from pgl_core import distributed as dist_utils
from pgl_core.config import ConfigError, PGLConfig, add_config_arguments, config_to_dict, flatten, load_config
from pgl_core.contract import PretrainContract, load_contract, load_encoder_state
from pgl_core.data import CropSampler, make_loader
from pgl_core.evaluation.metrics import dice_score
from pgl_core.evaluation.sliding_window import sliding_window_predict
from pgl_core.intensity_norm import IntensityNorm, resolve_norm
from pgl_core.sinks import JsonlSink, MetricsSink, NullSink
from pgl_core.nets.unet import SegmentationUNet, cumulative_strides
from pgl_core.optim import param_groups
from pgl_core.pretrain import NonFiniteLossError, _amp_dtype, _set_numerics, _step_seed, _StopFlag
from pgl_core.schedules import lr_at, set_lr
from pgl_core.seg_contract import (build_segmenter_contract, check_pretrain_compat, load_encoder_into,
                                   pretrain_norm, write_model_dir)
from pgl_core.seg_augment import augment_segmentation, lateral_swap_table
from pgl_core.seg_data import SegPatchStream
from pgl_core.seg_loss import dice_ce_loss
from pgl_core.split import split_with_budget
from storage import blobs

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PREEMPTED = 0, 1, 2, 75
EARLY_MODEL_DIR = "model-early"  # finetune.early_eval_step's weights (the study's early evaluation)
_RESUME_SECTIONS = ("model", "intensity")
_RESUME_FT_FIELDS = ("seed", "split_seed", "patch_vox", "batch_size", "labelled", "val_fraction", "test_fraction",
                     "foreground_p")


@dataclass
class FinetuneResult:
    """How a run ended. ``status``: "completed", "stopped" (max_steps) or "preempted" (SIGTERM)."""

    model_dir: str
    best_val_dice: float
    final_val_dice: float
    steps: int
    split: dict[str, Any]
    status: str = "completed"
    best_step: int = -1
    last_loss: float = math.nan
    init: str = "random"
    left_at_init: list[str] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    val_history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Run:
    """What the loop needs besides the model: data, normalisation, split, lineage."""

    store: Any
    manifest: dict[str, Any]
    label_names: dict[int, str]
    num_classes: int
    split: dict[str, Any]
    norm: IntensityNorm
    pre: PretrainContract | None
    init: str
    swap: torch.Tensor | None = None  # left/right label twins (seg_augment.lateral_swap_table)


def _label_names(manifest: dict[str, Any], dataset: str) -> dict[int, str]:
    names = {int(k): str(v) for k, v in (manifest.get("label_names") or {}).items()}
    if not any(k > 0 for k in names):
        raise ConfigError(f"dataset {dataset!r} has no foreground label names ({names}); it cannot be fine-tuned on")
    return {k: names.get(k, f"class_{k}") for k in range(max(names) + 1)}


def prepare_run(cfg: PGLConfig, store: Any, dataset: str, init: str, labelled: float | None,
                storage_options: dict | None) -> _Run:
    """Labelled cases, split + budget, pretraining contract check and the intensity mapping."""
    manifest = store.manifest()
    names = _label_names(manifest, dataset)
    cases = manifest.get("cases", {})
    labelled_ids = [c for c in store.done_cases() if cases.get(c, {}).get("labelled")]
    if not labelled_ids:
        raise ConfigError(f"dataset {dataset!r} has no labelled cases")
    ft = cfg.finetune
    split_seed = ft.seed if ft.split_seed is None else ft.split_seed
    split = split_with_budget(labelled_ids, ft.val_fraction, ft.test_fraction, split_seed,
                              ft.labelled if labelled is None else float(labelled))
    pre = None
    if init == "random":
        norm = resolve_norm(cfg.intensity, {dataset: manifest})
    else:
        pre = load_contract(init, storage_options)
        check_pretrain_compat(pre, cfg, manifest, dataset, init)
        norm = pretrain_norm(pre)
    stride = cumulative_strides(cfg.model)[-1]
    if any(p % s for p, s in zip(ft.patch_vox, stride)):
        raise ConfigError(f"finetune.patch_vox {tuple(ft.patch_vox)} is not divisible by the network's total "
                          f"stride {stride}; choose a multiple, e.g. --set finetune.patch_vox=[...]")
    return _Run(store, manifest, names, len(names), split, norm, pre, init, lateral_swap_table(names))


def build_model(cfg: PGLConfig, run: _Run, storage_options: dict | None) -> tuple[SegmentationUNet, list[str]]:
    """Seeded SegmentationUNet; with a pretraining init, its backbone weights loaded (checked)."""
    torch.manual_seed(cfg.finetune.seed)
    model = SegmentationUNet(cfg.model, run.num_classes)
    if run.pre is None:
        return model, sorted(model.state_dict())
    state = load_encoder_state(run.init, storage_options)
    return model, load_encoder_into(model, state, run.pre, f"init {run.init}")


def build_optimizer(model: nn.Module, cfg: PGLConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov, ``finetune.momentum``) or AdamW at ``finetune.lr``; no decay on biases / norms."""
    groups = param_groups(model.named_parameters(), cfg.finetune.weight_decay)
    if cfg.finetune.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.finetune.lr, momentum=cfg.finetune.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=cfg.finetune.lr)


@torch.no_grad()
def validation_dice(model: nn.Module, run: _Run, case_ids: list[str], cfg: PGLConfig,
                    device: torch.device, bf16: bool) -> float:
    """Mean Dice over (val case, foreground class) pairs (both empty counts 1), cases shared by rank."""
    sums = torch.zeros(2, dtype=torch.float64)
    was_training = model.training
    model.eval()
    pad = float(run.norm.apply(torch.tensor([run.norm.hu_window[0]])).item())
    for case in case_ids[dist_utils.get_rank()::dist_utils.get_world_size()]:
        image = run.norm.apply(torch.from_numpy(np.asarray(run.store.read_full(case), dtype=np.float32)))
        pred = sliding_window_predict(image[None, None], model, cfg.finetune.patch_vox, run.num_classes,
                                      overlap=cfg.finetune.sw_overlap, device=device, bf16=bf16,
                                      pad_value=pad).numpy()
        truth = np.asarray(run.store.read_full(case, "label"))
        for k in range(1, run.num_classes):
            sums[0] += dice_score(pred == k, truth == k)
            sums[1] += 1
    model.train(was_training)
    total = dist_utils.all_reduce_mean(sums.to(device)).cpu()
    return float(total[0] / total[1]) if total[1] > 0 else math.nan


def _save(raw: nn.Module, optimizer: torch.optim.Optimizer, step: int, skipped: int, best: dict[str, Any],
          val_history: list, cfg: PGLConfig, run: _Run, output_uri: str, storage_options: dict | None) -> None:
    """Collective: gather RNG states; rank 0 writes the checkpoint; all wait."""
    rng = dist_utils.all_gather_objects(ckpt.capture_rng())
    if dist_utils.is_main():
        state = {"format_version": 1, "kind": "pgl-finetune", "step": step, "skipped_steps": skipped,
                 "model": raw.state_dict(), "optimizer": optimizer.state_dict(), "best": best,
                 "val_history": val_history, "rng": rng, "config": config_to_dict(cfg), "split": run.split,
                 "init": run.init, "torch_version": torch.__version__}
        ckpt.save_checkpoint(output_uri, step, state, storage_options, keep=cfg.finetune.keep_checkpoints)
    dist_utils.barrier()


def _check_resume(state: dict[str, Any], cfg: PGLConfig, run: _Run, uri: str) -> None:
    saved, now = state["config"], config_to_dict(cfg)
    for section in _RESUME_SECTIONS:
        if saved.get(section) != now.get(section):
            raise ConfigError(f"checkpoint {uri}: config section {section!r} differs from the current run; "
                              "use a new output URI or the same config")
    for name in _RESUME_FT_FIELDS:
        if saved["finetune"].get(name) != now["finetune"].get(name):
            raise ConfigError(f"checkpoint {uri}: finetune.{name} {saved['finetune'].get(name)!r} differs from "
                              f"{now['finetune'].get(name)!r}; use a new output URI or the same value")
    if state.get("split") != run.split or state.get("init") != run.init:
        raise ConfigError(f"checkpoint {uri}: split or init differs from the current run; use a new output URI")


def _resume(raw: nn.Module, optimizer: torch.optim.Optimizer, cfg: PGLConfig, run: _Run, output_uri: str,
            storage_options: dict | None) -> tuple[int, int, dict[str, Any], list]:
    """(step, skipped, best, val_history) from the latest valid checkpoint, or a fresh start."""
    fresh = {"dice": -math.inf, "step": -1, "state": None}
    found = ckpt.load_latest(output_uri, storage_options, map_location="cpu")
    if found is None:
        return 0, 0, fresh, []
    state, uri = found
    _check_resume(state, cfg, run, uri)
    raw.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rng = state.get("rng") or []
    if len(rng) == dist_utils.get_world_size():
        ckpt.restore_rng(rng[dist_utils.get_rank()])
    log.info("resumed from %s at step %d", uri, state["step"])
    return int(state["step"]), int(state.get("skipped_steps", 0)), state["best"], list(state["val_history"])


def run_finetuning(cfg: PGLConfig, store_root: str, dataset: str, init: str, output_uri: str,
                   storage_options: dict | None = None, sink: MetricsSink | None = None,
                   max_steps: int | None = None, labelled: float | None = None,
                   device: str | None = None) -> FinetuneResult:
    """Fine-tune on ``dataset`` from ``init`` ("random" or a pretraining output URI); write checkpoints,
    ``split.json``, ``metrics.jsonl`` and (when complete) ``model/`` under ``output_uri``."""
    from storage.store import DatasetStore

    if labelled is not None:  # the budget actually used is what the saved config records
        if not float(labelled) > 0:
            raise ConfigError(f"labelled must be a count >= 1 or a fraction in (0, 1), got {labelled}")
        cfg = cfg.model_copy(deep=True)
        cfg.finetune.labelled = float(labelled)
    world = dist_utils.init_distributed(device)
    _set_numerics(cfg.finetune.tf32, world.device)
    if cfg.finetune.batch_size % world.world_size:
        raise ConfigError(f"finetune.batch_size {cfg.finetune.batch_size} is not divisible by "
                          f"{world.world_size} ranks")
    store = DatasetStore(store_root, dataset, storage_options=storage_options)
    run = prepare_run(cfg, store, dataset, init, labelled, storage_options)
    raw, left = build_model(cfg, run, storage_options)
    raw = raw.to(world.device)
    optimizer = build_optimizer(raw, cfg)
    step, skipped, best, val_history = _resume(raw, optimizer, cfg, run, output_uri, storage_options)
    model = DDP(raw, device_ids=None) if world.distributed else raw
    own_sink = sink is None
    if not world.is_main:
        sink = NullSink()
    elif sink is None:
        sink = JsonlSink(output_uri.rstrip("/") + "/metrics.jsonl", storage_options)
    if world.is_main:
        blobs.put_bytes_atomic(output_uri.rstrip("/") + "/split.json", json.dumps(run.split, indent=1).encode(),
                               storage_options)
        sink.log_params({**flatten(config_to_dict(cfg)), "world_size": world.world_size, "init": init,
                         "n_train": len(run.split["train"]), "n_val": len(run.split["val"]),
                         "n_test": len(run.split["test"]), "norm.mean_hu": run.norm.mean_hu,
                         "norm.std_hu": run.norm.std_hu})
    res = FinetuneResult(output_uri.rstrip("/") + "/model", math.nan, math.nan, step, run.split, init=init,
                         left_at_init=left, val_history=val_history)
    if val_history:
        res.final_val_dice = float(val_history[-1]["val_dice"])
    try:
        _loop(cfg, world, run, raw, model, optimizer, step, skipped, best, output_uri, storage_options, sink,
              max_steps, res)
        if res.status == "completed" and world.is_main:
            _write_model(cfg, run, raw, res, best, storage_options)
        dist_utils.barrier()
        return res
    finally:
        if own_sink or not world.is_main:
            sink.close()


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _write_model(cfg: PGLConfig, run: _Run, raw: nn.Module, res: FinetuneResult, best: dict[str, Any],
                 storage_options: dict | None, name: str = "model") -> None:
    """The model directory ``<output>/<name>/``: the best weights (the current ones without a best)."""
    state = best["state"] if best["state"] is not None else raw.state_dict()
    metrics = {"val_dice": _finite_or_none(res.best_val_dice), "best_val_dice": _finite_or_none(res.best_val_dice),
               "final_val_dice": _finite_or_none(res.final_val_dice), "best_step": res.best_step,
               "steps": res.steps}
    contract = build_segmenter_contract(config_to_dict(cfg), run.num_classes, run.label_names,
                                        (run.manifest.get("plan") or {}).get("target_spacing_mm"), run.norm,
                                        run.init, run.pre, run.store.dataset, run.store.manifest_hash(),
                                        run.split, metrics)
    write_model_dir(res.model_dir.rsplit("/", 1)[0] + "/" + name, state, contract, run.split, storage_options)


def _step_batch(cfg: PGLConfig, run: _Run, data: dict, step: int, device: torch.device) -> tuple:
    """Augment the HU patches (spatial + intensity in HU), then normalise: (image, label) on ``device``."""
    image = data["image"].to(device, non_blocking=True).float()
    label = data["label"].to(device, non_blocking=True).long()
    gen = torch.Generator().manual_seed(_step_seed(cfg.finetune.seed, dist_utils.get_rank(), step))
    image, label = augment_segmentation(image, label, cfg.finetune.aug, gen, run.swap)
    return run.norm.apply(image), label


def _make_iter(cfg: PGLConfig, run: _Run, world: dist_utils.WorldInfo, step: int) -> Iterator:
    ft = cfg.finetune
    ids = run.split["train"]
    cases = run.manifest.get("cases", {})
    shapes = {c: tuple(int(v) for v in cases[c]["shape_zyx"]) for c in ids}
    sampler = CropSampler(len(ids), ft.crops_per_volume, world.rank, world.world_size, ft.seed)
    stream = SegPatchStream(run.store, ids, shapes, sampler, ft.batch_size // world.world_size,
                            tuple(ft.patch_vox), ft.foreground_p, start_batch=step)
    return iter(make_loader(stream, ft.loader_workers, pin_memory=world.device.type == "cuda"))


def _loop(cfg: PGLConfig, world: dist_utils.WorldInfo, run: _Run, raw: nn.Module, model: nn.Module,
          optimizer: torch.optim.Optimizer, step: int, skipped: int, best: dict[str, Any], output_uri: str,
          storage_options: dict | None, sink: MetricsSink, max_steps: int | None, res: FinetuneResult) -> None:
    ft = cfg.finetune
    total = ft.steps
    end = total if max_steps is None else min(total, step + max_steps)
    it = _make_iter(cfg, run, world, step)
    amp = _amp_dtype(ft.amp, world.device)
    clip = ft.grad_clip if ft.grad_clip > 0 else math.inf
    consecutive, last_ckpt = 0, time.monotonic()
    win = {"t0": time.perf_counter(), "n": 0, "sum": torch.zeros(3, device=world.device)}
    with _StopFlag() as stop:
        while step < end:
            image, label = _step_batch(cfg, run, next(it), step, world.device)
            set_lr(optimizer, lr_at(step, total, ft.lr, ft.warmup_steps, ft.min_lr_ratio))
            autocast = torch.autocast(world.device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
            with autocast:
                logits = model(image)
            out = dice_ce_loss(logits, label)
            losses = torch.stack([out["loss"], out["dice_loss"], out["ce"]]).detach().float()
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            gnorm = torch.nn.utils.clip_grad_norm_(raw.parameters(), clip)
            due = (time.monotonic() - last_ckpt) / 60.0 >= ft.checkpoint_every_minutes
            flags = torch.tensor([float(not torch.isfinite(losses).all()), float(not torch.isfinite(gnorm)),
                                  float(stop.set), float(due)], device=world.device)
            bad_loss, bad_grad, stop_now, due_now = dist_utils.all_reduce_max(flags).tolist()
            if bad_loss or bad_grad:
                skipped, consecutive = skipped + 1, consecutive + 1
                optimizer.zero_grad(set_to_none=True)
                if consecutive >= ft.max_consecutive_nonfinite:
                    raise NonFiniteLossError(f"{consecutive} consecutive non-finite steps ending at step {step}")
            else:
                consecutive = 0
                optimizer.step()
                win["sum"] += losses
                win["n"] += 1
            step += 1
            res.steps, res.last_loss = step, float(losses[0])
            if step == ft.early_eval_step and world.is_main:
                _write_model(cfg, run, raw, res, {"state": None}, storage_options, EARLY_MODEL_DIR)
            if step % ft.log_every == 0 or step == end:
                _log_window(win, step, optimizer, skipped, sink, res)
            if step % ft.eval_every == 0 or step == total:
                _validate(cfg, run, raw, world, amp, step, best, sink, res)
            if stop_now or due_now or step % ft.checkpoint_every_steps == 0 or step == end:
                _save(raw, optimizer, step, skipped, best, res.val_history, cfg, run, output_uri, storage_options)
                last_ckpt = time.monotonic()
            if stop_now:
                res.status = "preempted"
                break
    if res.status != "preempted" and step < total:
        res.status = "stopped"
    res.best_val_dice = best["dice"] if best["step"] >= 0 else math.nan
    res.best_step = best["step"]


def _validate(cfg: PGLConfig, run: _Run, raw: nn.Module, world: dist_utils.WorldInfo, amp: torch.dtype | None,
              step: int, best: dict[str, Any], sink: MetricsSink, res: FinetuneResult) -> None:
    """Collective: validation Dice; the best weights so far are kept (CPU copy) in ``best``."""
    if not run.split["val"]:
        return
    dice = validation_dice(raw, run, run.split["val"], cfg, world.device, amp is not None)
    res.final_val_dice = dice
    res.val_history.append({"step": float(step), "val_dice": dice})
    sink.log_metrics(step, {"val_dice": dice})
    if dice > best["dice"]:
        best.update(dice=dice, step=step, state={k: v.detach().cpu().clone() for k, v in raw.state_dict().items()})


def _log_window(win: dict, step: int, optimizer: torch.optim.Optimizer, skipped: int, sink: MetricsSink,
                res: FinetuneResult) -> None:
    """Collective: average the window's losses over ranks; rank 0 logs them."""
    n = max(win["n"], 1)
    mean = dist_utils.all_reduce_mean(win["sum"] / n).tolist()
    elapsed = max(time.perf_counter() - win["t0"], 1e-9)
    metrics = {"loss": mean[0], "dice_loss": mean[1], "ce": mean[2], "lr": optimizer.param_groups[0]["lr"],
               "skipped_steps": float(skipped), "steps_per_s": win["n"] / elapsed}
    sink.log_metrics(step, metrics)
    res.history.append({"step": float(step), **metrics})
    win.update(t0=time.perf_counter(), n=0, sum=torch.zeros_like(win["sum"]))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pgl_core.finetune", description="Segmentation fine-tuning "
                                "(torchrun-ready).")
    p.add_argument("--store", required=True, help="Store root URI (local path or s3://...).")
    p.add_argument("--dataset", required=True, help="Labelled dataset name in the store.")
    p.add_argument("--init", default="random", help="'random' or a pretraining output URI.")
    p.add_argument("--output", required=True, help="Run output URI (checkpoints, split.json, model/).")
    p.add_argument("--labelled", type=float, default=None, help="Labelled training cases: count >= 1 or fraction < 1.")
    add_config_arguments(p)
    p.add_argument("--max-steps", type=int, default=None, help="Stop after this many steps of this invocation.")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default).")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI for ``torchrun``. Exit 0 done (or stopped at --max-steps), 75 preempted by SIGTERM
    (checkpoint written; rerun to resume), 2 usage / config / contract error, 1 training failure."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    rank = 0
    try:
        cfg = load_config(args.config, args.overrides, preset=args.preset)
        result = run_finetuning(cfg, args.store, args.dataset, args.init, args.output, max_steps=args.max_steps,
                                labelled=args.labelled, device=args.device)
        rank = dist_utils.get_rank()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLossError as exc:
        print(f"fine-tuning failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        dist_utils.cleanup()
    if rank == 0:
        print(f"fine-tuning {result.status} at step {result.steps}/{cfg.finetune.steps}; best val Dice "
              f"{result.best_val_dice:.4f} (step {result.best_step}), final {result.final_val_dice:.4f}; "
              f"model {result.model_dir if result.status == 'completed' else '(not written yet)'}")
    return EXIT_PREEMPTED if result.status == "preempted" else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
