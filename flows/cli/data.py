"""``pgl phantoms`` and ``pgl preprocess``: the data side of the command line (parsers and handlers)."""

from __future__ import annotations

import argparse
import json

from flows.cli import UsageError, add_config_args, add_store_args, triple, uri_arg
from pgl_core.exits import EXIT_OK, EXIT_PARTIAL


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantoms", help="Write synthetic abdominal CT phantom datasets (NIfTI / DICOM).",
                       description="Write seeded synthetic CT phantoms in the MSD layout and/or as DICOM series.")
    p.add_argument("--out", required=True, type=uri_arg, help="Output folder.")
    p.add_argument("--kinds", default="btcv,lits,kits,spleen,pool",
                   help="Comma-separated dataset kinds: btcv, lits, kits, spleen, pool (default: all).")
    p.add_argument("--cases", type=int, default=4, help="Cases per kind (default 4).")
    p.add_argument("--shape", type=triple(int), default=(64, 128, 128), metavar="Z,Y,X",
                   help="Volume size in voxels (default 64,128,128).")
    p.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
    p.add_argument("--format", default="nifti", help="nifti, dicom or nifti,dicom (default nifti).")
    p.add_argument("--phase", default="portal_venous", choices=["portal_venous", "non_contrast"],
                   help="Contrast phase of the attenuation values (default portal_venous, like most public "
                   "abdominal CT segmentation sets).")
    p.add_argument("--json", action="store_true", help="Print what was written as JSON instead of a table.")
    p.set_defaults(handler=cmd_phantoms)

    p = sub.add_parser("preprocess", help="Convert raw CT (MSD, volume folder, DICOM tree) to a Zarr dataset.",
                       description=cmd_preprocess.__doc__)
    p.add_argument("--input", required=True, type=uri_arg,
                   help="MSD folder, folder of volumes or DICOM tree (path or s3://).")
    add_store_args(p, "Dataset name (a Zarr group under the store root).")
    p.add_argument("--target-spacing", type=triple(float), metavar="X,Y,Z",
                   help="Output spacing in mm (default: the dataset's median spacing).")
    p.add_argument("--force", action="store_true", help="Redo cases even when unchanged.")
    p.add_argument("--dask-address", help="Join an existing Dask scheduler (default: a local cluster; "
                   "env PGL_DASK_ADDRESS).")
    p.add_argument("--workers", type=int, help="Local Dask workers (default: one per core).")
    add_config_args(p)
    p.set_defaults(handler=cmd_preprocess)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd_phantoms(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from phantoms import write_datasets

    kinds, cases = _split(args.kinds), args.cases
    try:  # every kind and format is checked before anything is written
        with tqdm(total=len(kinds) * cases, desc="phantoms", unit="case") as bar:
            summaries = write_datasets(args.out, kinds, cases, seed=args.seed, shape_zyx=args.shape,
                                       formats=tuple(_split(args.format)), phase=args.phase,
                                       progress=lambda: bar.update(1))
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.json:
        print(json.dumps(summaries, indent=1, default=str))
        return EXIT_OK
    for s in summaries:
        labels = ", ".join(name for value, name in sorted(s["labels"].items()) if int(value)) or "unlabelled"
        folders = ", ".join(s["folders"].values())
        print(f"{s['name']:<16} {s['n_cases']:>3} case(s) {'x'.join(map(str, s['shape_zyx']))} ({s['phase']}; "
              f"{labels}) -> {folders}")
    return EXIT_OK


def cmd_preprocess(args: argparse.Namespace) -> int:
    """Convert raw CT into a chunked Zarr v3 dataset, one Prefect task per case on Dask. Reruns skip
    unchanged cases; new cases are added incrementally."""
    from flows.stages.preprocess import preprocess
    from pgl_core.config import load_config

    cfg = load_config(args.config, args.overrides)
    if args.target_spacing:
        cfg.preprocess.target_spacing_mm = args.target_spacing
    summary = preprocess(args.input, args.dataset, args.store, cfg.preprocess, force=args.force,
                         dask_address=args.dask_address, n_workers=args.workers)
    for line in summary.lines():
        print(line)
    return EXIT_OK if summary.ok else EXIT_PARTIAL
