"""Handlers behind ``pgl finetune``, ``pgl evaluate`` and ``pgl predict`` (thin: config, call, print)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pgl_core.config import load_config

__all__ = ["cmd_evaluate", "cmd_finetune", "cmd_predict", "finetune_argv", "model_dir_of"]

EXIT_OK, EXIT_FAILED = 0, 1


def model_dir_of(uri: str) -> str:
    """A local model directory for a local path or a ``models:/`` / ``runs:/`` reference."""
    try:
        from flows.registry import resolve_model
    except ImportError:
        resolve_model = None
    from flows.cli import UsageError

    if resolve_model is not None:
        try:
            return resolve_model(uri)
        except (FileNotFoundError, LookupError, ValueError) as err:
            raise UsageError(f"model {uri}: {err}") from err
    if not (Path(uri) / "contract.json").is_file():
        raise UsageError(f"{uri} is not a model directory (no contract.json)")
    return uri


def finetune_argv(args: argparse.Namespace) -> list[str]:
    """Arguments of ``python -m pgl_core.finetune`` equivalent to ``pgl finetune`` ``args``."""
    argv = ["--store", args.store, "--dataset", args.dataset, "--init", args.init, "--output", args.output,
            "--preset", args.preset]
    for flag, value in (("--config", args.config), ("--labelled", args.labelled), ("--max-steps", args.max_steps),
                        ("--device", args.device)):
        if value is not None:
            argv += [flag, str(value)]
    for item in _overrides(args):
        argv += ["--set", item]
    return argv


def _overrides(args: argparse.Namespace) -> list[str]:
    return list(args.overrides) + ([f"finetune.steps={args.steps}"] if args.steps else [])


def cmd_finetune(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, _overrides(args), preset=args.preset)  # config errors exit 2 here
    if args.nproc > 1:
        from flows.launch import LaunchError, run_torchrun

        try:
            return run_torchrun("pgl_core.finetune", finetune_argv(args), nproc=args.nproc)
        except LaunchError as err:
            print(f"pgl finetune: {err}", file=sys.stderr)
            return 2 if err.returncode == 2 else EXIT_FAILED
    from pgl_core.finetune import run_finetuning
    from pgl_core.loop import EXIT_PREEMPTED

    res = run_finetuning(cfg, args.store, args.dataset, args.init, args.output, max_steps=args.max_steps,
                         labelled=args.labelled, device=args.device)
    print(f"fine-tuning {res.status} at step {res.steps}/{cfg.finetune.steps}: best val Dice "
          f"{res.best_val_dice:.4f} (step {res.best_step}), final {res.final_val_dice:.4f}; "
          f"train {len(res.split['train'])} / val {len(res.split['val'])} / test {len(res.split['test'])} cases")
    if res.status == "completed":
        print(f"model: {res.model_dir}")
    return EXIT_PREEMPTED if res.status == "preempted" else EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from pgl_core.evaluate import evaluate_model

    summary = evaluate_model(model_dir_of(args.model), args.store, args.dataset, args.output, split=args.split,
                             overlays=args.overlays, device=args.device)
    overall = {m: summary["overall"][m]["mean"] for m in ("dice", "hd95", "nsd")}
    print(f"{summary['n_cases']} {args.split} case(s): mean " + json.dumps(overall))
    print(f"tables: {summary['files']['csv']}, {summary['files']['json']}")
    return EXIT_OK


def cmd_predict(args: argparse.Namespace) -> int:
    from pgl_core.predict import predict_file
    from storage.errors import StorageError

    try:
        out = predict_file(model_dir_of(args.model), args.input, args.output, device=args.device)
    except StorageError as err:
        print(f"pgl predict: {err}", file=sys.stderr)
        return EXIT_FAILED
    print(f"wrote {out}")
    return EXIT_OK
