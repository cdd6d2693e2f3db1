"""The PGL pretraining loop and its ``torchrun`` entry point.

One straight-line loop that runs unchanged on 1..N processes (``python -m pgl_core.pretrain`` or
``torchrun --nproc-per-node N -m pgl_core.pretrain ...``): int16 crops from the store ->
HU window + normalisation and the two views rendered on the device -> PGL loss under bf16
autocast (CUDA) -> backward (DDP averages gradients of the online network; the EMA target only
follows) -> clip -> non-finite guard -> optimiser step -> EMA update -> metrics / checkpoints,
in that order in ``_loop``; the bookkeeping shared with fine-tuning (SIGTERM, the non-finite
guard, the metric window, checkpoint cadence, train-state save / resume) is :mod:`pgl_core.loop`.

Determinism: the view randomness of step ``s`` on rank ``r`` comes from generators seeded by
``(seed, r, s)`` and the crop stream is a pure function of ``(seed, step)`` (see ``data``), so a run
killed at step ``k`` and resumed from its checkpoint follows the uninterrupted trajectory.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from pgl_core import distributed as dist_utils
from pgl_core.config import ConfigError, PGLConfig, config_to_dict, flatten
from pgl_core.contracts import PretrainContract
from pgl_core.data import CropSampler, CropSource, CropStream, index_cases, make_loader, source_size_vox
from pgl_core.ema import base_tau_for_steps
from pgl_core.intensity_norm import IntensityNorm, resolve_norm
from pgl_core.levels import resolve_local_levels
from pgl_core.loop import (Cadence, LoopControl, RunOutput, TrainState, amp_dtype, autocast, check_resume_config, ddp,
                           open_sink, parse_loop_args, resume_train_state, run_main, save_train_state, start_world,
                           step_seed, stop_at)
from pgl_core.optim import build_optimizer
from pgl_core.probe import probe_hook
from pgl_core.schedules import lr_at, set_lr, tau_at
from pgl_core.sinks import MetricsSink

log = logging.getLogger(__name__)

LOSS_NAMES = ("loss", "loss_global", "loss_local")


@dataclass
class Components:
    """The method pieces the loop drives (the real ones by default; tests pass stand-ins)."""

    model_factory: Callable[[PGLConfig], nn.Module]
    sample_views: Callable[..., Any]
    render_views: Callable[..., tuple[torch.Tensor, torch.Tensor]]
    source_shape: Callable[[Any], tuple[int, int, int]] = lambda views: source_size_vox(
        views.patch_vox, views.scale_range)


def default_components() -> Components:
    """PGLModel and the views module's sampler, renderer and source sub-volume size."""
    from pgl_core.pgl import PGLModel
    from pgl_core.views import render_views, sample_views, source_shape_for

    def factory(cfg: PGLConfig) -> nn.Module:
        return PGLModel(cfg.model, cfg.loss, tuple(cfg.views.patch_vox))

    return Components(factory, sample_views, render_views, source_shape_for)


@dataclass
class PretrainResult:
    """How a run ended. ``status``: "completed", "stopped" (max_steps) or "preempted" (SIGTERM)."""

    status: str
    step: int
    total_steps: int
    output_uri: str
    skipped_steps: int = 0
    last_loss: float = math.nan
    samples_per_s: float = math.nan
    data_wait_fraction: float = math.nan
    checkpoint_uri: str | None = None
    encoder_uri: str | None = None
    contract_uri: str | None = None
    history: list[dict[str, float]] = field(default_factory=list)
    probe_history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Session:
    """One invocation's fixed pieces; what the loop advances is a :class:`TrainState`."""

    cfg: PGLConfig
    world: dist_utils.WorldInfo
    comps: Components
    stores: dict[str, CropSource]
    norm: IntensityNorm
    out: RunOutput
    sink: MetricsSink
    model: nn.Module  # the forward pass: the raw model, compiled and / or under DDP
    end: int

    @property
    def batch(self) -> int:  # per rank
        cfg = self.cfg
        return cfg.train.batch_size // self.world.world_size


def _manifests(stores: dict[str, CropSource]) -> tuple[dict[str, dict], dict[str, str]]:
    manifests, hashes = {}, {}
    for name, store in stores.items():
        manifests[name] = store.manifest() if hasattr(store, "manifest") else {}
        hashes[name] = store.manifest_hash() if hasattr(store, "manifest_hash") else ""
    return manifests, hashes


def _check_resume(current: dict[str, Any], checkpoint: dict[str, Any], uri: str) -> None:
    saved = checkpoint["config"]
    check_resume_config(saved, current, uri, ("model", "loss", "views", "intensity"))
    if saved != current:
        log.warning("checkpoint %s: optim/train settings differ from the saved config; continuing", uri)


def wrap_model(raw: nn.Module, cfg: PGLConfig, world: dist_utils.WorldInfo) -> nn.Module:
    """Optionally compile, then DDP over the trainable (online) parameters only.

    The target (``requires_grad=False``) and all buffers are left out of DDP's synchronisation:
    the target follows the online weights, which are identical on every rank. PGLModel builds only
    the heads its mode uses, so every trainable parameter gets a gradient each step
    (``find_unused_parameters=False``; DDP names any parameter that does not).
    """
    model = torch.compile(raw) if cfg.train.compile else raw
    if not world.distributed:
        return model
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    frozen += [n for n, _ in model.named_buffers()]
    return ddp(model, world, ignore=frozen)


def run_pretraining(cfg: PGLConfig, store_root: str, datasets: list[str], output_uri: str,
                    storage_options: dict | None = None, sink: MetricsSink | None = None,
                    max_steps: int | None = None) -> PretrainResult:
    """Pretrain on ``datasets`` of the store at ``store_root``; write checkpoints, ``encoder.pt`` and
    ``contract.json`` under ``output_uri``. Resumes from the latest valid checkpoint there."""
    from storage.store import DatasetStore

    if not datasets:
        raise ConfigError("no datasets given for pretraining")
    stores = {d: DatasetStore(store_root, d, storage_options=storage_options) for d in datasets}
    return pretrain(cfg, stores, output_uri, storage_options=storage_options, sink=sink, max_steps=max_steps)


def pretrain(cfg: PGLConfig, stores: dict[str, CropSource], output_uri: str, storage_options: dict | None = None,
             sink: MetricsSink | None = None, max_steps: int | None = None, components: Components | None = None,
             device: str | None = None) -> PretrainResult:
    """The loop over already-opened dataset stores (``run_pretraining`` opens them by name)."""
    world = start_world(device, cfg.train.tf32, cfg.train.batch_size, "train.batch_size")
    comps = components or default_components()
    cfg = _resolved(cfg)
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed % 2**32)
    manifests, hashes = _manifests(stores)
    norm = resolve_norm(cfg.intensity, manifests)
    raw = comps.model_factory(cfg).to(world.device)
    state = TrainState(raw, build_optimizer(raw, cfg.optim))
    config = config_to_dict(cfg)
    out = RunOutput(output_uri, storage_options)
    resumed = resume_train_state(state, out, world, partial(_check_resume, config))
    model = wrap_model(raw, cfg, world)
    with open_sink(sink, world, out) as sink:
        sink.log_params({**flatten(config), "world_size": world.world_size,
                         "resumed_from": resumed[1] if resumed else "", "norm.mean_hu": norm.mean_hu,
                         "norm.std_hu": norm.std_hu})
        end = stop_at(state.step, cfg.train.steps, max_steps)
        result = _loop(_Session(cfg, world, comps, stores, norm, out, sink, model, end), state)
        if result.status == "completed" and world.is_main:
            contract = PretrainContract.build(config, norm.to_dict(), manifests, hashes, result.step)
            result.encoder_uri, result.contract_uri = contract.write(
                output_uri, raw.encoder_state_dict(), storage_options)
        dist_utils.barrier()
        return result


def _resolved(cfg: PGLConfig) -> PGLConfig:
    cfg = resolve_local_levels(cfg)  # "auto" becomes concrete levels, saved with the run
    if cfg.optim.ema_tau is None:  # fitted to the run length, saved with the run
        cfg = cfg.model_copy(deep=True)
        cfg.optim.ema_tau = base_tau_for_steps(cfg.train.steps)
    return cfg


def _loop(s: _Session, state: TrainState) -> PretrainResult:
    """Data, forward, backward, clip, step, EMA, log (probe), checkpoint -- until ``s.end`` or SIGTERM."""
    cfg = s.cfg
    t = cfg.train
    res = PretrainResult("completed", state.step, t.steps, s.out.uri, skipped_steps=state.skipped)
    sampler, it, size_vox, probe = _data(s, state, res)
    trainable = [p for p in state.model.parameters() if p.requires_grad]
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
    amp = amp_dtype(t.amp, s.world.device)
    cadence = Cadence(t.steps, s.end, t.log_every, t.checkpoint_every_steps, t.checkpoint_every_minutes,
                      t.max_consecutive_nonfinite)
    with LoopControl(cadence, LOSS_NAMES, s.world.device) as ctl:
        while state.step < s.end:
            view_a, view_b, params = _views(s, ctl.fetch(it), size_vox, state.step)
            set_lr(state.optimizer, lr_at(state.step, t.steps, cfg.optim.lr, cfg.optim.warmup_steps,
                                          cfg.optim.min_lr_ratio))
            with autocast(s.world.device, amp):
                out = s.model(view_a, view_b, params)
            losses = torch.stack([out["loss"], out.get("loss_global", out["loss"] * 0),
                                  out.get("loss_local", out["loss"] * 0)]).detach().float()
            state.optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            gnorm = torch.nn.utils.clip_grad_norm_(trainable, clip)
            tau = tau_at(state.step, t.steps, cfg.optim.ema_tau)
            if ctl.guard(state, losses, gnorm):
                state.optimizer.step()
                state.model.update_target(tau)
            ctl.end_step(state)
            res.step, res.skipped_steps, res.last_loss = state.step, state.skipped, float(losses[0])
            if ctl.log_due(state.step):
                _log_window(s, ctl, state, tau, res)
            if probe is not None and (state.step % t.probe_every == 0 or state.step == s.end):
                probe(state.step)
            if ctl.checkpoint_due(state.step):
                res.checkpoint_uri = _save(s, state, sampler)
                ctl.checkpointed()
            if ctl.stop_now:
                break
    res.status = ctl.status(state.step)
    return res


def _data(s: _Session, state: TrainState, res: PretrainResult) -> tuple[CropSampler, Iterator, tuple, Any]:
    """The crop sampler, the loader's iterator from ``state.step`` on, the source sub-volume size and
    the probe hook (rank 0, when configured; its random-init baseline runs at step 0)."""
    cfg = s.cfg
    t = cfg.train
    store_list = list(s.stores.values())
    cases = index_cases(store_list)
    sampler = CropSampler(len(cases), t.crops_per_volume, s.world.rank, s.world.world_size, t.seed)
    size_vox = tuple(s.comps.source_shape(cfg.views))
    stream = CropStream(store_list, cases, sampler, s.batch, size_vox, start_batch=state.step)
    probe = None
    if s.world.is_main:
        probe = probe_hook(cfg, state.model, s.stores, cases, s.norm, s.world.device, s.comps, s.sink,
                           res.probe_history)
    if probe is not None and state.step == 0:
        probe(0)  # the random-init baseline the later probes are read against
    loader = make_loader(stream, t.loader_workers, pin_memory=s.world.device.type == "cuda")
    return sampler, iter(loader), size_vox, probe


def _views(s: _Session, data: dict, size_vox: tuple, step: int) -> tuple:
    """HU window + normalisation of the crops, then their two views (step-seeded), on the device."""
    cfg, device = s.cfg, s.world.device
    seed = step_seed(cfg.train.seed, s.world.rank, step)
    volumes = s.norm.apply(data["image"].to(device, non_blocking=True))
    gen, gen_aug = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed + 1)
    params = s.comps.sample_views(tuple(size_vox), cfg.views, gen, s.batch).to(device)
    view_a, view_b = s.comps.render_views(volumes, params, intensity=True, config=cfg.views,
                                          generator=gen_aug, units_per_hu=s.norm.units_per_hu())
    return view_a, view_b, params


def _log_window(s: _Session, ctl: LoopControl, state: TrainState, tau: float, res: PretrainResult) -> None:
    """Collective: the window's losses averaged over ranks, throughput and data wait; rank 0 logs them."""
    stats = ctl.window.stats()
    group = state.optimizer.param_groups[0]
    metrics = {**stats.means, "lr": group["lr"] / group.get("lr_scale", 1.0), "tau": tau,
               "skipped_steps": float(state.skipped),
               "samples_per_s": s.batch * s.world.world_size * stats.steps / stats.elapsed,
               "data_wait_fraction": min(stats.wait / stats.elapsed, 1.0)}
    ctl.window.log(state.step, metrics, s.sink, res.history,
                   (s.cfg.train.steps, s.end) if s.world.is_main else None)
    res.samples_per_s, res.data_wait_fraction = metrics["samples_per_s"], metrics["data_wait_fraction"]


def _save(s: _Session, state: TrainState, sampler: CropSampler) -> str | None:
    """Collective checkpoint (see :func:`save_train_state`) with the schedule and sampler positions."""
    cfg = s.cfg
    t = cfg.train
    fields = {"schedule": {"step": state.step, "total": t.steps},
              "sampler": {**sampler.position(state.step, s.batch), "world_size": sampler.world_size,
                          "seed": sampler.seed},
              "config": config_to_dict(cfg)}
    return save_train_state(state, fields, s.out, t.keep_checkpoints)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--datasets", required=True, nargs="+", help="Dataset names (space or comma separated).")
    p.add_argument("--output", required=True, help="Run output URI (checkpoints, encoder.pt, contract.json).")


def main(argv: list[str] | None = None) -> int:
    """CLI for ``torchrun``. Exit 0 done (or stopped at --max-steps), 75 preempted by SIGTERM
    (checkpoint written; rerun to resume), 2 usage/config error, 1 training failure."""
    args = parse_loop_args(argv, "pgl_core.pretrain", "PGL pretraining (torchrun-ready).", _add_arguments)
    datasets = [d for item in args.datasets for d in item.split(",") if d]

    def train(cfg: PGLConfig) -> PretrainResult:
        from storage.store import DatasetStore

        stores = {d: DatasetStore(args.store, d) for d in datasets}
        return pretrain(cfg, stores, args.output, max_steps=args.max_steps, device=args.device)

    return run_main(args, train, _summary, "training")


def _summary(cfg: PGLConfig, res: PretrainResult) -> str:
    return f"pretraining {res.status} at step {res.step}/{res.total_steps}; output {res.output_uri}"


if __name__ == "__main__":
    sys.exit(main())
