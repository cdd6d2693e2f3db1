"""Handlers behind ``pgl`` subcommands: parse-free, each takes the argparse namespace.

Thin: they build typed config, call a flow or a ``storage`` / ``pgl_core`` API, and print a summary.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tqdm import tqdm

from pgl_core.config import ConfigError, load_config
from storage.phantoms import KINDS, write_dataset

__all__ = ["cmd_phantoms", "cmd_preprocess", "cmd_demo", "cmd_study", "make_phantoms"]

EXIT_OK, EXIT_PARTIAL = 0, 1


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def make_phantoms(out: str, kinds: list[str], cases: int, shape: tuple[int, int, int], seed: int,
                  formats: tuple[str, ...], phase: str = "portal_venous") -> list[dict]:
    """Write one phantom dataset per kind under ``out``; returns the writers' summaries."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise ConfigError(f"unknown phantom kind(s) {unknown}; choose from {sorted(KINDS)}")
    bad = [f for f in formats if f not in ("nifti", "dicom")]
    if bad:
        raise ConfigError(f"unknown format(s) {bad}; choose nifti and/or dicom")
    summaries = []
    with tqdm(total=len(kinds) * cases, desc="phantoms", unit="case") as bar:
        for i, kind in enumerate(kinds):
            summaries.append(write_dataset(out, kind, cases, seed=seed + 1000 * i, shape_zyx=shape,
                                           formats=formats, phase=phase, progress=lambda n: bar.update(1)))
    return summaries


def cmd_phantoms(args: argparse.Namespace) -> int:
    summaries = make_phantoms(args.out, _split(args.kinds), args.cases, args.shape, args.seed,
                              tuple(_split(args.format)), args.phase)
    for s in summaries:
        print(f"wrote {s}")
    return EXIT_OK


def cmd_preprocess(args: argparse.Namespace) -> int:
    from flows.preprocess import preprocess

    cfg = load_config(args.config, args.overrides)
    if args.target_spacing:
        cfg.preprocess.target_spacing_mm = args.target_spacing
    summary = preprocess(args.input, args.dataset, args.store, cfg.preprocess, force=args.force,
                         dask_address=args.dask_address, n_workers=args.workers)
    for line in summary.lines():
        print(line)
    return EXIT_OK if summary.ok else EXIT_PARTIAL


def cmd_demo(args: argparse.Namespace) -> int:
    from flows.demo import run_demo

    return run_demo(Path(args.workdir))


def cmd_study(args: argparse.Namespace) -> int:
    from flows.demo import DEMO_CONFIG, StudySpec, run_demo

    config = args.config or str(DEMO_CONFIG)
    load_config(config, args.overrides, preset=args.preset)  # a typo is a usage error before any work
    spec = StudySpec(shape_zyx=args.shape, pool_cases=args.pool, labelled_cases=args.cases,
                     spacing_mm=args.spacing, preset=args.preset, config=config, overrides=args.overrides,
                     inits=_split(args.inits), seeds=[int(x) for x in _split(args.seeds)],
                     labelled=args.labelled, parallel=args.parallel, kinds=_split(args.kinds), gate=args.gate,
                     gate_steps=args.gate_steps)
    return run_demo(Path(args.workdir), spec)
