"""``pgl pipeline`` and ``pgl serve``: the whole pipeline as one flow run, and the stages as deployments
(parsers and handlers)."""

from __future__ import annotations

import argparse
import os
import signal
from pathlib import Path

from flows.cli import UsageError, add_config_args, add_device_args, add_store_args, uri_arg
from pgl_core.exits import EXIT_OK, EXIT_PARTIAL


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in _csv(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pipeline", help="Preprocess -> pretrain -> fine-tune + evaluate every labelled dataset (one flow run).",
        description=cmd_pipeline.__doc__)
    p.add_argument("--input", required=True, type=uri_arg, help="Folder holding one raw dataset folder per dataset.")
    add_store_args(p)
    p.add_argument("--output", required=True, type=uri_arg,
                   help="Output root (pretrain-MODE/, finetune/, results.json).")
    p.add_argument("--datasets", type=_csv, help="Comma-separated dataset folder names (default: all).")
    p.add_argument("--preset", default="paper", choices=["paper", "tiny"], help="Config preset (default paper).")
    p.add_argument("--inits", type=_csv, default=["pgl"], help="Comma-separated inits: pgl, global, random.")
    p.add_argument("--seeds", type=_ints, default=[0], help="Comma-separated fine-tuning seeds (default 0).")
    p.add_argument("--labelled", type=float, help="Labelled training cases: count >= 1 or fraction < 1.")
    add_device_args(p, "Training processes per node (default 1).")
    p.add_argument("--nnodes", type=int, default=1, help="Nodes per training run (Dask workers; default 1).")
    p.add_argument("--dask-address", help="Dask scheduler (default: env PGL_DASK_ADDRESS, else local).")
    p.add_argument("--parallel", type=int, help="Fine-tunes at once (default: per GPU, else cores / 2).")
    p.add_argument("--workdir", help="Folder for the embedded MLflow store, Prefect home and results.json.")
    p.add_argument("--force", action="store_true", help="Redo every stage even when unchanged.")
    p.add_argument("--gate", action="store_true", help="Also run the supervised gate: each labelled dataset "
                   "from random init with all training labels (results.json: gate, gate_checks).")
    p.add_argument("--gate-steps", type=int, help="Fine-tune steps of the gate runs (default: finetune.steps).")
    add_config_args(p)
    p.set_defaults(handler=cmd_pipeline)

    p = sub.add_parser(
        "serve", help="Serve every stage and the pipeline as Prefect deployments (UI: run one stage).",
        description=cmd_serve.__doc__)
    p.add_argument("--schedules", metavar="FILE", help="YAML with cron/interval schedules and default "
                   "parameters per deployment (see docs/scale-out.md).")
    p.add_argument("--only", type=_csv, help="Comma-separated deployments to serve (default: all).")
    p.add_argument("--limit", type=int, help="Flow runs executing at once (default: no limit).")
    p.add_argument("--workdir", default="pgl-work", help="Folder for the local server's database and, for the runs "
                   "served, the embedded MLflow store and model cache (exported as PGL_WORKDIR).")
    p.add_argument("--port", type=int, default=4200, help="Port of the local server (default 4200).")
    p.set_defaults(handler=cmd_serve)


def cmd_pipeline(args: argparse.Namespace) -> int:
    """Run the pipeline flow: preprocess every dataset folder under --input, pretrain on all of
    them, fine-tune, evaluate and register each labelled dataset for every init and seed. Stages
    whose config and inputs are unchanged are skipped (and say so). Exit 1 when some item failed."""
    from flows.stages.pipeline import INITS, PipelineFailed, pipeline_flow
    from flows.stages.results import summary_lines
    from pgl_core.config import load_config

    bad = [i for i in args.inits if i not in INITS]
    if bad:
        raise UsageError(f"unknown init(s) {bad}; choose from {list(INITS)}")
    load_config(args.config, args.overrides, preset=args.preset)  # a typo is a usage error, before any work
    try:  # --workdir reaches the flow as PGL_WORKDIR (flows.runtime.configure)
        summary = pipeline_flow(args.input, args.store, args.output, args.datasets, args.preset, args.config,
                                args.overrides, args.inits, args.seeds, args.labelled, args.nproc, args.nnodes,
                                args.dask_address, args.device, args.parallel, args.force,
                                args.gate, args.gate_steps)
    except PipelineFailed as err:
        print(f"pgl pipeline: {err}")
        return EXIT_PARTIAL
    for line in summary_lines(summary):
        print(line)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve the deployments preprocess/preprocess, pretrain/pretrain, finetune/finetune,
    evaluate/evaluate and pipeline/pipeline against PREFECT_API_URL. Without it, a local Prefect
    server is started on 127.0.0.1 with its database under --workdir and stopped on exit."""
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
