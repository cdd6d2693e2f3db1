"""``pgl finetune``, ``pgl evaluate`` and ``pgl predict``: the segmentation side of the command line."""

from __future__ import annotations

import argparse

from flows.cli import add_config_args


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("finetune", help="Fine-tune a segmentation U-Net on a labelled dataset.",
                       description="Supervised fine-tuning from random init or a pretraining output (its "
                       "preprocessing contract is checked first). Writes checkpoints, split.json and the "
                       "best-on-validation model directory OUTPUT/model.")
    p.add_argument("--store", required=True, help="Store root: a folder or s3://bucket/prefix.")
    p.add_argument("--dataset", required=True, help="Labelled dataset name in the store.")
    p.add_argument("--init", default="random", help="'random' (default) or a pretraining output URI.")
    p.add_argument("--output", required=True, help="Run output folder or s3:// URI.")
    p.add_argument("--labelled", type=float, help="Labelled training cases: a count >= 1 or a fraction < 1.")
    p.add_argument("--steps", type=int, help="Optimisation steps (sets finetune.steps).")
    p.add_argument("--max-steps", type=int, help="Stop after this many steps of this invocation (resumable).")
    p.add_argument("--nproc", type=int, default=1, help="Processes (torchrun) on this node (default 1).")
    p.add_argument("--device", help="cpu, cuda or auto (default).")
    add_config_args(p, preset=True)
    p.set_defaults(handler="flows.seg_commands:cmd_finetune")

    p = sub.add_parser("evaluate", help="Evaluate a segmenter on a dataset split (Dice, HD95, NSD).",
                       description="Sliding-window prediction of the split's cases, per-case and summary "
                       "metrics (metrics.csv, metrics.json) and overlay PNGs under OUTPUT.")
    p.add_argument("--model", required=True, help="Model directory or models:/NAME@ALIAS.")
    p.add_argument("--store", required=True, help="Store root: a folder or s3://bucket/prefix.")
    p.add_argument("--dataset", required=True, help="Dataset name in the store.")
    p.add_argument("--output", required=True, help="Local folder for tables and overlays.")
    p.add_argument("--split", default="test", help="test (default), val, train or all.")
    p.add_argument("--overlays", type=int, default=3, help="Overlay PNGs for the first N cases (default 3).")
    p.add_argument("--device", help="cpu, cuda or auto (default).")
    p.set_defaults(handler="flows.seg_commands:cmd_evaluate")

    p = sub.add_parser("predict", help="Segment a CT file or DICOM series folder.",
                       description="Apply a segmenter (with its preprocessing contract) to one NIfTI / NRRD / "
                       "MHA file or DICOM series folder; the label map is written in the input's geometry.")
    p.add_argument("--model", required=True, help="Model directory or models:/NAME@ALIAS.")
    p.add_argument("--input", required=True, help="Input file or DICOM series folder (path or s3://).")
    p.add_argument("--output", required=True, help="Output label map (.nii.gz, .nii, .nrrd or .mha; path or s3://).")
    p.add_argument("--device", help="cpu, cuda or auto (default).")
    p.set_defaults(handler="flows.seg_commands:cmd_predict")
