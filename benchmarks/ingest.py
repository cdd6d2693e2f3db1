"""Ingest benchmark: DICOM series and NIfTI image + label -> canonical, resampled int16 Zarr, against
the read floor and .nii.gz.

Builds a few CT-like DICOM series and labelled NIfTI cases (``phantoms``, default 3 cases of
120 x 512 x 512 per format, kept in ``--data`` for reuse), warms the page cache, then, per format
(``--formats``), times each case in worker processes: one
long-lived process per method that takes the cases one after another, as a preprocessing worker
does; after one untimed warm-up case per worker, each case runs through every method back to
back, so ratios are taken per case and load from elsewhere on the machine largely cancels:

  floor     merely reading the input with SimpleITK: ImageSeriesReader (series file names + read) for
            DICOM, ReadImage of the image and of the label for NIfTI
  ours      storage.ingest.ingest_case into a local store, plan spacing --spacing (real resampling)
  before    the same with the code of another source tree (``--before TREE``, e.g. an export of
            the previous commit: ``git archive HEAD~3 | tar -x -C /tmp/before``): before / after
            measured interleaved in one run
  ours-nat  the same with the plan at the series' native spacing (no resampling)
  ours-prep the conversion in memory, as ingest did before it streamed: checksum, the whole
            series read, canonicalize, resample, int16 (ingest now reads, resamples and writes a
            slice / chunk row at a time, so no part of "ours" corresponds to it exactly)
  (b)       the same conversion (read_case + canonicalize + resample + int16) written as .nii.gz
            with SimpleITK WriteImage(useCompression=True), what nnU-Net v1 / MONAI pipelines store
  (b-sitk)  the whole classic SimpleITK pipeline: ImageSeriesReader + DICOMOrient +
            ResampleImageFilter (linear) + WriteImage .nii.gz (skip with --no-classic)
  zstd-3    "ours" with the store's codec (Blosc zstd + byte shuffle) swapped for plain zstd
            level 3, the codec the store used before (same checksum, read, resample, stats,
            chunks; written with zarr directly): what the codec choice buys (--no-what-if skips)

  monai     MONAI's usual preprocessing: LoadImaged (PydicomReader / NibabelReader) + EnsureChannelFirstd + Orientationd
            (RAS) + Spacingd (bilinear image, nearest label) + SaveImaged .nii.gz, image and label
  torchio   TorchIO: ScalarImage / LabelMap + ToCanonical + Resample + save .nii.gz
  nnunet    nnU-Net v2's own per-case preprocessing, as ``nnUNetv2_preprocess`` runs it in each of
            its workers: ``DefaultPreprocessor.run_case_save`` (SimpleITKIO read of image and label,
            transpose, crop to nonzero, CTNormalization, resampling to --spacing with the default
            resample_data_or_seg_to_shape, order 3 image / order 1 label, foreground location
            sampling, float32 image + int16 label saved as blosc2 .b2nd + .pkl), from a minimal
            plans dict built here (one 3d_fullres configuration; no fingerprint: fixed CT
            intensity properties). nnU-Net does not read DICOM series: NIfTI only. It keeps the
            array order of the file (no reorientation to a canonical frame)
            (monai, torchio and nnunet run when importable in this interpreter: MONAI is a
            dependency of this project; for TorchIO or nnU-Net v2 make a separate venv with the
            package and this project's storage dependencies, and run the benchmark with that
            venv's python; for nnU-Net v2 (2.8.1 tried), with torch pinned to the CPU build:
              python3 -m venv /tmp/peers && /tmp/peers/bin/pip install torch==2.13.0 torchvision==0.28.0 nnunetv2 zarr==3.1.6 numcodecs==0.16.6 google-crc32c isal==1.9.1 pydicom==3.0.2
              PYTHONPATH=. /tmp/peers/bin/python benchmarks/ingest.py --formats nifti --methods floor ours nnunet --cases 2 --shape 60 256 256)

(b), (b-sitk), zstd-3, ours-nat and ours-prep run for DICOM only; nnunet for NIfTI only.

Targets (issue 13): ours <= 1.5x floor on DICOM, <= 2.0x on NIfTI image + label, both with peak
memory <= 2x one input volume above the worker's baseline; ours >= 3x faster than (b). Per case
each method reports wall seconds, CPU seconds (all threads of its worker) and peak RSS above its
worker's post-import baseline (VmHWM reset before each case), in multiples of one input volume
(the int16 image); ratios are per case against the floor run just before. Usage:

    python benchmarks/ingest.py                       # 3 cases of 120 x 512 x 512 per format
    python benchmarks/ingest.py --cases 2 --shape 60 256 256 --no-classic   # quick
    python benchmarks/ingest.py --methods floor ours before --before /tmp/before --repeats 3
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from typing import Any

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

from benchmarks.rss import reset_peak, status_mb  # noqa: E402

METHODS = ("floor", "ours", "before", "ours-nat", "ours-prep", "(b)", "(b-sitk)", "what-if", "monai", "torchio",
           "nnunet")
PEERS = {"monai": "monai", "torchio": "torchio", "nnunet": "nnunetv2"}  # method -> the package it needs
DICOM_ONLY = ("ours-nat", "ours-prep", "(b)", "(b-sitk)", "what-if")
NIFTI_ONLY = ("nnunet",)  # nnU-Net reads image files (SimpleITKIO), not DICOM series


def _floor(case: Any) -> None:
    import SimpleITK as sitk
    if case.kind != "dicom":
        for uri in (*case.image_uris, *((case.label_uri,) if case.label_uri else ())):
            sitk.ReadImage(uri)
        return
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(os.path.dirname(case.image_uris[0])))
    reader.Execute()


def _nifti(case: Any, spacing_mm: tuple[float, float, float], out: str) -> None:
    import SimpleITK as sitk

    from storage.geometry import canonicalize, resample, to_int16_hu
    from storage.readers import read_case
    image, _, _ = read_case(case)
    vol = to_int16_hu(resample(canonicalize(image), spacing_mm))
    sitk.WriteImage(vol.to_sitk(), out, useCompression=True)


def _classic(case: Any, spacing_mm: tuple[float, float, float], out: str) -> None:
    import SimpleITK as sitk
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(os.path.dirname(case.image_uris[0])))
    img = sitk.DICOMOrient(reader.Execute(), "LPS")
    size = [max(1, int(round(n * s / t))) for n, s, t in zip(img.GetSize(), img.GetSpacing(), spacing_mm)]
    img = sitk.Resample(sitk.Cast(img, sitk.sitkFloat32), size, sitk.Transform(), sitk.sitkLinear, img.GetOrigin(),
                        spacing_mm, img.GetDirection(), 0.0, sitk.sitkFloat32, True)
    sitk.WriteImage(sitk.Cast(sitk.Round(img), sitk.sitkInt16), out, useCompression=True)


def _prepared(case: Any, spacing_mm: tuple[float, float, float]) -> Any:
    """What ingest_case does before writing: checksum, read, canonicalize, resample, int16."""
    from storage.checksum import sha256_files
    from storage.geometry import canonicalize, resample, to_int16_hu
    from storage.readers import read_case
    image, _, _ = read_case(case, source_checksum=sha256_files(list(case.image_uris)))
    return to_int16_hu(resample(canonicalize(image), spacing_mm))


def _what_if(case: Any, spacing_mm: tuple[float, float, float], out: str) -> None:
    import zarr
    from zarr.codecs import ZstdCodec

    from storage import layout
    vol = _prepared(case, spacing_mm)
    layout.image_stats(vol.array)
    group = zarr.open_group(os.path.join(out, case.case_id), mode="w", zarr_format=3)
    arr = group.create_array("image", shape=vol.array.shape, dtype="int16", chunks=(32, 64, 64), fill_value=-1024,
                             compressors=ZstdCodec(level=3),
                             config={"write_empty_chunks": False})
    arr[...] = vol.array


def _inputs(case: Any) -> tuple[str, str | None]:
    """(image, label) paths as the peers take them: a DICOM series as its folder."""
    image = os.path.dirname(case.image_uris[0]) if case.kind == "dicom" else case.image_uris[0]
    return image, case.label_uri


def _monai(case: Any, spacing_mm: tuple[float, float, float], out: str) -> None:
    from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, SaveImaged, Spacingd

    image, label = _inputs(case)
    keys = ["image", "label"] if label else ["image"]
    modes = ["bilinear", "nearest"][:len(keys)]
    reader = "PydicomReader" if case.kind == "dicom" else "NibabelReader"  # MONAI's own (no itk here)
    Compose([LoadImaged(keys, reader=reader), EnsureChannelFirstd(keys), Orientationd(keys, axcodes="RAS"),
             Spacingd(keys, pixdim=spacing_mm, mode=modes),
             SaveImaged(keys, output_dir=out, output_postfix=case.case_id, separate_folder=False, print_log=False,
                        output_dtype=None)])({"image": image, **({"label": label} if label else {})})


def _torchio(case: Any, spacing_mm: tuple[float, float, float], out: str) -> None:
    import torchio as tio

    image, label = _inputs(case)
    subject = tio.Subject(image=tio.ScalarImage(image), **({"label": tio.LabelMap(label)} if label else {}))
    subject = tio.Compose([tio.ToCanonical(), tio.Resample(spacing_mm)])(subject)
    for key in subject.keys():
        if isinstance(subject[key], tio.Image):
            subject[key].save(os.path.join(out, f"{case.case_id}_{key}.nii.gz"))


def nnunet_plans(spacing_mm: tuple[float, float, float]) -> tuple[dict, dict]:
    """A minimal nnU-Net v2 plans dict (one ``3d_fullres`` configuration at ``spacing_mm``, given
    x, y, z; nnU-Net's spacings are z, y, x) and its dataset_json, as nnUNetv2_plan_and_preprocess
    would write them for a one-channel CT dataset with a spleen label; only what preprocessing reads
    is filled in (the architecture is a placeholder: preprocessing never builds the network)."""
    seg_kwargs = {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None}
    data_kwargs = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}  # nnU-Net's defaults
    config = {
        "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
        "batch_size": 2, "patch_size": [64, 192, 160], "median_image_size_in_voxels": [120, 512, 512],
        "spacing": [float(spacing_mm[2]), float(spacing_mm[1]), float(spacing_mm[0])],
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": data_kwargs,
        "resampling_fn_seg": "resample_data_or_seg_to_shape", "resampling_fn_seg_kwargs": seg_kwargs,
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities_kwargs": {**data_kwargs, "order": 1},
        "batch_dice": False,
        "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                         "arch_kwargs": {}, "_kw_requires_import": []},
    }
    plans = {
        "dataset_name": "Dataset001_Bench", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": config["spacing"], "original_median_shape_after_transp": [120, 512, 512],
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "configurations": {"3d_fullres": config}, "experiment_planner_used": "ExperimentPlanner",
        "label_manager": "LabelManager",
        # fixed CT intensity properties (what nnU-Net's fingerprint of a spleen CT dataset gives, roughly),
        # not a fingerprint of the phantoms: CTNormalization clips to the percentiles and z-scores, and
        # its cost does not depend on the values
        "foreground_intensity_properties_per_channel": {"0": {
            "max": 3071.0, "mean": 99.3, "median": 102.0, "min": -1024.0, "percentile_00_5": -41.0,
            "percentile_99_5": 176.0, "std": 39.4}},
    }
    dataset_json = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "spleen": 1}, "numTraining": 0,
                    "file_ending": ".nii.gz"}
    return plans, dataset_json


def _nnunet_setup(spacing_mm: tuple[float, float, float]) -> dict[str, Any]:
    """nnU-Net's preprocessor with its plans and configuration managers (built once per worker)."""
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    plans, dataset_json = nnunet_plans(spacing_mm)
    manager = PlansManager(plans)
    return {"preprocessor": DefaultPreprocessor(verbose=False), "plans_manager": manager,
            "configuration_manager": manager.get_configuration("3d_fullres"), "dataset_json": dataset_json}


def _nnunet(case: Any, out: str) -> None:
    nn = _WORKER["nnunet"]
    target = os.path.join(out, case.case_id)
    for suffix in (".b2nd", "_seg.b2nd", ".pkl"):  # blosc2 will not overwrite; nnUNetv2_preprocess starts
        if os.path.exists(target + suffix):         # from an empty folder (as "ours" runs with force=True)
            os.remove(target + suffix)
    nn["preprocessor"].run_case_save(target, list(case.image_uris), case.label_uri,
                                     nn["plans_manager"], nn["configuration_manager"], nn["dataset_json"])


def run_case(method: str, plan: Any, case: Any, spacing_mm: tuple, out: str) -> None:
    """One case by ``method`` (see the module doc), writing under the folder ``out``."""
    from storage.ingest import ingest_case
    if method == "floor":
        _floor(case)
    elif plan is not None:
        result = ingest_case(case, out, "bench", plan, force=True)
        if result.status != "done":
            raise RuntimeError(f"{method}: case {case.case_id} {result.status}: {result.reason}")
    elif method == "(b)":
        _nifti(case, spacing_mm, os.path.join(out, f"{case.case_id}.nii.gz"))
    elif method == "ours-prep":
        _prepared(case, spacing_mm)
    elif method == "what-if":
        _what_if(case, spacing_mm, out)
    elif method == "monai":
        _monai(case, spacing_mm, out)
    elif method == "torchio":
        _torchio(case, spacing_mm, out)
    elif method == "nnunet":
        _nnunet(case, out)
    else:
        _classic(case, spacing_mm, os.path.join(out, f"{case.case_id}.nii.gz"))


_WORKER: dict[str, Any] = {}


def _setup(method: str, spacing_mm: tuple, work: str, zstd_level: int, label_names: dict,
           before: str | None) -> float:
    """In a method's worker process: imports, output folder (and store); returns RSS in MB."""
    if method == "before":  # this worker runs the other tree's storage package
        sys.path.insert(0, os.path.abspath(before))
    import numpy as np  # noqa: F401  (imports are part of the baseline, not of a case)
    import SimpleITK  # noqa: F401
    import zarr  # noqa: F401

    from storage.plan import Plan
    from storage.store import DatasetStore
    out = os.path.join(work, method.strip("()").replace("-", "_"))
    os.makedirs(out, exist_ok=True)
    plan = None
    if method == "nnunet":
        _WORKER["nnunet"] = _nnunet_setup(tuple(spacing_mm))
    if method in ("ours", "ours-nat", "before"):
        plan = Plan(target_spacing_mm=tuple(spacing_mm), zstd_level=zstd_level)
        DatasetStore(out, "bench", create=True).ensure(plan.to_dict(), label_names)
        import storage
        assert os.path.dirname(os.path.dirname(storage.__file__)) == os.path.abspath(before if method == "before"
                                                                                       else _ROOT), storage.__file__
    _WORKER.update(method=method, plan=plan, spacing_mm=tuple(spacing_mm), out=out)
    return status_mb("VmRSS")


def _timed(case: Any) -> dict[str, Any]:
    """In a method's worker process: run one case; its seconds and peak RSS (MB)."""
    per_case = reset_peak()
    t0, c0 = time.perf_counter(), time.process_time()
    run_case(_WORKER["method"], _WORKER["plan"], case, _WORKER["spacing_mm"], _WORKER["out"])
    return {"case": case.case_id, "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0,
            "peak_rss_mb": status_mb("VmHWM"), "peak_is_per_case": per_case}


def make_data(data: str, n: int, shape_zyx: tuple[int, int, int], fmt: str = "dicom") -> str:
    """The phantom folder for (n, shape): unlabelled DICOM series, or labelled NIfTI (image + label),
    generated once and reused."""
    from phantoms import write_dataset
    folder = data if fmt == "dicom" else os.path.join(data, "nifti")
    marker = os.path.join(folder, "bench.json" if fmt == "dicom" else "bench-nifti.json")
    want = {"n": n, "shape_zyx": list(shape_zyx)}
    kind, found = ("pool", "PhantomPool_dicom") if fmt == "dicom" else ("spleen", "PhantomSpleen")
    if os.path.exists(marker) and json.load(open(marker)) == want:
        return os.path.join(folder, found)
    if fmt == "dicom":
        for name in ("PhantomPool_dicom", "bench.json"):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
    else:
        shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    summary = write_dataset(folder, kind, n, shape_zyx=shape_zyx, formats=(fmt,))
    json.dump(want, open(marker, "w"))
    print(f"generated {n} {fmt} cases {shape_zyx} in {time.perf_counter() - t0:.1f} s")
    return summary["folders"][fmt]


def warm_page_cache(cases: list) -> int:
    total = 0
    for case in cases:
        for uri in (*case.image_uris, *((case.label_uri,) if case.label_uri else ())):
            with open(uri, "rb") as fh:
                while block := fh.read(1 << 22):
                    total += len(block)
    return total


def run_interleaved(methods: dict[str, tuple], cases: list, work: str, zstd_level: int, label_names: dict,
                    before: str | None = None, repeats: int = 1) -> dict[str, dict]:
    """One worker process per method (``{method: target spacing}``), all alive at once; after an
    untimed warm-up case each, cases run in turn through every method (``repeats`` rounds), so load
    changes on the machine hit all methods alike."""
    ctx = mp.get_context("spawn")
    pools = {m: cf.ProcessPoolExecutor(max_workers=1, mp_context=ctx) for m in methods}
    try:
        base = {m: pools[m].submit(_setup, m, sp, work, zstd_level, label_names, before).result()
                for m, sp in methods.items()}
        for m in methods:
            pools[m].submit(_timed, cases[0]).result()
        rows: dict[str, list] = {m: [] for m in methods}
        for _ in range(repeats):
            for case in cases:
                for m in methods:
                    rows[m].append(pools[m].submit(_timed, case).result())
    finally:
        for pool in pools.values():
            pool.shutdown()
    results = {}
    for m in methods:
        out = os.path.join(work, m.strip("()").replace("-", "_"))
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
        results[m] = {"method": m, "rows": rows[m], "baseline_rss_mb": base[m], "bytes_written": size}
    return results


def _ratios(num: list[dict], den: list[dict], key: str = "seconds") -> list[float]:
    """Per case num/den of ``key`` (cases ran back to back, so load largely cancels out)."""
    return [a[key] / b[key] for a, b in zip(num, den)]


def _med_min(values: list[float], fmt: str = "{:.2f}") -> str:
    import numpy as np
    return f"{fmt.format(float(np.median(values)))} [{fmt.format(min(values))}]"


def print_table(results: dict[str, dict], labels: dict[str, str], vol_mb: float, fmt: str) -> dict[str, Any]:
    """The table of one format (median [min] over cases and repeats); returns its summary."""
    rows = {m: res["rows"] for m, res in results.items()}
    print(f"\n{fmt}: median [min] per case; ratios per case against the floor run just before; "
          f"memory: peak RSS above the worker's baseline / one input volume ({vol_mb:.0f} MB)")
    print(f"{'method':<52}{'wall ms':>15}{'x floor':>14}{'CPU ms':>15}{'CPU x floor':>14}{'peak x vol':>13}")
    summary: dict[str, Any] = {}
    for m, res in results.items():
        wall = [1000 * r["seconds"] for r in rows[m]]
        cpu = [1000 * r["cpu_seconds"] for r in rows[m]]
        peak = [(r["peak_rss_mb"] - res["baseline_rss_mb"]) / vol_mb for r in rows[m]]
        x_floor = _ratios(rows[m], rows["floor"]) if "floor" in rows else [float("nan")]
        cpu_floor = _ratios(rows[m], rows["floor"], "cpu_seconds") if "floor" in rows else [float("nan")]
        print(f"{labels[m]:<52}{_med_min(wall, '{:.0f}'):>15}{_med_min(x_floor):>14}{_med_min(cpu, '{:.0f}'):>15}"
              f"{_med_min(cpu_floor):>14}{_med_min(peak, '{:.1f}'):>13}")
        summary[m] = {"wall_ms": wall, "x_floor": x_floor, "cpu_ms": cpu, "cpu_x_floor": cpu_floor,
                      "peak_x_volume": peak, "per_case_peak": all(r["peak_is_per_case"] for r in rows[m])}
    if {"ours", "floor"} <= set(rows):
        import numpy as np
        target = 1.5 if fmt == "dicom" else 2.0
        x = float(np.median(summary["ours"]["x_floor"]))
        print(f"target ours <= {target}x floor: {x:.2f}x [{'met' if x <= target else 'NOT met'}]; peak "
              f"<= 2x one volume: {max(summary['ours']['peak_x_volume']):.1f}x at most")
    if {"ours", "(b)"} <= set(rows):
        import numpy as np
        vs_b = float(np.median(_ratios(rows["(b)"], rows["ours"])))
        print(f"ours >= 3x faster than (b): {vs_b:.2f}x [{'met' if vs_b >= 3 else 'NOT met'}]")
    for peer in ("monai", "torchio", "nnunet"):
        if {"ours", peer} <= set(rows):
            print(f"{peer} / ours per case: {_med_min(_ratios(rows[peer], rows['ours']))}x wall, "
                  f"{_med_min(_ratios(rows[peer], rows['ours'], 'cpu_seconds'))}x CPU")
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--shape", type=int, nargs=3, default=(120, 512, 512), metavar=("Z", "Y", "X"))
    ap.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.8, 2.0), metavar=("X", "Y", "Z"),
                    help="plan target spacing in mm (x, y, z)")
    ap.add_argument("--formats", nargs="+", choices=("dicom", "nifti"), default=["dicom", "nifti"])
    ap.add_argument("--repeats", type=int, default=1, help="rounds over the cases (interleaved)")
    ap.add_argument("--before", default=None, help="source tree whose storage package the 'before' method runs")
    ap.add_argument("--zstd-level", type=int, default=1)
    ap.add_argument("--no-classic", dest="classic", action="store_false", help="skip (b-sitk)")
    ap.add_argument("--no-what-if", dest="what_if", action="store_false", help="skip the plain-zstd comparison")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=[m for m in METHODS if m not in ("before", "torchio")],
                    help="run only these")
    ap.add_argument("--data", default=os.path.join(tempfile.gettempdir(), "pgl-ingest-bench-data"),
                    help="where the phantoms are generated once and reused")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    if "before" in args.methods and not args.before:
        ap.error("the method 'before' needs --before TREE")
    from storage.readers import discover_cases, read_case
    labels = {"floor": "floor: SimpleITK read",
              "ours": f"ours: ingest_case -> Zarr, spacing {tuple(args.spacing)}",
              "before": f"before: ingest_case of {args.before}",
              "ours-nat": "ours-nat: ingest_case -> Zarr, native spacing",
              "ours-prep": "ours-prep: whole read + resample in memory",
              "(b)": "(b): same conversion -> .nii.gz (SimpleITK)",
              "(b-sitk)": "(b-sitk): SimpleITK read+orient+resample -> .nii.gz",
              "what-if": "zstd-3: ours with plain zstd level 3 chunks",
              "monai": "monai: Load + Orientation + Spacing + Save .nii.gz",
              "torchio": "torchio: ToCanonical + Resample + save .nii.gz",
              "nnunet": "nnunet: DefaultPreprocessor.run_case_save .b2nd"}
    import importlib.util
    missing = [m for m in args.methods if m in PEERS and importlib.util.find_spec(PEERS[m]) is None]
    for m in missing:
        print(f"{m}: skipped ({PEERS[m]} is not installed in {sys.executable}; see the module doc)")
    out: dict[str, Any] = {"shape_zyx": args.shape, "spacing_mm": args.spacing, "formats": {}}
    for fmt in args.formats:
        cases, problems, info = discover_cases(make_data(args.data, args.cases, tuple(args.shape), fmt))
        if problems or len(cases) != args.cases:
            raise SystemExit(f"expected {args.cases} cases, found {len(cases)}; problems: {problems}")
        print(f"{fmt}: page cache warmed: {warm_page_cache(cases) / 1e6:.0f} MB in {len(cases)} cases")
        native = read_case(cases[0])[0].spacing_mm
        chosen = {m: (native if m == "ours-nat" else tuple(args.spacing)) for m in METHODS if m in args.methods
                  and m not in missing
                  and not (m == "(b-sitk)" and not args.classic) and not (m == "what-if" and not args.what_if)
                  and not (fmt != "dicom" and m in DICOM_ONLY) and not (fmt != "nifti" and m in NIFTI_ONLY)}
        with tempfile.TemporaryDirectory(prefix="pgl-ingest-bench-") as work:
            results = run_interleaved(chosen, cases, work, args.zstd_level, info.get("label_names", {}),
                                      args.before, args.repeats)
        vol_mb = 2 * args.shape[0] * args.shape[1] * args.shape[2] / 1e6
        out["formats"][fmt] = {"summary": print_table(results, labels, vol_mb, fmt), "results": results}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
