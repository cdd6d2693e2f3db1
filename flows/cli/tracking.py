"""``pgl replay-metrics``: a stage's ``metrics.jsonl`` sent to its MLflow run once the tracking
server answers again (:mod:`flows.tracking.replay`)."""

from __future__ import annotations

import argparse
import sys

from flows.cli import UsageError, uri_arg
from pgl_core.exits import EXIT_OK, EXIT_PARTIAL


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "replay-metrics", help="Send a stage's metrics.jsonl to its MLflow run (after the server was away).",
        description=cmd_replay_metrics.__doc__)
    p.add_argument("--output", required=True, type=uri_arg,
                   help="The stage's output folder or URI (holding metrics.jsonl).")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--run-id", help="Replay to this run (default: the stage's own run, recorded in "
                        "mlflow-run.json / stage.json).")
    target.add_argument("--new-run", action="store_true", help="Replay to a new run of experiment pgl.")
    p.add_argument("--workdir", default="pgl-work", help="Folder of the embedded MLflow store, used when "
                   "MLFLOW_TRACKING_URI is not set (default pgl-work).")
    p.set_defaults(handler=cmd_replay_metrics)


def cmd_replay_metrics(args: argparse.Namespace) -> int:
    """Log every row of OUTPUT/metrics.jsonl to the stage's MLflow run (or --run-id, or a new run)
    on the server MLFLOW_TRACKING_URI names. Values the run already has at a step (per metric key,
    from its metric history) are not logged again, so rerunning is safe. A run still RUNNING whose
    stage is done (stage.json) is marked FINISHED. Exit 1 when the server does not answer."""
    from flows.tracking.replay import ReplayError, replay_metrics

    try:
        result = replay_metrics(args.output, run_id=args.run_id, new_run=args.new_run, workdir=args.workdir)
    except ReplayError as err:
        if not err.unreachable:
            raise UsageError(str(err)) from None
        print(f"pgl replay-metrics: error: {err}", file=sys.stderr)
        return EXIT_PARTIAL
    print(result.line(args.output))
    return EXIT_OK
