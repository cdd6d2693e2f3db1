"""``pgl phantoms``, ``pgl preprocess`` and ``pgl demo``: the data side of the command line."""

from __future__ import annotations

import argparse

from flows.cli import add_config_args, triple


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantoms", help="Write synthetic abdominal CT phantom datasets (NIfTI / DICOM).",
                       description="Write seeded synthetic CT phantoms in the MSD layout and/or as DICOM series.")
    p.add_argument("--out", required=True, help="Output folder.")
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
    p.set_defaults(handler="flows.commands:cmd_phantoms")

    p = sub.add_parser("preprocess", help="Convert raw CT (MSD, volume folder, DICOM tree) to a Zarr dataset.",
                       description="Convert raw CT into a chunked Zarr v3 dataset, one Prefect task per case on "
                       "Dask. Reruns skip unchanged cases; new cases are added incrementally.")
    p.add_argument("--input", required=True, help="MSD folder, folder of volumes or DICOM tree (path or s3://).")
    p.add_argument("--dataset", required=True, help="Dataset name (a Zarr group under the store root).")
    p.add_argument("--store", required=True, help="Store root: a folder or s3://bucket/prefix.")
    p.add_argument("--target-spacing", type=triple(float), metavar="X,Y,Z",
                   help="Output spacing in mm (default: the dataset's median spacing).")
    p.add_argument("--force", action="store_true", help="Redo cases even when unchanged.")
    p.add_argument("--dask-address", help="Join an existing Dask scheduler (default: a local cluster; "
                   "env PGL_DASK_ADDRESS).")
    p.add_argument("--workers", type=int, help="Local Dask workers (default: one per core).")
    add_config_args(p)
    p.set_defaults(handler="flows.commands:cmd_preprocess")

    p = sub.add_parser("demo", help="Run the whole pipeline on synthetic phantoms, embedded (no services).",
                       description="Generate phantoms and run the pipeline flow on them with the embedded stack: "
                       "preprocess, pretrain (PGL and BYOL), the supervised gate (random init, all labels), "
                       "fine-tune PhantomLiTS and PhantomSpleen from PGL, BYOL and random init with 2 labelled "
                       "cases over 2 seeds, evaluate, register; prints the gate, the Dice table and paired "
                       "differences with 95%% intervals (results.json). About 8 minutes on 2 CPU cores. "
                       "Everything stays under --workdir.")
    p.add_argument("--workdir", default="demo-work", help="Folder for everything the demo makes.")
    p.set_defaults(handler="flows.commands:cmd_demo")

    p = sub.add_parser("study", help="The PGL-versus-baselines study on phantoms at any size.",
                       description="The demo's protocol (phantoms -> pipeline with the supervised gate and an "
                       "init x seed grid -> results.json: gate, per-init Dice, paired differences with 95%% "
                       "intervals, verdict) with every size a flag; see docs/study.md for the decisive CPU "
                       "command.")
    p.add_argument("--workdir", default="study-work", help="Folder for everything the study makes.")
    p.add_argument("--shape", type=triple(int), default=(24, 48, 48), metavar="Z,Y,X", help="Phantom size.")
    p.add_argument("--cases", type=int, default=10, help="Cases per labelled dataset (default 10).")
    p.add_argument("--pool", type=int, default=16, help="Unlabelled pool cases (default 16).")
    p.add_argument("--spacing", type=triple(float), default=(8.0, 8.0, 10.0), metavar="X,Y,Z",
                   help="One target spacing in mm for every dataset (default 8,8,10).")
    p.add_argument("--inits", default="pgl,global,random", help="Initialisations (default pgl,global,random).")
    p.add_argument("--seeds", default="0,1,2,3,4", help="Fine-tuning seeds (default 0,1,2,3,4).")
    p.add_argument("--kinds", default="btcv,lits,kits,spleen",
                   help="Labelled phantom kinds (default btcv,lits,kits,spleen; a pool is always made).")
    p.add_argument("--no-gate", dest="gate", action="store_false", help="Skip the supervised gate.")
    p.add_argument("--gate-steps", type=int, default=500,
                   help="Fine-tune steps of the gate runs (random init, all labels; default 500).")
    p.add_argument("--labelled", type=float, help="Labelled training cases (count, or fraction < 1).")
    p.add_argument("--parallel", type=int, default=2, help="Fine-tunes at once (default 2).")
    p.add_argument("--preset", default="tiny", choices=["tiny", "paper"], help="Config preset (default tiny).")
    add_config_args(p)
    p.set_defaults(handler="flows.commands:cmd_study")
