"""``pgl demo`` and ``pgl study``: the PGL-versus-baselines protocol on phantoms (parsers and handlers;
the protocol itself is :mod:`flows.study`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from flows.cli import add_config_args, triple


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="Run the whole pipeline on synthetic phantoms, embedded (no services).",
                       description=cmd_demo.__doc__)
    p.add_argument("--workdir", default="demo-work", help="Folder for everything the demo makes.")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("study", help="The PGL-versus-baselines study on phantoms at any size.",
                       description=cmd_study.__doc__)
    p.add_argument("--workdir", default="study-work", help="Folder for everything the study makes.")
    p.add_argument("--shape", type=triple(int), default=(24, 48, 48), metavar="Z,Y,X", help="Phantom size.")
    p.add_argument("--cases", type=int, default=10, help="Cases per labelled dataset (default 10).")
    p.add_argument("--pool", type=int, default=16, help="Unlabelled pool cases (default 16).")
    p.add_argument("--spacing", type=triple(float), default=(8.0, 8.0, 10.0), metavar="X,Y,Z",
                   help="One target spacing in mm for every dataset (default 8,8,10).")
    p.add_argument("--inits", default="pgl,global,random", help="Initialisations (default pgl,global,random).")
    p.add_argument("--seeds", default="0,1,2,3,4", help="Fine-tuning seeds (default 0,1,2,3,4).")
    p.add_argument("--kinds", default="btcv,lits,kits,spleen",
                   help="Labelled phantom kinds (default btcv,lits,kits,spleen; a pool is always made).")
    p.add_argument("--no-gate", dest="gate", action="store_false", help="Skip the supervised gate.")
    p.add_argument("--gate-steps", type=int, default=500,
                   help="Fine-tune steps of the gate runs (random init, all labels; default 500).")
    p.add_argument("--labelled", type=float, help="Labelled training cases (count, or fraction < 1).")
    p.add_argument("--parallel", type=int, default=2, help="Fine-tunes at once (default 2).")
    p.add_argument("--preset", default="tiny", choices=["tiny", "paper"], help="Config preset (default tiny).")
    add_config_args(p)
    p.set_defaults(handler=cmd_study)


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def cmd_demo(args: argparse.Namespace) -> int:
    """Generate phantoms and run the pipeline flow on them with the embedded stack: preprocess,
    pretrain (PGL and BYOL), the supervised gate (random init, all labels), fine-tune PhantomLiTS
    and PhantomSpleen from PGL, BYOL and random init with 2 labelled cases over 2 seeds, evaluate,
    register; prints the gate, the Dice table and paired differences with 95% intervals
    (results.json). About 7 minutes (437 s measured) on 2 quiet CPU cores. Everything stays under
    --workdir."""
    from flows.study import run_demo

    return run_demo(Path(args.workdir))


def cmd_study(args: argparse.Namespace) -> int:
    """The demo's protocol (phantoms -> pipeline with the supervised gate and an init x seed grid ->
    results.json: gate, per-init Dice, paired differences with 95% intervals, verdict) with every
    size a flag; see docs/study.md for the decisive CPU command."""
    from flows.study import DEMO_CONFIG, StudySpec, run_demo
    from pgl_core.config import load_config

    config = args.config or str(DEMO_CONFIG)
    load_config(config, args.overrides, preset=args.preset)  # a typo is a usage error before any work
    spec = StudySpec(shape_zyx=args.shape, pool_cases=args.pool, labelled_cases=args.cases,
                     spacing_mm=args.spacing, preset=args.preset, config=config, overrides=args.overrides,
                     inits=_split(args.inits), seeds=[int(x) for x in _split(args.seeds)],
                     labelled=args.labelled, parallel=args.parallel, kinds=_split(args.kinds), gate=args.gate,
                     gate_steps=args.gate_steps)
    return run_demo(Path(args.workdir), spec)
