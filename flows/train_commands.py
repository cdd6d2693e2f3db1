"""Handler of ``pgl pretrain``: builds the config, runs in-process or under torchrun."""

from __future__ import annotations

import argparse

from flows.launch import LaunchError, run_torchrun
from pgl_core.config import load_config

EXIT_OK, EXIT_FAILED = 0, 1


def pretrain_args(args: argparse.Namespace) -> list[str]:
    """The ``pgl_core.pretrain`` command line for these CLI arguments."""
    out = ["--store", args.store, "--datasets", args.datasets, "--output", args.output,
           "--preset", args.preset]
    if args.config:
        out += ["--config", args.config]
    overrides = list(args.overrides)
    if args.steps:
        overrides.append(f"train.steps={args.steps}")
    if args.mode:
        overrides.append(f"loss.mode={args.mode}")
    for item in overrides:
        out += ["--set", item]
    if args.device:
        out += ["--device", args.device]
    return out


def cmd_pretrain(args: argparse.Namespace) -> int:
    argv = pretrain_args(args)
    # validate the config here so that a typo is a usage error before any process starts
    load_config(args.config, [a for a in argv[argv.index("--preset") + 2:] if "=" in a], preset=args.preset)
    if args.nproc <= 1:
        from pgl_core.pretrain import main as pretrain_main

        return pretrain_main(argv)
    try:
        return run_torchrun("pgl_core.pretrain", argv, nproc=args.nproc)
    except LaunchError as err:
        print(f"pgl pretrain: {err}")
        return EXIT_FAILED
