"""``pgl pretrain``: PGL self-supervised pretraining from Zarr datasets, through the pretrain stage."""

from __future__ import annotations

import argparse

from flows.cli import (add_config_args, add_device_args, add_stage_args, add_store_args, run_training_stage,
                       uri_arg)
from pgl_core.exits import EXIT_OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="PGL self-supervised pretraining on one or more Zarr datasets.",
        description=cmd_pretrain.__doc__)
    add_store_args(p)
    p.add_argument("--datasets", required=True, help="Comma-separated dataset names in the store.")
    p.add_argument("--output", required=True, type=uri_arg, help="Run output (checkpoints, encoder.pt, contract.json).")
    p.add_argument("--preset", default="paper", choices=["paper", "tiny"], help="Config preset (default paper).")
    p.add_argument("--steps", type=int, help="Optimisation steps (sets train.steps).")
    p.add_argument("--mode", choices=["pgl", "global", "local"],
                   help="pgl (global + local), global (= BYOL baseline) or local (sets loss.mode).")
    add_device_args(p, "Processes on this node (one per GPU; default 1).")
    add_stage_args(p)
    add_config_args(p)
    p.set_defaults(handler=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Pretrain an encoder with PGL (global BYOL + prior-guided local consistency) through the
    pretrain stage: the same stage key, skip, MLflow run and registration (pgl-encoder) as the
    pipeline and the Prefect UI. Training runs under torchrun (--nproc processes). Resumes from the
    latest checkpoint in --output. Exit 75 means preempted (SIGTERM) after a checkpoint: rerun the
    same command to resume."""
    from flows.stages.pretrain import pretrain_flow
    from pgl_core.config import load_config

    overrides = list(args.overrides)
    load_config(args.config, overrides, preset=args.preset)  # a typo is a usage error before any work
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    result = run_training_stage("pretrain", lambda: pretrain_flow(
        store=args.store, datasets=datasets, output=args.output, preset=args.preset, config=args.config,
        overrides=overrides, steps=args.steps, mode=args.mode, nproc=args.nproc, device=args.device,
        register_model=args.register, force=args.force, max_steps=args.max_steps))
    if isinstance(result, int):
        return result
    print(f"pretrain -> {args.output}: {result['status']}"
          + (f" ({result.get('encoder_uri')})" if result["status"] != "stopped" else "; rerun to resume"))
    return EXIT_OK
