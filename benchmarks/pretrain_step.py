"""Pretraining-step benchmark: two-view samples/s of PGL train steps per numeric mode.

Synthetic mode (default; needs only torch + numpy besides the package's own config): one full
loop step as ``pgl_core.pretrain`` runs it -- HU window + z-score of int16 source sub-volumes on the
device, ``sample_views`` + ``render_views`` (batched on the device), ``PGLModel`` forward under the
mode's numerics, backward, grad clipping, AdamW step, EMA update -- timed after warm-up.
On CUDA at the paper config (patch 16 x 96 x 96, batch 32): fp32, tf32, bf16 and bf16 +
torch.compile side by side, with the ratio to the fp32 baseline. On CPU: the tiny preset, batch 4,
fp32 only.

``--e2e``: the real loop (``run_pretraining``) with the real loader from a synthetic store it writes
with ``storage.store`` (needs zarr); prints samples/s and the data-wait fraction.

    python benchmarks/pretrain_step.py                 # synthetic, all modes the device allows
    python benchmarks/pretrain_step.py --e2e --workers 12
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pgl_core.config import PGLConfig, load_config  # noqa: E402
from pgl_core.intensity_norm import IntensityNorm  # noqa: E402
from pgl_core.optim import build_optimizer  # noqa: E402
from pgl_core.pgl import PGLModel  # noqa: E402
from pgl_core.ema import base_tau_for_steps  # noqa: E402
from pgl_core.levels import resolve_local_levels  # noqa: E402
from pgl_core.schedules import tau_at  # noqa: E402
from pgl_core.views import render_views, sample_views, source_shape_for  # noqa: E402

NORM = IntensityNorm((-1024.0, 325.0), "zscore", -350.0, 380.0)


def _config(device: torch.device, batch: int | None, patch: tuple[int, int, int] | None,
            overrides: list[str] = ()) -> PGLConfig:
    cfg = load_config(preset="paper" if device.type == "cuda" else "tiny", overrides=list(overrides))
    train = {"batch_size": batch or (32 if device.type == "cuda" else 4)}
    views = {"patch_vox": patch} if patch else {}
    data = cfg.model_dump()
    data["train"].update(train)
    data["views"].update(views)
    cfg = resolve_local_levels(PGLConfig.model_validate(data))
    if cfg.optim.ema_tau is None:
        cfg.optim.ema_tau = base_tau_for_steps(cfg.train.steps)
    return cfg


def _step(model, raw, optimizer, volumes, cfg, gen, amp, step):
    """One loop step (see pgl_core.pretrain._loop); returns the loss tensor (no host sync)."""
    x = NORM.apply(volumes)
    params = sample_views(tuple(volumes.shape[2:]), cfg.views, gen, volumes.shape[0]).to(volumes.device)
    view_a, view_b = render_views(x, params, intensity=True, config=cfg.views, generator=gen)
    with torch.autocast(volumes.device.type, dtype=torch.bfloat16, enabled=amp):
        out = model(view_a, view_b, params)
    optimizer.zero_grad(set_to_none=True)
    out["loss"].backward()
    torch.nn.utils.clip_grad_norm_(raw.trainable_parameters(), cfg.optim.grad_clip)
    optimizer.step()
    raw.update_target(tau_at(step, cfg.train.steps, cfg.optim.ema_tau))
    return out["loss"]


def time_mode(cfg: PGLConfig, device: torch.device, tf32: bool, amp: bool, compile_: bool,
              warmup: int, iters: int) -> dict[str, float]:
    """Mean step time (ms) and two-view samples/s of ``iters`` steps after ``warmup``."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.manual_seed(0)
    raw = PGLModel(cfg.model, cfg.loss, tuple(cfg.views.patch_vox)).to(device)
    model = torch.compile(raw) if compile_ else raw
    optimizer = build_optimizer(raw, cfg.optim)
    batch = cfg.train.batch_size
    src = source_shape_for(cfg.views)
    volumes = torch.randint(-1024, 400, (batch, 1, *src), dtype=torch.int16, device=device)
    gen = torch.Generator().manual_seed(0)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t_compile = time.perf_counter()
    for s in range(warmup):
        _step(model, raw, optimizer, volumes, cfg, gen, amp, s)
    sync()
    t_compile = time.perf_counter() - t_compile
    t0 = time.perf_counter()
    for s in range(iters):
        loss = _step(model, raw, optimizer, volumes, cfg, gen, amp, warmup + s)
    sync()
    ms = (time.perf_counter() - t0) / iters * 1e3
    final = float(loss.detach())
    if not math.isfinite(final):
        raise RuntimeError(f"non-finite loss {final} in benchmark")
    del model, raw, optimizer, volumes
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"ms": ms, "samples_s": batch / ms * 1e3, "warmup_s": t_compile}


def synthetic(args: argparse.Namespace, device: torch.device) -> None:
    cfg = _config(device, args.batch, tuple(args.patch) if args.patch else None, args.overrides)
    n_params = sum(p.numel() for p in PGLModel(cfg.model, cfg.loss, tuple(cfg.views.patch_vox)).online.parameters())
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
          f"torch {torch.__version__}, patch {tuple(cfg.views.patch_vox)}, batch {cfg.train.batch_size}, "
          f"source {source_shape_for(cfg.views)}, online params {n_params / 1e6:.1f} M, mode {cfg.loss.mode} "
          f"levels {cfg.loss.local_levels}", flush=True)
    modes = [("fp32", False, False, False)]
    if device.type == "cuda":
        modes += [("tf32", True, False, False), ("bf16", True, True, False)]
        if not args.no_compile:
            modes.append(("bf16+compile", True, True, True))
    rows = []
    for name, tf32, amp, comp in modes:
        warmup = args.warmup + (2 if comp else 0)
        r = time_mode(cfg, device, tf32, amp, comp, warmup, args.iters)
        rows.append((name, r))
        print(f"  {name:13s} {r['ms']:8.1f} ms/step {r['samples_s']:8.1f} samples/s "
              f"(warm-up {r['warmup_s']:.1f} s)", flush=True)
    base = rows[0][1]["samples_s"]
    print(f"\n| mode | step ms | two-view samples/s | x fp32 |\n|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r['ms']:.1f} | {r['samples_s']:.1f} | {r['samples_s'] / base:.2f} |")


class _Recorder:
    def __init__(self) -> None:
        self.rows: list[tuple[int, dict]] = []

    def log_metrics(self, step, metrics):
        self.rows.append((step, dict(metrics)))

    def log_params(self, params):
        pass

    def close(self):
        pass


def e2e(args: argparse.Namespace, device: torch.device) -> None:
    from benchmarks_loader import write_synthetic_store  # noqa: F401 (path set in main)

    from pgl_core.pretrain import run_pretraining

    cfg = _config(device, args.batch, tuple(args.patch) if args.patch else None, args.overrides)
    steps = args.steps or (60 if device.type == "cuda" else 12)
    workers = args.workers if args.workers is not None else (max((os.cpu_count() or 2) - 2, 1))
    data = cfg.model_dump()
    data["train"].update(steps=steps, loader_workers=workers, log_every=5, checkpoint_every_steps=10**6,
                         compile=args.compile, amp="auto")
    cfg = PGLConfig.model_validate(data)
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "store")
        t0 = time.perf_counter()
        write_synthetic_store(root, ["e2e_a", "e2e_b"], args.cases, tuple(args.case_shape))
        print(f"store written in {time.perf_counter() - t0:.1f} s; {steps} steps, batch {cfg.train.batch_size}, "
              f"{workers} loader workers, compile={args.compile}", flush=True)
        sink = _Recorder()
        res = run_pretraining(cfg, root, ["e2e_a", "e2e_b"], os.path.join(tmp, "run"), sink=sink)
    steady = [m for s, m in sink.rows if s > 10] or [m for _, m in sink.rows]
    sps = sum(m["samples_per_s"] for m in steady) / len(steady)
    wait = sum(m["data_wait_fraction"] for m in steady) / len(steady)
    print(f"e2e {res.status} {res.step} steps: {sps:.1f} two-view samples/s, data-wait fraction {wait:.3f} "
          f"(steady-state windows after step 10; final loss {res.last_loss:.4f})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--patch", type=int, nargs=3, default=None, help="Patch (D, H, W).")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--e2e", action="store_true", help="Real loop + loader from a synthetic store.")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="Config override, e.g. --set loss.local_levels=[bottleneck,decoder_s4].")
    p.add_argument("--steps", type=int, default=None, help="e2e: loop steps.")
    p.add_argument("--workers", type=int, default=None, help="e2e: loader workers.")
    p.add_argument("--compile", action="store_true", help="e2e: torch.compile the model.")
    p.add_argument("--cases", type=int, default=4, help="e2e: cases per dataset.")
    p.add_argument("--case-shape", type=int, nargs=3, default=(80, 320, 320))
    args = p.parse_args(argv)
    dev = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(dev)
    if args.iters is None:
        args.iters = 10 if device.type == "cuda" else 3
    if args.e2e:
        import importlib.util

        spec = importlib.util.spec_from_file_location(
            "benchmarks_loader", os.path.join(os.path.dirname(os.path.abspath(__file__)), "loader.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules["benchmarks_loader"] = module
        spec.loader.exec_module(module)
        e2e(args, device)
    else:
        synthetic(args, device)
    return 0


if __name__ == "__main__":
    sys.exit(main())
