"""The ``pgl`` command line: one subcommand per stage, each with ``--help``.

Each ``flows/cli_*.py`` module adds its subcommands through ``add_parsers(sub)`` and names its
handler as ``"module:function"`` (imported only when that command runs, after the runtime is
configured). Exit status: 0 on full success, 1 when some work items failed (after all others
finished), 2 on usage or configuration errors.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Callable

from flows import runtime
from pgl_core.config import add_config_arguments

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2
PARSER_MODULES = ("flows.cli_data", "flows.cli_train", "flows.cli_seg", "flows.cli_ops")


class UsageError(Exception):
    """A bad flag or value; the CLI prints it and exits 2."""


def triple(kind: type) -> Callable[[str], tuple]:
    """argparse type for ``a,b,c`` (or ``axbxc``) triples."""
    def parse(text: str) -> tuple:
        parts = [p for p in text.replace("x", ",").split(",") if p.strip()]
        if len(parts) != 3:
            raise argparse.ArgumentTypeError(f"expected three comma-separated numbers, got {text!r}")
        try:
            return tuple(kind(p) for p in parts)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not numbers: {text!r}") from None
    return parse


def add_config_args(p: argparse.ArgumentParser, preset: bool = False) -> None:
    """``--config FILE`` and repeatable ``--set key=value`` (and ``--preset`` when asked)."""
    add_config_arguments(p, preset=preset)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgl", description="PGL self-supervised pretraining pipeline for 3D CT segmentation.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in PARSER_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.add_parsers(sub)
    return parser


def _resolve(handler: str) -> Callable[[argparse.Namespace], int]:
    module, func = handler.split(":")
    return getattr(importlib.import_module(module), func)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    runtime.configure(getattr(args, "workdir", None))
    from pgl_core.config import ConfigError

    try:
        return _resolve(args.handler)(args)
    except (UsageError, ConfigError) as err:
        print(f"pgl {args.command}: error: {err}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
