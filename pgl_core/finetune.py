"""Supervised segmentation fine-tuning and its ``torchrun`` entry point.

One straight-line loop on 1..N processes (``python -m pgl_core.finetune`` or ``torchrun
--nproc-per-node N -m pgl_core.finetune ...``), in the style of :mod:`pgl_core.pretrain` and on the
bookkeeping both share (:mod:`pgl_core.loop`): labelled int16 patches from the store
(foreground-aware, :mod:`pgl_core.seg_data`) -> HU window + fine-tuning augmentation in HU
(:mod:`pgl_core.seg_augment`), then normalisation, on the device -> SegmentationUNet under bf16
autocast (CUDA) -> Dice + CE -> backward (DDP) -> clip -> non-finite guard -> step -> validation
Dice (sliding window over the val cases, shared between ranks; :mod:`pgl_core.seg_validation`)
every ``eval_every`` steps -> checkpoints (resume restores weights, optimiser, best-so-far, RNG and
the data position), in that order in ``_loop``.

Initialisation: ``init="random"`` or a pretraining output URI (``contract.json`` + ``encoder.pt``);
the pretraining contract is checked against the config and the dataset plan first
(:mod:`pgl_core.adapt`). The split and label budget come from :mod:`pgl_core.split` and are
stored with the run (``split.json``). The best-on-validation weights become ``<output>/model/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import nn

from pgl_core import distributed as dist_utils
from pgl_core.adapt import check_pretrain_compat, load_encoder_into
from pgl_core.config import ConfigError, PGLConfig, config_to_dict, flatten
from pgl_core.contracts import PretrainContract, SegmenterContract, load_encoder_state
from pgl_core.data import CropSampler, make_loader
from pgl_core.intensity_norm import IntensityNorm, resolve_norm
from pgl_core.loop import (Cadence, LoopControl, RunOutput, TrainState, amp_dtype, autocast, check_resume_config, ddp,
                           open_sink, parse_loop_args, resume_train_state, run_main, save_train_state, start_world,
                           step_seed, stop_at)
from pgl_core.nets.unet import SegmentationUNet, cumulative_strides
from pgl_core.optim import param_groups
from pgl_core.schedules import lr_at, set_lr
from pgl_core.seg_augment import augment_segmentation, lateral_swap_table
from pgl_core.seg_data import SegPatchStream
from pgl_core.seg_loss import dice_ce_loss
from pgl_core.seg_validation import validation_dice
from pgl_core.sinks import MetricsSink
from pgl_core.split import split_with_budget
from storage import blobs

log = logging.getLogger(__name__)

EARLY_MODEL_DIR = "model-early"  # finetune.early_eval_step's weights (the study's early evaluation)
LOSS_NAMES = ("loss", "dice_loss", "ce")
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
    init_ref: str | None = None  # what ``init`` was resolved from (models:/NAME/N): the contract's init
    init_run: str | None = None  # the run that produced the init: the contract's lineage


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
        pre = PretrainContract.read(init, storage_options)
        check_pretrain_compat(pre, cfg, manifest, dataset, init)
        norm = pre.norm_from()
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


@dataclass
class _Session:
    """One invocation's fixed pieces; what the loop advances is a :class:`TrainState`."""

    cfg: PGLConfig
    world: dist_utils.WorldInfo
    run: _Run
    out: RunOutput
    sink: MetricsSink
    model: nn.Module  # the forward pass: the raw model, under DDP when distributed
    end: int


def _check_resume(cfg: PGLConfig, run: _Run, checkpoint: dict[str, Any], uri: str) -> None:
    check_resume_config(checkpoint["config"], config_to_dict(cfg), uri, _RESUME_SECTIONS,
                        {"finetune": _RESUME_FT_FIELDS})
    if checkpoint.get("split") != run.split or checkpoint.get("init") != run.init:
        raise ConfigError(f"checkpoint {uri}: split or init differs from the current run; use a new output URI")


def run_finetuning(cfg: PGLConfig, store_root: str, dataset: str, init: str, output_uri: str,
                   storage_options: dict | None = None, sink: MetricsSink | None = None,
                   max_steps: int | None = None, labelled: float | None = None,
                   device: str | None = None, init_ref: str | None = None,
                   init_run: str | None = None) -> FinetuneResult:
    """Fine-tune on ``dataset`` from ``init`` ("random" or a pretraining output URI); write checkpoints,
    ``split.json``, ``metrics.jsonl`` and (when complete) ``model/`` under ``output_uri``.

    ``init_ref``: the reference ``init`` is a local copy of (e.g. ``models:/pgl-encoder/3``), recorded
    in the model's contract instead of the local path; ``init_run``: the run that produced it."""
    from storage.store import DatasetStore

    cfg = _with_budget(cfg, labelled)
    world = start_world(device, cfg.finetune.tf32, cfg.finetune.batch_size, "finetune.batch_size")
    store = DatasetStore(store_root, dataset, storage_options=storage_options)
    run = prepare_run(cfg, store, dataset, init, labelled, storage_options)
    run.init_ref, run.init_run = init_ref, init_run
    raw, left = build_model(cfg, run, storage_options)
    raw = raw.to(world.device)
    state = TrainState(raw, build_optimizer(raw, cfg))
    out = RunOutput(output_uri, storage_options)
    resumed = resume_train_state(state, out, world, partial(_check_resume, cfg, run))
    best, res = _restored(resumed, state, run, out, left)
    model = ddp(raw, world)
    with open_sink(sink, world, out) as sink:
        if world.is_main:
            _log_start(cfg, run, out, sink, world)
        end = stop_at(state.step, cfg.finetune.steps, max_steps)
        _loop(_Session(cfg, world, run, out, sink, model, end), state, best, res)
        if res.status == "completed" and world.is_main:
            _write_model(cfg, run, raw, res, best, storage_options)
        dist_utils.barrier()
        return res


def _with_budget(cfg: PGLConfig, labelled: float | None) -> PGLConfig:
    if labelled is None:
        return cfg
    if not float(labelled) > 0:  # the budget actually used is what the saved config records
        raise ConfigError(f"labelled must be a count >= 1 or a fraction in (0, 1), got {labelled}")
    cfg = cfg.model_copy(deep=True)
    cfg.finetune.labelled = float(labelled)
    return cfg


def _restored(resumed: tuple[dict[str, Any], str] | None, state: TrainState, run: _Run, out: RunOutput,
              left: list[str]) -> tuple[dict[str, Any], FinetuneResult]:
    """The best-so-far and the result at ``state.step`` (their validation history, on resume)."""
    best = resumed[0]["best"] if resumed else {"dice": -math.inf, "step": -1, "state": None}
    res = FinetuneResult(out.join("model"), math.nan, math.nan, state.step, run.split, init=run.init,
                         left_at_init=left, val_history=list(resumed[0]["val_history"]) if resumed else [])
    if res.val_history:
        res.final_val_dice = float(res.val_history[-1]["val_dice"])
    return best, res


def _log_start(cfg: PGLConfig, run: _Run, out: RunOutput, sink: MetricsSink, world: dist_utils.WorldInfo) -> None:
    """Rank 0: ``split.json`` and the run's parameters."""
    blobs.put_bytes_atomic(out.join("split.json"), json.dumps(run.split, indent=1).encode(), out.storage_options)
    sink.log_params({**flatten(config_to_dict(cfg)), "world_size": world.world_size, "init": run.init,
                     "n_train": len(run.split["train"]), "n_val": len(run.split["val"]),
                     "n_test": len(run.split["test"]), "norm.mean_hu": run.norm.mean_hu,
                     "norm.std_hu": run.norm.std_hu})


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _write_model(cfg: PGLConfig, run: _Run, raw: nn.Module, res: FinetuneResult, best: dict[str, Any],
                 storage_options: dict | None, name: str = "model") -> None:
    """The model directory ``<output>/<name>/``: the best weights (the current ones without a best)."""
    state = best["state"] if best["state"] is not None else raw.state_dict()
    metrics = {"val_dice": _finite_or_none(res.best_val_dice), "best_val_dice": _finite_or_none(res.best_val_dice),
               "final_val_dice": _finite_or_none(res.final_val_dice), "best_step": res.best_step,
               "steps": res.steps}
    plan = run.manifest.get("plan") or {}
    contract = SegmenterContract.build(config_to_dict(cfg), run.num_classes, run.label_names,
                                       plan.get("target_spacing_mm"), run.norm, run.init_ref or run.init, run.pre,
                                       run.store.dataset, run.store.manifest_hash(), run.split, metrics, plan,
                                       init_run=run.init_run)
    contract.write(res.model_dir.rsplit("/", 1)[0] + "/" + name, state, storage_options)


def _batch(s: _Session, data: dict, step: int) -> tuple:
    """Augment the HU patches (spatial + intensity in HU), then normalise: (image, label) on the device."""
    cfg, device = s.cfg, s.world.device
    image = data["image"].to(device, non_blocking=True).float()
    label = data["label"].to(device, non_blocking=True).long()
    gen = torch.Generator().manual_seed(step_seed(cfg.finetune.seed, s.world.rank, step))
    image, label = augment_segmentation(image, label, cfg.finetune.aug, gen, s.run.swap)
    return s.run.norm.apply(image), label


def _make_iter(s: _Session, step: int) -> Iterator:
    cfg, run, world = s.cfg, s.run, s.world
    ft = cfg.finetune
    ids = run.split["train"]
    cases = run.manifest.get("cases", {})
    shapes = {c: tuple(int(v) for v in cases[c]["shape_zyx"]) for c in ids}
    sampler = CropSampler(len(ids), ft.crops_per_volume, world.rank, world.world_size, ft.seed)
    stream = SegPatchStream(run.store, ids, shapes, sampler, ft.batch_size // world.world_size,
                            tuple(ft.patch_vox), ft.foreground_p, start_batch=step)
    return iter(make_loader(stream, ft.loader_workers, pin_memory=world.device.type == "cuda"))


def _loop(s: _Session, state: TrainState, best: dict[str, Any], res: FinetuneResult) -> None:
    """Data, forward, backward, clip, step, log, validate, checkpoint -- until ``s.end`` or SIGTERM."""
    cfg = s.cfg
    ft = cfg.finetune
    it = _make_iter(s, state.step)
    amp = amp_dtype(ft.amp, s.world.device)
    clip = ft.grad_clip if ft.grad_clip > 0 else math.inf
    cadence = Cadence(ft.steps, s.end, ft.log_every, ft.checkpoint_every_steps, ft.checkpoint_every_minutes,
                      ft.max_consecutive_nonfinite)
    with LoopControl(cadence, LOSS_NAMES, s.world.device) as ctl:
        while state.step < s.end:
            image, label = _batch(s, ctl.fetch(it), state.step)
            set_lr(state.optimizer, lr_at(state.step, ft.steps, ft.lr, ft.warmup_steps, ft.min_lr_ratio))
            with autocast(s.world.device, amp):
                logits = s.model(image)
            out = dice_ce_loss(logits, label)
            losses = torch.stack([out["loss"], out["dice_loss"], out["ce"]]).detach().float()
            state.optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            gnorm = torch.nn.utils.clip_grad_norm_(state.model.parameters(), clip)
            if ctl.guard(state, losses, gnorm):
                state.optimizer.step()
            ctl.end_step(state)
            res.steps, res.last_loss = state.step, float(losses[0])
            if state.step == ft.early_eval_step and s.world.is_main:
                _write_model(cfg, s.run, state.model, res, {"state": None}, s.out.storage_options, EARLY_MODEL_DIR)
            if ctl.log_due(state.step):
                _log_window(s, ctl, state, res)
            if state.step % ft.eval_every == 0 or state.step == ft.steps:
                _validate(s, state.model, amp is not None, best, res)
            if ctl.checkpoint_due(state.step):
                _save(s, state, best, res.val_history)
                ctl.checkpointed()
            if ctl.stop_now:
                break
    res.status = ctl.status(state.step)
    res.best_val_dice = best["dice"] if best["step"] >= 0 else math.nan
    res.best_step = best["step"]


def _validate(s: _Session, raw: nn.Module, bf16: bool, best: dict[str, Any], res: FinetuneResult) -> None:
    """Collective: validation Dice; the best weights so far are kept (CPU copy) in ``best``."""
    if not s.run.split["val"]:
        return
    cfg, run = s.cfg, s.run
    ft = cfg.finetune
    dice = validation_dice(raw, run.store, run.norm, run.num_classes, run.split["val"], ft.patch_vox, ft.sw_overlap,
                           s.world.device, bf16)
    res.final_val_dice = dice
    res.val_history.append({"step": float(res.steps), "val_dice": dice})
    s.sink.log_metrics(res.steps, {"val_dice": dice})
    if dice > best["dice"]:
        best.update(dice=dice, step=res.steps, state={k: v.detach().cpu().clone() for k, v in raw.state_dict().items()})


def _log_window(s: _Session, ctl: LoopControl, state: TrainState, res: FinetuneResult) -> None:
    """Collective: the window's losses averaged over ranks; rank 0 logs them."""
    stats = ctl.window.stats()
    metrics = {**stats.means, "lr": state.optimizer.param_groups[0]["lr"], "skipped_steps": float(state.skipped),
               "steps_per_s": stats.applied / stats.elapsed}
    ctl.window.log(state.step, metrics, s.sink, res.history,
                   (s.cfg.finetune.steps, s.end) if s.world.is_main else None)


def _save(s: _Session, state: TrainState, best: dict[str, Any], val_history: list) -> None:
    """Collective checkpoint (see :func:`save_train_state`) with the best-so-far and the lineage."""
    cfg = s.cfg
    fields = {"kind": "pgl-finetune", "best": best, "val_history": val_history, "config": config_to_dict(cfg),
              "split": s.run.split, "init": s.run.init}
    save_train_state(state, fields, s.out, cfg.finetune.keep_checkpoints)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help="Labelled dataset name in the store.")
    p.add_argument("--init", default="random", help="'random' or a pretraining output URI.")
    p.add_argument("--init-ref", default=None,
                   help="The reference --init is a local copy of (models:/NAME/N), recorded in the contract.")
    p.add_argument("--init-run", default=None, help="The run that produced --init, recorded in the lineage.")
    p.add_argument("--output", required=True, help="Run output URI (checkpoints, split.json, model/).")
    p.add_argument("--labelled", type=float, default=None, help="Labelled training cases: count >= 1 or fraction < 1.")


def main(argv: list[str] | None = None) -> int:
    """CLI for ``torchrun``. Exit 0 done (or stopped at --max-steps), 75 preempted by SIGTERM
    (checkpoint written; rerun to resume), 2 usage / config / contract error, 1 training failure."""
    args = parse_loop_args(argv, "pgl_core.finetune", "Segmentation fine-tuning (torchrun-ready).", _add_arguments)

    def train(cfg: PGLConfig) -> FinetuneResult:
        return run_finetuning(cfg, args.store, args.dataset, args.init, args.output, max_steps=args.max_steps,
                              labelled=args.labelled, device=args.device, init_ref=args.init_ref,
                              init_run=args.init_run)

    return run_main(args, train, _summary, "fine-tuning")


def _summary(cfg: PGLConfig, result: FinetuneResult) -> str:
    return (f"fine-tuning {result.status} at step {result.steps}/{cfg.finetune.steps}; best val Dice "
            f"{result.best_val_dice:.4f} (step {result.best_step}), final {result.final_val_dice:.4f}; "
            f"model {result.model_dir if result.status == 'completed' else '(not written yet)'}")


if __name__ == "__main__":
    sys.exit(main())
