"""The PGL pretraining loop and its ``torchrun`` entry point.

One straight-line loop that runs unchanged on 1..N processes (``python -m pgl_core.pretrain`` or
``torchrun --nproc-per-node N -m pgl_core.pretrain ...``): int16 crops from the store ->
HU window + normalisation and the two views rendered on the device -> PGL loss under bf16
autocast (CUDA) -> backward (DDP averages gradients of the online network; the EMA target only
follows) -> clip -> non-finite guard -> optimiser step -> EMA update -> metrics / checkpoints.

Determinism: the view randomness of step ``s`` on rank ``r`` comes from generators seeded by
``(seed, r, s)`` and the crop stream is a pure function of ``(seed, step)`` (see ``data``), so a run
killed at step ``k`` and resumed from its checkpoint follows the uninterrupted trajectory.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from pgl_core import checkpoint as ckpt
from pgl_core import distributed as dist_utils
from pgl_core.config import ConfigError, PGLConfig, add_config_arguments, config_to_dict, flatten, load_config
from pgl_core.contract import build_contract, write_contract
from pgl_core.data import CropSampler, CropSource, CropStream, index_cases, make_loader, source_size_vox
from pgl_core.intensity_norm import IntensityNorm, resolve_norm
from pgl_core.sinks import JsonlSink, MetricsSink, NullSink
from pgl_core.optim import build_optimizer
from pgl_core.probe import probe_hook
from pgl_core.ema import base_tau_for_steps
from pgl_core.levels import resolve_local_levels
from pgl_core.schedules import lr_at, set_lr, tau_at

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_PREEMPTED = 0, 1, 2, 75


class NonFiniteLossError(RuntimeError):
    """Raised after too many consecutive steps with a non-finite loss or gradient norm."""


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


class _StopFlag:
    """Set by SIGTERM (handler installed only from the main thread, restored on exit)."""

    def __init__(self) -> None:
        self.set = False
        self._previous: Any = None

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.set = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _step_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step, 0x91]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """bf16 for ``amp`` "bf16", or "auto" on CUDA; None (fp32) otherwise."""
    if amp == "bf16" or (amp == "auto" and device.type == "cuda"):
        return torch.bfloat16
    return None


def _set_numerics(tf32: bool, device: torch.device) -> None:
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high" if tf32 else "highest")
        torch.backends.cudnn.allow_tf32 = bool(tf32)


def _manifests(stores: dict[str, CropSource]) -> tuple[dict[str, dict], dict[str, str]]:
    manifests, hashes = {}, {}
    for name, store in stores.items():
        manifests[name] = store.manifest() if hasattr(store, "manifest") else {}
        hashes[name] = store.manifest_hash() if hasattr(store, "manifest_hash") else ""
    return manifests, hashes


def _check_resume_config(saved: dict[str, Any], current: dict[str, Any], uri: str) -> None:
    for section in ("model", "loss", "views", "intensity"):
        if saved.get(section) != current.get(section):
            raise ConfigError(f"checkpoint {uri}: config section {section!r} differs from the current run; "
                              f"use a new output URI or the same config")
    if saved != current:
        log.warning("checkpoint %s: optim/train settings differ from the saved config; continuing", uri)


def _resume(raw: nn.Module, optimizer: torch.optim.Optimizer, output_uri: str, storage_options: dict | None,
            config: dict[str, Any], world: dist_utils.WorldInfo) -> tuple[int, int, str | None]:
    """Load the latest valid checkpoint into ``raw``/``optimizer``; returns (step, skipped, uri)."""
    found = ckpt.load_latest(output_uri, storage_options, map_location="cpu")
    if found is None:
        return 0, 0, None
    state, uri = found
    _check_resume_config(state["config"], config, uri)
    raw.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    rng = state.get("rng") or []
    if len(rng) == world.world_size:
        ckpt.restore_rng(rng[world.rank])
    else:
        log.warning("checkpoint %s saved by %d ranks, resuming on %d: RNG states not restored",
                    uri, len(rng), world.world_size)
    if world.is_main:
        log.info("resumed from %s at step %d", uri, state["step"])
    return int(state["step"]), int(state.get("skipped_steps", 0)), uri


def _save(raw: nn.Module, optimizer: torch.optim.Optimizer, step: int, skipped: int, sampler: CropSampler,
          batch: int, cfg: PGLConfig, output_uri: str, storage_options: dict | None) -> str | None:
    """Collective: gather every rank's RNG states; rank 0 writes; all wait. Returns the URI on rank 0."""
    rng = dist_utils.all_gather_objects(ckpt.capture_rng())
    uri = None
    if dist_utils.is_main():
        state = {"format_version": 1, "step": step, "skipped_steps": skipped, "model": raw.state_dict(),
                 "optimizer": optimizer.state_dict(), "schedule": {"step": step, "total": cfg.train.steps},
                 "sampler": {**sampler.position(step, batch), "world_size": sampler.world_size,
                             "seed": sampler.seed},
                 "rng": rng, "config": config_to_dict(cfg), "torch_version": torch.__version__}
        uri = ckpt.save_checkpoint(output_uri, step, state, storage_options, keep=cfg.train.keep_checkpoints)
    dist_utils.barrier()
    return uri


def _wrap(raw: nn.Module, cfg: PGLConfig, world: dist_utils.WorldInfo) -> nn.Module:
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
    if frozen and hasattr(DDP, "_set_params_and_buffers_to_ignore_for_model"):
        DDP._set_params_and_buffers_to_ignore_for_model(model, frozen)
    return DDP(model, device_ids=None, find_unused_parameters=False)


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
    world = dist_utils.init_distributed(device)
    comps = components or default_components()
    cfg = resolve_local_levels(cfg)  # "auto" becomes concrete levels, saved with the run
    if cfg.optim.ema_tau is None:  # fitted to the run length, saved with the run
        cfg = cfg.model_copy(deep=True)
        cfg.optim.ema_tau = base_tau_for_steps(cfg.train.steps)
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed % 2**32)
    _set_numerics(cfg.train.tf32, world.device)
    if cfg.train.batch_size % world.world_size:
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} is not divisible by {world.world_size} ranks")
    manifests, hashes = _manifests(stores)
    norm = resolve_norm(cfg.intensity, manifests)
    raw = comps.model_factory(cfg).to(world.device)
    optimizer = build_optimizer(raw, cfg.optim)
    config = config_to_dict(cfg)
    step, skipped, resumed = _resume(raw, optimizer, output_uri, storage_options, config, world)
    model = _wrap(raw, cfg, world)
    own_sink = sink is None
    if not world.is_main:
        sink = NullSink()
    elif sink is None:
        sink = JsonlSink(output_uri.rstrip("/") + "/metrics.jsonl", storage_options)
    sink.log_params({**flatten(config), "world_size": world.world_size, "resumed_from": resumed or "",
                     "norm.mean_hu": norm.mean_hu, "norm.std_hu": norm.std_hu})
    try:
        result = _loop(cfg, world, comps, raw, model, optimizer, stores, norm, step, skipped, output_uri,
                       storage_options, sink, max_steps)
        if result.status == "completed" and world.is_main:
            contract = build_contract(config, norm.to_dict(), manifests, hashes, result.step)
            result.encoder_uri, result.contract_uri = write_contract(
                output_uri, contract, raw.encoder_state_dict(), storage_options)
        dist_utils.barrier()
        return result
    finally:
        if own_sink or not world.is_main:
            sink.close()


def _loop(cfg: PGLConfig, world: dist_utils.WorldInfo, comps: Components, raw: nn.Module, model: nn.Module,
          optimizer: torch.optim.Optimizer, stores: dict[str, CropSource], norm: IntensityNorm, step: int,
          skipped: int, output_uri: str, storage_options: dict | None, sink: MetricsSink,
          max_steps: int | None) -> PretrainResult:
    t = cfg.train
    batch = t.batch_size // world.world_size
    total = t.steps
    end = total if max_steps is None else min(total, step + max_steps)
    store_list = list(stores.values())
    cases = index_cases(store_list)
    sampler = CropSampler(len(cases), t.crops_per_volume, world.rank, world.world_size, t.seed)
    size_vox = tuple(comps.source_shape(cfg.views))
    stream = CropStream(store_list, cases, sampler, batch, size_vox, start_batch=step)
    res_history: list[dict[str, float]] = []
    probe = None
    if world.is_main:
        probe = probe_hook(cfg, raw, stores, cases, norm, world.device, comps, sink, res_history)
    if probe is not None and step == 0:
        probe(0)  # the random-init baseline the later probes are read against
    loader = make_loader(stream, t.loader_workers, pin_memory=world.device.type == "cuda")
    it: Iterator = iter(loader)
    amp = _amp_dtype(cfg.train.amp, world.device)
    trainable = [p for p in raw.parameters() if p.requires_grad]
    clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
    res = PretrainResult("completed", step, total, output_uri, skipped_steps=skipped)
    consecutive, last_ckpt_time = 0, time.monotonic()
    win = {"t0": time.perf_counter(), "wait": 0.0, "steps": 0, "n": 0, "sum": torch.zeros(3, device=world.device)}
    with _StopFlag() as stop:
        while step < end:
            t_fetch = time.perf_counter()
            data = next(it)
            win["wait"] += time.perf_counter() - t_fetch
            volumes = norm.apply(data["image"].to(world.device, non_blocking=True))
            gen = torch.Generator().manual_seed(_step_seed(t.seed, world.rank, step))
            gen_aug = torch.Generator().manual_seed(_step_seed(t.seed, world.rank, step) + 1)
            params = comps.sample_views(tuple(size_vox), cfg.views, gen, batch).to(world.device)
            view_a, view_b = comps.render_views(volumes, params, intensity=True, config=cfg.views,
                                                generator=gen_aug, units_per_hu=norm.units_per_hu())
            set_lr(optimizer, lr_at(step, total, cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.min_lr_ratio))
            autocast = (torch.autocast(world.device.type, dtype=amp) if amp is not None
                        else contextlib.nullcontext())
            with autocast:
                out = model(view_a, view_b, params)
            losses = torch.stack([out["loss"], out.get("loss_global", out["loss"] * 0),
                                  out.get("loss_local", out["loss"] * 0)]).detach().float()
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            gnorm = torch.nn.utils.clip_grad_norm_(trainable, clip)
            due = (time.monotonic() - last_ckpt_time) / 60.0 >= t.checkpoint_every_minutes
            flags = torch.stack([(~torch.isfinite(losses).all()).float(), (~torch.isfinite(gnorm)).float(),
                                 torch.tensor(float(stop.set), device=world.device),
                                 torch.tensor(float(due), device=world.device)])
            bad_loss, bad_grad, stop_now, due_now = dist_utils.all_reduce_max(flags).tolist()
            tau = tau_at(step, total, cfg.optim.ema_tau)
            if bad_loss or bad_grad:
                skipped, consecutive = skipped + 1, consecutive + 1
                optimizer.zero_grad(set_to_none=True)
                if consecutive >= cfg.train.max_consecutive_nonfinite:
                    raise NonFiniteLossError(f"{consecutive} consecutive non-finite steps ending at step {step} "
                                             f"(loss {losses.tolist()}, grad norm {float(gnorm)})")
            else:
                consecutive = 0
                optimizer.step()
                raw.update_target(tau)
                win["sum"] += losses
                win["steps"] += 1
            step += 1
            win["n"] += 1
            res.step, res.skipped_steps, res.last_loss = step, skipped, float(losses[0])
            if step % t.log_every == 0 or step == end:
                _log_window(win, step, optimizer, tau, skipped, batch * world.world_size, sink, res)
            if probe is not None and (step % t.probe_every == 0 or step == end):
                probe(step)
            if stop_now or due_now or step % t.checkpoint_every_steps == 0 or step == end:
                res.checkpoint_uri = _save(raw, optimizer, step, skipped, sampler, batch, cfg, output_uri,
                                           storage_options)
                last_ckpt_time = time.monotonic()
            if stop_now:
                res.status = "preempted"
                break
    if res.status != "preempted" and step < total:
        res.status = "stopped"
    res.probe_history = res_history
    return res


def _log_window(win: dict, step: int, optimizer: torch.optim.Optimizer, tau: float, skipped: int,
                global_batch: int, sink: MetricsSink, res: PretrainResult) -> None:
    """Collective: average the window's losses over ranks, then rank 0 logs them."""
    elapsed = max(time.perf_counter() - win["t0"], 1e-9)
    n = max(win["steps"], 1)
    mean = dist_utils.all_reduce_mean(win["sum"] / n).tolist()
    metrics = {"loss": mean[0], "loss_global": mean[1], "loss_local": mean[2],
               "lr": optimizer.param_groups[0]["lr"] / optimizer.param_groups[0].get("lr_scale", 1.0),
               "tau": tau, "skipped_steps": float(skipped),
               "samples_per_s": global_batch * win["n"] / elapsed,
               "data_wait_fraction": min(win["wait"] / elapsed, 1.0)}
    sink.log_metrics(step, metrics)
    res.history.append({"step": float(step), **metrics})
    res.samples_per_s, res.data_wait_fraction = metrics["samples_per_s"], metrics["data_wait_fraction"]
    win.update(t0=time.perf_counter(), wait=0.0, steps=0, n=0, sum=torch.zeros_like(win["sum"]))


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pgl_core.pretrain", description="PGL pretraining (torchrun-ready).")
    p.add_argument("--store", required=True, help="Store root URI (local path or s3://...).")
    p.add_argument("--datasets", required=True, nargs="+", help="Dataset names (space or comma separated).")
    p.add_argument("--output", required=True, help="Run output URI (checkpoints, encoder.pt, contract.json).")
    add_config_arguments(p)
    p.add_argument("--max-steps", type=int, default=None, help="Stop after this many steps of this invocation.")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default).")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """CLI for ``torchrun``. Exit 0 done (or stopped at --max-steps), 75 preempted by SIGTERM
    (checkpoint written; rerun to resume), 2 usage/config error, 1 training failure."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    datasets = [d for item in args.datasets for d in item.split(",") if d]
    try:
        cfg = load_config(args.config, args.overrides, preset=args.preset)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    try:
        from storage.store import DatasetStore

        stores = {d: DatasetStore(args.store, d) for d in datasets}
        result = pretrain(cfg, stores, args.output, max_steps=args.max_steps, device=args.device)
        rank = dist_utils.get_rank()
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except NonFiniteLossError as exc:
        print(f"training failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        dist_utils.cleanup()
    if rank == 0:
        print(f"pretraining {result.status} at step {result.step}/{result.total_steps}; output {args.output}")
    return EXIT_PREEMPTED if result.status == "preempted" else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
