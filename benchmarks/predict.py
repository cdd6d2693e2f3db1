"""Prediction benchmark: ``pgl predict``'s inference path against MONAI's ``sliding_window_inference``.

Builds (or reuses, in ``--data``) a CT-sized phantom (default 133 x 512 x 512 at 0.7 x 0.7 x 2.5 mm,
like a chest CT) and a segmenter model directory (the ``tiny`` preset's SegmentationUNet, seeded
random weights, ``--patch`` windows, model spacing ``--spacing``). Each method runs in its own
long-lived worker process (model loaded, input read and, for the sliding windows, already on the
model grid and normalised, one untimed warm-up run on a small volume), and the methods take turns
repeat after repeat, so that load from elsewhere on the machine hits them alike:

  ours-sw   pgl_core.evaluation.sliding_window.sliding_window_predict exactly as ``pgl predict``
            calls it (``pgl_core.predict.segment_array``: Gaussian blending, the contract's
            overlap, its batch size), on the normalised model-grid volume, to the uint8 label map
  predict   pgl_core.predict.predict_volume: canonicalise + resample to the model's spacing,
            normalise, the sliding window, the label map back onto the input grid (all of
            ``pgl predict`` but reading and writing the files)
  monai     monai.inferers.sliding_window_inference on the same tensor, network, patch, overlap,
            Gaussian mode and batch size (softmax per window, as ours), then the arg-max to uint8
  monai-b1  the same with MONAI's default ``sw_batch_size=1`` (``--monai-default``; slow on a CPU)

Memory: each worker's peak RSS during one run above its RSS just before it (``/proc`` VmHWM,
reset per run), in MB. The label maps of ours-sw and monai are compared voxel by voxel. Usage:

    python benchmarks/predict.py                          # 133 x 512 x 512, 3 repeats
    python benchmarks/predict.py --shape 40 256 256 --repeats 2 --threads 1   # quick
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.rss import reset_peak, status_mb  # noqa: E402

METHODS = ("ours-sw", "predict", "monai", "monai-b1")


def make_inputs(data: str, shape: tuple[int, int, int], spacing_in: tuple, spacing_model: tuple,
                patch: tuple[int, int, int]) -> tuple[str, str]:
    """(CT file, model directory) under ``data``, made once per shape / spacing / patch."""
    import SimpleITK as sitk
    import torch

    from pgl_core.config import config_to_dict, load_config
    from pgl_core.contracts import SegmenterContract
    from pgl_core.intensity_norm import IntensityNorm
    from pgl_core.nets.unet import SegmentationUNet
    from phantoms import generate_case

    tag = "x".join(map(str, shape)) + "_" + "x".join(map(str, spacing_in))
    ct = os.path.join(data, f"ct_{tag}.nii.gz")
    if not os.path.exists(ct):
        image, _ = generate_case("kits", 7, shape, spacing_mm=spacing_in, ras=False, oblique=False,
                                 descending=False)
        os.makedirs(data, exist_ok=True)
        sitk.WriteImage(image.to_sitk(), ct + ".tmp.nii.gz", True)
        os.replace(ct + ".tmp.nii.gz", ct)
    model_dir = os.path.join(data, "model_" + "x".join(map(str, patch)) + "_" + "x".join(map(str, spacing_model)))
    cfg = load_config(preset="tiny", overrides=[f"finetune.patch_vox=[{','.join(map(str, patch))}]"])
    torch.manual_seed(0)
    names = {0: "background", 1: "kidney", 2: "kidney_tumour"}
    contract = SegmenterContract.build(
        config_to_dict(cfg), 3, names, list(spacing_model), IntensityNorm((-1000.0, 1000.0), "zscore", -200.0, 450.0),
        "random", None, "bench", "none", {"train": [], "val": [], "test": []}, {}, {})
    contract.write(model_dir, SegmentationUNet(cfg.model, 3).state_dict())
    return ct, model_dir


_W: dict[str, Any] = {}


def _segment_tensor() -> Any:
    """``pgl_core.predict.segment_tensor``, or what ``segment_array`` did before it existed (to time
    an older checkout: run a copy of this file with that checkout on PYTHONPATH)."""
    try:
        from pgl_core.predict import segment_tensor
        return segment_tensor
    except ImportError:
        from pgl_core.evaluation.sliding_window import sliding_window_predict

        def old(model: Any, contract: Any, x: Any, device: Any, batch: int) -> Any:
            import torch
            norm = contract.norm_from()
            pad = float(norm.apply(torch.tensor([norm.hu_window[0]])).item())
            return sliding_window_predict(x[None, None], model, contract.patch_vox,
                                          int(contract.architecture["num_classes"]),
                                          overlap=float(contract.sw_overlap), sw_batch_size=batch,
                                          device=device, pad_value=pad)
        return old


def _default_batch() -> int:
    try:
        from pgl_core.predict import SW_BATCH
        return SW_BATCH
    except ImportError:
        return 2


def _setup(method: str, ct: str, model_dir: str, threads: int, batch: int) -> float:
    """Load model and input into this worker; one untimed warm-up; returns the RSS in MB."""
    import numpy as np
    import torch

    from pgl_core.contracts import load_segmenter
    from pgl_core.predict import read_input, to_model_grid
    from storage.volume import Volume

    if threads:
        torch.set_num_threads(threads)
    model, contract = load_segmenter(model_dir)
    image = read_input(ct, None, contract.plan)
    norm = contract.norm_from()
    x = norm.apply(torch.from_numpy(np.ascontiguousarray(to_model_grid(image, contract).array, dtype=np.float32)))
    _W.update(method=method, batch=batch or _default_batch(), model=model, contract=contract, image=image, x=x[None, None])
    small = image.array[: 2 * contract.patch_vox[0], :160, :160]
    _run(method, x[None, None, : contract.patch_vox[0] + 2, :96, :96],
         Volume(np.ascontiguousarray(small), image.spacing_mm, image.origin_mm, image.direction))
    return status_mb("VmRSS")


def _run(method: str, x: Any, image: Any) -> Any:
    import torch

    from pgl_core.predict import predict_volume

    model, contract, batch = _W["model"], _W["contract"], _W["batch"]
    if method == "ours-sw":
        return _segment_tensor()(model, contract, x[0, 0], torch.device("cpu"), batch).numpy()
    if method == "predict":
        return predict_volume(model, contract, image, torch.device("cpu")).array
    from monai.inferers import sliding_window_inference

    batch = 1 if method == "monai-b1" else batch
    with torch.inference_mode():
        probs = sliding_window_inference(x, contract.patch_vox, batch, lambda w: torch.softmax(model(w), 1),
                                         overlap=float(contract.sw_overlap), mode="gaussian")
        return probs.argmax(1)[0].to(torch.uint8).numpy()


def _timed(compare: bool) -> tuple[float, float, Any]:
    """(seconds, peak MB above the RSS before, labels or None) of one run of this worker's method."""
    import gc

    gc.collect()
    before = status_mb("VmRSS")
    reset_peak()
    t0 = time.perf_counter()
    labels = _run(_W["method"], _W["x"], _W["image"])
    seconds = time.perf_counter() - t0
    peak = status_mb("VmHWM") - before
    return seconds, peak, labels if compare else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="/tmp/pgl-bench-predict", help="where the phantom and model are kept")
    ap.add_argument("--shape", type=int, nargs=3, default=(133, 512, 512), help="input z y x voxels")
    ap.add_argument("--spacing-in", type=float, nargs=3, default=(0.7, 0.7, 2.5), help="input x y z mm")
    ap.add_argument("--spacing", type=float, nargs=3, default=(1.5, 1.5, 2.5), help="model x y z mm")
    ap.add_argument("--patch", type=int, nargs=3, default=(16, 48, 48), help="model window z y x voxels")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per worker (0: torch's default)")
    ap.add_argument("--batch", type=int, default=0,
                    help="windows per network call for ours-sw and monai (0: pgl predict's choice)")
    ap.add_argument("--methods", nargs="+", default=["ours-sw", "predict", "monai"], choices=METHODS)
    ap.add_argument("--monai-default", action="store_true", help="add monai-b1 (MONAI's default batch of 1)")
    ap.add_argument("--spin", action="store_true",
                    help="keep OpenMP's default wait policy (pgl predict sets OMP_WAIT_POLICY=PASSIVE)")
    args = ap.parse_args()
    if not args.spin:  # what `pgl predict` sets, for every method alike (the workers inherit it)
        from flows.runtime import configure_cpu_inference
        configure_cpu_inference()
    methods = list(args.methods) + (["monai-b1"] if args.monai_default and "monai-b1" not in args.methods else [])
    ct, model_dir = make_inputs(args.data, tuple(args.shape), tuple(args.spacing_in), tuple(args.spacing),
                                tuple(args.patch))
    ctx = mp.get_context("spawn")
    pools = {m: ctx.Pool(1) for m in methods}
    base = {m: pools[m].apply(_setup, (m, ct, model_dir, args.threads, args.batch)) for m in methods}
    print(f"input {tuple(args.shape)} at {tuple(args.spacing_in)} mm -> model {tuple(args.spacing)} mm, "
          f"patch {tuple(args.patch)}, torch threads {args.threads or 'default'}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; worker RSS after setup (MB): "
          + ", ".join(f"{m} {v:.0f}" for m, v in base.items()), flush=True)
    times: dict[str, list[float]] = {m: [] for m in methods}
    peaks: dict[str, list[float]] = {m: [] for m in methods}
    labels: dict[str, Any] = {}
    for r in range(args.repeats):
        order = methods if r % 2 == 0 else methods[::-1]
        for m in order:
            seconds, peak, out = pools[m].apply(_timed, (r == 0 and m in ("ours-sw", "monai"),))
            times[m].append(seconds)
            peaks[m].append(peak)
            if out is not None:
                labels[m] = out
            print(f"  repeat {r}: {m:9s} {seconds:8.2f} s  peak +{peak:7.0f} MB", flush=True)
    for pool in pools.values():
        pool.close()
    _report(methods, times, peaks, labels)


def _report(methods: list[str], times: dict, peaks: dict, labels: dict) -> None:
    ref = "monai" if "monai" in methods else None
    print(f"\n{'method':10s} {'median s':>9s} {'min s':>8s} {'peak MB':>8s}" + (f" {'/ monai (median, min)':>22s}" if ref else ""))
    for m in methods:
        med, low = statistics.median(times[m]), min(times[m])
        line = f"{m:10s} {med:9.2f} {low:8.2f} {max(peaks[m]):8.0f}"
        if ref:
            line += f"   {med / statistics.median(times[ref]):6.2f}x {low / min(times[ref]):6.2f}x"
        print(line)
    if "ours-sw" in labels and "monai" in labels:
        same = float((labels["ours-sw"] == labels["monai"]).mean())
        print(f"label maps ours-sw vs monai: {same * 100:.4f} % of voxels equal")


if __name__ == "__main__":
    main()
