"""The ``pgl`` command line: one subcommand per stage, each with ``--help``.

Exit status: 0 on full success, 1 when some work items failed (after all others finished),
2 on usage or configuration errors.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from flows import runtime

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


class UsageError(Exception):
    """A bad flag or value; the CLI prints it and exits 2."""


def _triple(kind: type) -> Callable[[str], tuple]:
    def parse(text: str) -> tuple:
        parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
        try:
            return tuple(kind(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not numbers: {text!r}") from None
    return parse


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="YAML config file (see deploy/configs/).")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="Override one config field, e.g. --set preprocess.zstd_level=5 (repeatable).")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgl", description="PGL self-supervised pretraining pipeline for 3D CT segmentation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("phantoms", help="Write synthetic abdominal CT phantom datasets (NIfTI / DICOM).",
                       description="Write seeded synthetic CT phantoms in the MSD layout and/or as DICOM series.")
    p.add_argument("--out", required=True, help="Output folder.")
    p.add_argument("--kinds", default="btcv,lits,kits,spleen,pool",
                   help="Comma-separated dataset kinds: btcv, lits, kits, spleen, pool (default: all).")
    p.add_argument("--cases", type=int, default=4, help="Cases per kind (default 4).")
    p.add_argument("--shape", type=_triple(int), default=(64, 128, 128), metavar="Z,Y,X",
                   help="Volume size in voxels (default 64,128,128).")
    p.add_argument("--seed", type=int, default=0, help="Random seed (default 0).")
    p.add_argument("--format", default="nifti", help="nifti, dicom or nifti,dicom (default nifti).")

    p = sub.add_parser("preprocess", help="Convert raw CT (MSD, volume folder, DICOM tree) to a Zarr dataset.",
                       description="Convert raw CT into a chunked Zarr v3 dataset, one Prefect task per case on "
                       "Dask. Reruns skip unchanged cases; new cases are added incrementally.")
    p.add_argument("--input", required=True, help="MSD folder, folder of volumes or DICOM tree (path or s3://).")
    p.add_argument("--dataset", required=True, help="Dataset name (a Zarr group under the store root).")
    p.add_argument("--store", required=True, help="Store root: a folder or s3://bucket/prefix.")
    p.add_argument("--target-spacing", type=_triple(float), metavar="X,Y,Z",
                   help="Output spacing in mm (default: the dataset's median spacing).")
    p.add_argument("--force", action="store_true", help="Redo cases even when unchanged.")
    p.add_argument("--dask-address", help="Join an existing Dask scheduler (default: a local cluster; "
                   "env PGL_DASK_ADDRESS).")
    p.add_argument("--workers", type=int, help="Local Dask workers (default: one per core).")
    _add_config_args(p)

    p = sub.add_parser("demo", help="Run the whole pipeline on synthetic phantoms, embedded (no services).",
                       description="Generate phantoms, preprocess them, and run as much of the pipeline as "
                       "exists, keeping everything under --workdir.")
    p.add_argument("--workdir", default="demo-work", help="Folder for everything the demo makes.")
    p.add_argument("--cases", type=int, default=3, help="Cases per phantom dataset (default 3).")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    runtime.configure(getattr(args, "workdir", None))
    from flows import commands  # after runtime.configure: imports prefect

    handler = getattr(commands, f"cmd_{args.command}")
    try:
        return handler(args)
    except (UsageError, commands.ConfigError) as err:
        print(f"pgl {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
