"""Handlers of ``pgl pipeline`` and ``pgl serve``."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from flows.cli import UsageError

EXIT_OK, EXIT_PARTIAL = 0, 1


def cmd_pipeline(args: argparse.Namespace) -> int:
    from flows.pipeline import INITS, PipelineFailed, pipeline_flow, summary_lines
    from pgl_core.config import load_config

    bad = [i for i in args.inits if i not in INITS]
    if bad:
        raise UsageError(f"unknown init(s) {bad}; choose from {list(INITS)}")
    load_config(args.config, args.overrides, preset=args.preset)  # a typo is a usage error, before any work
    workdir = str(Path(args.workdir).resolve()) if args.workdir else None
    try:
        summary = pipeline_flow(args.input, args.store, args.output, args.datasets, args.preset, args.config,
                                args.overrides, args.inits, args.seeds, args.labelled, args.nproc, args.nnodes,
                                args.dask_address, args.device, args.parallel, workdir, args.force,
                                args.gate, args.gate_steps)
    except PipelineFailed as err:
        print(f"pgl pipeline: {err}")
        return EXIT_PARTIAL
    for line in summary_lines(summary):
        print(line)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from flows import serve

    server = None
    if not os.environ.get("PREFECT_API_URL"):
        home = Path(args.workdir).resolve() / "prefect-server"
        server, api = serve.start_local_server(home, port=args.port)
        os.environ["PREFECT_API_URL"] = api
        print(f"Prefect server (local, database under {home}): UI http://127.0.0.1:{args.port}")
    # SIGTERM ends serving like Ctrl-C does, so a server started here is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        schedules = serve.load_schedules(args.schedules)
        unknown = [n for n in (args.only or []) if n not in serve.DEPLOYMENT_FLOWS]
        if unknown:
            raise UsageError(f"unknown deployment(s) {unknown}; choose from {sorted(serve.DEPLOYMENT_FLOWS)}")
        print("serving " + ", ".join(f"{n}/{n}" for n in (args.only or serve.DEPLOYMENT_FLOWS))
              + f" against {os.environ['PREFECT_API_URL']}", flush=True)
        serve.serve_all(None if not schedules else args.schedules, args.limit, args.only)
    except KeyboardInterrupt:
        pass
    except ValueError as err:
        raise UsageError(str(err)) from None
    finally:
        if server is not None:
            serve.stop_process(server)
    return EXIT_OK
