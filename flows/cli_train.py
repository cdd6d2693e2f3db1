"""``pgl pretrain``: PGL self-supervised pretraining from Zarr datasets."""

from __future__ import annotations

import argparse

from flows.cli import add_config_args


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="PGL self-supervised pretraining on one or more Zarr datasets.",
        description="Pretrain an encoder with PGL (global BYOL + prior-guided local consistency). Runs in "
        "this process, or under torchrun with --nproc > 1. Resumes from the latest checkpoint in --output. "
        "Exit 75 means preempted (SIGTERM) after a checkpoint: rerun the same command to resume.")
    p.add_argument("--store", required=True, help="Store root: a folder or s3://bucket/prefix.")
    p.add_argument("--datasets", required=True, help="Comma-separated dataset names in the store.")
    p.add_argument("--output", required=True, help="Run output (checkpoints, encoder.pt, contract.json).")
    p.add_argument("--preset", default="paper", choices=["paper", "tiny"], help="Config preset (default paper).")
    p.add_argument("--steps", type=int, help="Optimisation steps (sets train.steps).")
    p.add_argument("--mode", choices=["pgl", "global", "local"],
                   help="pgl (global + local), global (= BYOL baseline) or local (sets loss.mode).")
    p.add_argument("--nproc", type=int, default=1, help="Processes on this node (one per GPU; default 1).")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default).")
    add_config_args(p)
    p.set_defaults(handler="flows.train_commands:cmd_pretrain")
