"""Loader benchmark: training sub-volumes per second from a store, with N DataLoader workers.

Writes a synthetic store (CT-like int16 volumes through ``storage.store.DatasetStore``) on local
disk, or on S3 served by a local moto server with ``--s3``, then pulls batches through the real
training stream (``pgl_core.data.CropStream`` + ``make_loader``) at the source sub-volume size of
the paper views (16 x 96 x 96 patch -> ``views.source_shape_for``), and prints sub-volumes/s and the
ratio to a GPU consumption rate (default 240 two-view samples/s; the target is >= 1.5x).

    python benchmarks/loader.py                       # local store, 0/2/4 workers
    python benchmarks/loader.py --workers 8 --s3      # S3 (moto) as well

``write_synthetic_store`` is also used by ``benchmarks/pretrain_step.py --e2e``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pgl_core.config import load_config  # noqa: E402
from pgl_core.data import CropSampler, CropStream, index_cases, make_loader  # noqa: E402
from pgl_core.views import source_shape_for  # noqa: E402


def ct_like(shape_zyx: tuple[int, int, int], seed: int) -> np.ndarray:
    """int16 HU ``(z, y, x)``: air around an elliptic body of noisy soft tissue with a few bones."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[: shape_zyx[0], : shape_zyx[1], : shape_zyx[2]]
    cy, cx = shape_zyx[1] / 2, shape_zyx[2] / 2
    body = ((y - cy) / (0.42 * shape_zyx[1])) ** 2 + ((x - cx) / (0.47 * shape_zyx[2])) ** 2 < 1
    body = np.broadcast_to(body, shape_zyx)
    img = np.full(shape_zyx, -1024, np.int16)
    tissue = rng.normal(40, 60, shape_zyx).astype(np.int16)
    img[body] = tissue[body]
    bone = ((y - cy * 1.3) ** 2 + (x - cx) ** 2 < (0.08 * shape_zyx[2]) ** 2)
    img[np.broadcast_to(bone, shape_zyx)] = 700
    return img


def write_synthetic_store(root_uri: str, datasets: list[str], n_cases: int, shape_zyx: tuple[int, int, int],
                          storage_options: dict | None = None, seed: int = 0) -> None:
    """``n_cases`` CT-like cases per dataset under ``root_uri`` (manifests consolidated)."""
    from storage.plan import Plan
    from storage.store import DatasetStore, plan_hash

    plan = Plan(target_spacing_mm=(0.8, 0.8, 2.5)).to_dict()
    attrs = {"spacing": (0.8, 0.8, 2.5), "origin": (0.0, 0.0, 0.0), "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1),
             "plan_hash": plan_hash(plan)}
    for d, name in enumerate(datasets):
        store = DatasetStore(root_uri, name, storage_options=storage_options, create=True)
        store.ensure(plan, {0: "background"})
        for i in range(n_cases):
            store.write_case(f"case_{i:03d}", ct_like(shape_zyx, seed + 1000 * d + i), None,
                             {**attrs, "source_checksum": f"sha256:{d}-{i}"})
        store.consolidate_manifest()


def measure(root_uri: str, datasets: list[str], workers: int, batch: int, seconds: float,
            storage_options: dict | None = None) -> float:
    """Sub-volumes/s delivered by the training stream with ``workers`` loader processes."""
    from storage.store import DatasetStore

    cfg = load_config(preset="paper")
    stores = [DatasetStore(root_uri, d, storage_options=storage_options) for d in datasets]
    cases = index_cases(stores)
    stream = CropStream(stores, cases, CropSampler(len(cases), 4, 0, 1, seed=0), batch,
                        source_shape_for(cfg.views))
    it = iter(make_loader(stream, workers, pin_memory=False, prefetch_factor=4))
    next(it)  # worker start-up is not part of the steady state
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += next(it)["image"].shape[0]
    return n / (time.perf_counter() - t0)


def _report(label: str, root: str, datasets: list[str], args: argparse.Namespace, opts: dict | None) -> None:
    for w in args.workers:
        rate = measure(root, datasets, w, args.batch, args.seconds, opts)
        print(f"{label:6s} workers={w:2d}  {rate:8.1f} sub-volumes/s   x{rate / args.gpu_rate:5.2f} "
              f"of {args.gpu_rate:.0f}/s (target >= 1.5)", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    p.add_argument("--batch", type=int, default=8, help="Sub-volumes per loader batch.")
    p.add_argument("--seconds", type=float, default=6.0, help="Measuring time per setting.")
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--shape", type=int, nargs=3, default=(80, 320, 320), help="Case shape (z, y, x).")
    p.add_argument("--gpu-rate", type=float, default=240.0, help="Two-view samples/s the GPU consumes.")
    p.add_argument("--s3", action="store_true", help="Also measure from S3 (local moto server).")
    args = p.parse_args(argv)
    cfg = load_config(preset="paper")
    print(f"source sub-volume {source_shape_for(cfg.views)} (z, y, x) int16 per sample; cases {tuple(args.shape)}")
    datasets = ["bench_a", "bench_b"]
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(tmp, "store")
        write_synthetic_store(root, datasets, args.cases, tuple(args.shape))
        _report("local", root, datasets, args, None)
    if args.s3:
        from tests.plugins.s3 import start_moto

        server, info = start_moto()
        try:
            root = info.make_bucket("pgl-bench") + "/store"
            write_synthetic_store(root, datasets, args.cases, tuple(args.shape), info.storage_options)
            _report("s3", root, datasets, args, info.storage_options)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
