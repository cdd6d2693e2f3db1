"""Patch-read benchmark: a random training crop from the chunked store vs loading a .nii.gz.

Builds a CT-like int16 volume (default 133 x 512 x 512, (z, y, x): air outside an elliptic
body, smooth tissue values plus noise), writes it as .nii.gz (SimpleITK) and into a
DatasetStore on local disk and on S3 (a moto server started here), then times random crops
(default 20 x 134 x 134):

  (a) baseline: read the whole .nii.gz per crop, then slice (the TorchIO / MONAI default)
  (b) DatasetStore.read_crop from a local directory (32 x 64 x 64 zstd chunks, one shard per chunk row)
  (c) DatasetStore.read_crop from S3 (same chunks, grouped in 128 x 256 x 256 shards), served
      by a moto ThreadedMotoServer that the benchmark starts in a child process

Targets: (b) >= 40x faster than (a), (c) >= 5x. Usage:

    python benchmarks/patch_read.py            # local + S3
    python benchmarks/patch_read.py --no-s3    # local only
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import SimpleITK as sitk  # noqa: E402
from scipy import ndimage  # noqa: E402

from storage.store import DatasetStore, plan_hash  # noqa: E402

PLAN = {"benchmark": "patch_read"}


def ct_like_volume(shape_zyx: tuple[int, int, int], seed: int) -> np.ndarray:
    """int16 HU (z, y, x): -1024 air around an elliptic body of smooth tissue + noise + 'lungs'."""
    rng = np.random.default_rng(seed)
    z, y, x = shape_zyx
    coarse = rng.normal(0.0, 1.0, (max(z // 16, 2), max(y // 32, 2), max(x // 32, 2)))
    smooth = ndimage.zoom(coarse, [n / c for n, c in zip(shape_zyx, coarse.shape)], order=1)
    smooth = smooth[:z, :y, :x]
    yy, xx = np.mgrid[0:y, 0:x]
    body = ((yy - y / 2) / (0.42 * y)) ** 2 + ((xx - x / 2) / (0.47 * x)) ** 2 < 1.0
    lungs = (((yy - y / 2) / (0.25 * y)) ** 2 + ((np.abs(xx - x / 2) - 0.2 * x) / (0.14 * x)) ** 2) < 1.0
    vol = np.full(shape_zyx, -1024, np.int16)
    tissue = 40.0 + 120.0 * smooth + rng.normal(0.0, 20.0, shape_zyx).astype(np.float32)
    tissue[:, lungs] = -850.0 + 60.0 * smooth[:, lungs] + rng.normal(0, 30, (z, int(lungs.sum())))
    vol[:, body] = np.clip(tissue[:, body], -1024, 3000).astype(np.int16)
    return vol


def random_starts(shape, crop, n: int, seed: int) -> list[tuple[int, int, int]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(rng.integers(0, max(s - c, 0) + 1)) for s, c in zip(shape, crop)) for _ in range(n)]


def time_crops(read: Callable, starts, crop) -> list[float]:
    """Per-crop seconds of ``read(start, crop)``; checks each crop's shape."""
    out = []
    for s in starts:
        t0 = time.perf_counter()
        patch = read(s, crop)
        out.append(time.perf_counter() - t0)
        if patch.shape != tuple(crop):
            raise RuntimeError(f"crop at {s} has shape {patch.shape}, expected {crop}")
    return out


def nifti_read(path: str) -> Callable:
    def read(start, crop):
        image = sitk.ReadImage(path)  # keep a reference: the view below borrows its buffer
        view = sitk.GetArrayViewFromImage(image)
        return np.array(view[tuple(slice(s, s + c) for s, c in zip(start, crop))])
    return read


def store_read(store: DatasetStore) -> Callable:
    return lambda start, crop: store.read_crop("case", start, crop)


def write_store(root: str, vol: np.ndarray, options: dict | None) -> tuple[DatasetStore, float]:
    store = DatasetStore(root, "bench", storage_options=options, create=True)
    store.ensure(PLAN, {0: "background"})
    attrs = {"spacing": (0.7, 0.7, 2.5), "origin": (0.0, 0.0, 0.0),
             "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1), "source_checksum": "bench",
             "plan_hash": plan_hash(PLAN)}
    t0 = time.perf_counter()
    store.write_case("case", vol, None, attrs)
    return store, time.perf_counter() - t0


def _serve_moto(conn) -> None:
    """Child process: run a ThreadedMotoServer on 127.0.0.1 until told to stop."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no per-request log lines
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    conn.send(server.get_host_and_port()[1])
    conn.recv()  # any message: stop
    server.stop()


def start_s3() -> tuple[Callable[[], None], str, dict]:
    """A moto S3 server with one bucket, in its own process so that, like a real S3 service,
    it does not share the reader's interpreter; returns (stop, root_uri, storage_options)."""
    import multiprocessing as mp

    import boto3

    parent, child = mp.get_context("spawn").Pipe()
    proc = mp.get_context("spawn").Process(target=_serve_moto, args=(child,), daemon=True)
    proc.start()
    url = f"http://127.0.0.1:{parent.recv()}"
    creds = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench", "region_name": "us-east-1"}
    boto3.client("s3", endpoint_url=url, **creds).create_bucket(Bucket="bench")
    options = {"key": "bench", "secret": "bench",
               "client_kwargs": {"endpoint_url": url, "region_name": "us-east-1"}}

    def stop() -> None:
        parent.send("stop")
        proc.join(timeout=10)
    return stop, "s3://bench/store", options


def summarize(name: str, secs: list[float], base_ms: float | None) -> dict:
    ms = 1000.0 * float(np.mean(secs))
    return {"method": name, "n": len(secs), "mean_ms": ms, "median_ms": 1000.0 * float(np.median(secs)),
            "crops_per_s": 1000.0 / ms, "speedup": (base_ms / ms) if base_ms else 1.0}


def print_table(rows: list[dict], targets: dict[str, float]) -> None:
    print(f"\n{'method':<34}{'n':>5}{'mean ms':>10}{'median ms':>11}{'crops/s':>9}{'speedup':>9}  target")
    for r in rows:
        tgt = targets.get(r["method"])
        mark = "" if tgt is None else f">= {tgt:.0f}x {'ok' if r['speedup'] >= tgt else 'MISSED'}"
        print(f"{r['method']:<34}{r['n']:>5}{r['mean_ms']:>10.1f}{r['median_ms']:>11.1f}"
              f"{r['crops_per_s']:>9.1f}{r['speedup']:>8.1f}x  {mark}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--s3", dest="s3", action="store_true", default=True, help="include S3 (default)")
    ap.add_argument("--no-s3", dest="s3", action="store_false", help="local disk only")
    ap.add_argument("--shape", type=int, nargs=3, default=(133, 512, 512), metavar=("Z", "Y", "X"))
    ap.add_argument("--crop", type=int, nargs=3, default=(20, 134, 134), metavar=("Z", "Y", "X"))
    ap.add_argument("--crops", type=int, default=200, help="crops timed per store backend")
    ap.add_argument("--baseline-reps", type=int, default=5, help="whole-file loads timed")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    shape, crop = tuple(args.shape), tuple(args.crop)

    with tempfile.TemporaryDirectory(prefix="pgl-patch-read-") as work:
        vol = ct_like_volume(shape, args.seed)
        nii = os.path.join(work, "case.nii.gz")
        t0 = time.perf_counter()
        sitk.WriteImage(sitk.GetImageFromArray(vol), nii, useCompression=True)
        print(f"volume {shape} int16: .nii.gz {os.path.getsize(nii) / 1e6:.1f} MB "
              f"written in {time.perf_counter() - t0:.1f} s")
        starts = random_starts(shape, crop, args.crops, args.seed + 1)
        rows = [summarize("(a) whole .nii.gz per crop", time_crops(nifti_read(nii), starts[:args.baseline_reps], crop), None)]
        base_ms = rows[0]["mean_ms"]
        local, t_write = write_store(os.path.join(work, "store"), vol, None)
        print(f"local store written in {t_write:.2f} s")
        np.testing.assert_array_equal(local.read_crop("case", starts[0], crop),
                                      vol[tuple(slice(s, s + c) for s, c in zip(starts[0], crop))])
        rows.append(summarize("(b) read_crop, local store", time_crops(store_read(local), starts, crop), base_ms))
        if args.s3:
            stop_s3, root, options = start_s3()
            try:
                remote, t_write = write_store(root, vol, options)
                print(f"S3 (moto) store written in {t_write:.2f} s")
                remote.read_crop("case", starts[0], crop)  # open the array (metadata) once
                rows.append(summarize("(c) read_crop, S3 store (moto)", time_crops(store_read(remote), starts, crop), base_ms))
            finally:
                stop_s3()
    print_table(rows, {"(b) read_crop, local store": 40, "(c) read_crop, S3 store (moto)": 5})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"shape_zyx": shape, "crop_zyx": crop, "rows": rows}, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
