"""The ``pgl`` command line: one subcommand per stage, each with ``--help``.

One module per command group holds the parsers and the handlers of its commands:
``data`` (phantoms, preprocess), ``train`` (pretrain), ``seg`` (finetune, evaluate, predict),
``ops`` (pipeline, serve), ``study`` (demo, study), ``tracking`` (replay-metrics). Each adds its
subcommands through ``add_parsers(sub)`` and sets ``handler`` to its function; handlers import the
heavy parts (Prefect, torch, MLflow) only when their command runs, after the runtime is configured.
Handlers of the stages call the stage's flow (``flows/stages/``), so a command gets the same key,
skip and tracking as the pipeline and the UI. Exit status: 0 on full success, 1 when some work
items failed (after all others finished, or storage stopped answering mid-run: one line says what
did not answer), 2 on usage or configuration errors, 75 when training was preempted after a
checkpoint (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import Callable

from flows import runtime
from pgl_core.config import add_config_arguments
from pgl_core.exits import EXIT_PARTIAL, EXIT_PREEMPTED, EXIT_USAGE

PARSER_MODULES = ("flows.cli.data", "flows.cli.train", "flows.cli.seg", "flows.cli.ops", "flows.cli.study",
                  "flows.cli.tracking")


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


def uri_arg(text: str) -> str:
    """argparse type for storage addresses: a local path or a known scheme, no credentials inside
    (the error shows the address redacted; argparse never echoes it)."""
    from storage.uri import BadURI, check_uri

    try:
        return check_uri(text, "address")
    except BadURI as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def model_arg(text: str) -> str:
    """argparse type for a model or init reference: ``random``, ``models:/...``, ``runs:/...`` or a
    storage address (:func:`uri_arg`)."""
    if text == "random" or text.startswith(("models:/", "runs:/")):
        return text
    return uri_arg(text)


def add_store_args(p: argparse.ArgumentParser, dataset_help: str | None = None) -> None:
    """``--store`` (and ``--dataset`` when ``dataset_help`` says what it names)."""
    p.add_argument("--store", required=True, type=uri_arg, help="Store root: a folder or s3://bucket/prefix.")
    if dataset_help:
        p.add_argument("--dataset", required=True, help=dataset_help)


def add_device_args(p: argparse.ArgumentParser, nproc_help: str | None = None) -> None:
    """``--device`` (and ``--nproc`` when ``nproc_help`` says what the processes are)."""
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], help="Where to compute (default: auto, CUDA when "
                   "available).")
    if nproc_help:
        p.add_argument("--nproc", type=int, default=1, help=nproc_help)


def add_stage_args(p: argparse.ArgumentParser) -> None:
    """What every training stage command shares with its flow: the work folder, force, registration."""
    p.add_argument("--max-steps", type=int, help="Stop after this many steps of this invocation (resumable; "
                   "the stage is done, evaluated and registered only when every step ran).")
    p.add_argument("--force", action="store_true", help="Train even when config and inputs are unchanged since "
                   "the last finished run (a rerun is otherwise skipped and says so).")
    p.add_argument("--no-register", dest="register", action="store_false",
                   help="Do not register the result in the MLflow model registry.")
    p.add_argument("--workdir", default="pgl-work", help="Folder of the embedded MLflow store, the model cache "
                   "and the Prefect home (default pgl-work; MLFLOW_TRACKING_URI / PREFECT_API_URL take "
                   "precedence). Run `pgl serve` from the same folder to share them.")


def run_training_stage(command: str, call: Callable[[], dict]) -> dict | int:
    """Run a training stage's flow for the CLI: its result, or the exit status of a failure (2 for a
    configuration error the training reported, 75 when preempted after a checkpoint, 1 otherwise)
    with the reason on stderr."""
    from flows import launch
    from flows.launch import LaunchError, Preempted

    launch.ECHO_TO_CONSOLE = True
    try:
        return call()
    except Preempted as err:
        print(f"pgl {command}: {err}", file=sys.stderr)
        return EXIT_PREEMPTED
    except LaunchError as err:
        if err.returncode == EXIT_USAGE:
            reason = next((line for line in reversed(err.tail) if line.strip()), str(err))
            print(f"pgl {command}: error: {reason}", file=sys.stderr)
            return EXIT_USAGE
        print(f"pgl {command}: {err}", file=sys.stderr)
        return EXIT_PARTIAL


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default unless its help already speaks of one (or there is none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if flag or "default" in text.lower() or action.default in (None, [], argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pgl-ct")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgl", description="PGL self-supervised pretraining pipeline for 3D CT segmentation.")
    parser.add_argument("--version", action="version", version=f"pgl {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in PARSER_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
            continue
        module.add_parsers(sub)
    for command in sub.choices.values():
        command.formatter_class = HelpFormatter
    return parser


# commands that run Prefect flows: they share this machine's local Prefect server (flows.local_server)
FLOW_COMMANDS = {"preprocess", "pretrain", "finetune", "evaluate", "pipeline", "demo", "study"}


def use_local_server() -> None:
    """Point Prefect at this machine's shared local server (started on first use) unless an API is
    configured or ``PGL_LOCAL_SERVER=0``; on failure, warn and keep Prefect's ephemeral API."""
    from flows import local_server

    if not local_server.enabled():
        return
    home = local_server.prefect_home()
    try:
        api, started = local_server.ensure(home)
    except (OSError, TimeoutError) as err:
        print(f"pgl: warning: {err}; running with Prefect's per-command API", file=sys.stderr)
        return
    os.environ["PREFECT_API_URL"] = os.environ[runtime.LOCAL_SERVER_ENV] = api
    local_server.keep_alive(home)
    if started:
        print(f"pgl: started a local Prefect server for this machine's runs: UI {api.removesuffix('/api')} "
              f"(database under {home}; stops after {local_server.idle_minutes():g} min "
              "unused; PGL_LOCAL_SERVER=0 runs without it)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command != "serve":
        # commands print their own summary, the training's output and one line per error: Prefect's
        # console handler would repeat a failure as a page of engine traceback (runs still log to the
        # API; `pgl serve` keeps it). Set before prefect is imported: it configures logging then.
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")
    runtime.configure(getattr(args, "workdir", None))
    if args.command in FLOW_COMMANDS:
        use_local_server()
    if args.command == "predict":
        runtime.configure_cpu_inference()  # before torch is imported
    from pgl_core.config import ConfigError
    from storage.errors import InputError, describe, is_transient
    from storage.uri import redact_uri

    try:
        return args.handler(args)
    except (UsageError, ConfigError, InputError) as err:
        print(f"pgl {args.command}: error: {redact_uri(str(err))}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:
        if not is_transient(err):
            raise
        # storage (or a service) stopped answering outside any per-case work, after its retries
        print(f"pgl {args.command}: error: storage unreachable: {redact_uri(describe(err))}; nothing "
              "incomplete is recorded as done, rerun when it answers", file=sys.stderr)
        return EXIT_PARTIAL

