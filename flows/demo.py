"""``pgl demo``: the pipeline end to end on synthetic phantoms with the embedded stack.

Everything it makes stays under the work folder: raw phantoms, the Zarr store, the Prefect home.
"""

from __future__ import annotations

import time
from pathlib import Path

from flows.commands import make_phantoms
from flows.preprocess import preprocess
from pgl_core.config import load_config
from storage.phantoms import DATASET_NAMES

DEMO_KINDS = ["pool", "btcv", "lits", "kits", "spleen"]  # pool first: its median spacing is shared
DEMO_SHAPE = (48, 96, 96)


def run_demo(workdir: Path, cases: int = 3) -> int:
    """Generate phantoms, preprocess every dataset, print where everything is. Returns an exit code."""
    t0 = time.perf_counter()
    workdir = workdir.resolve()
    raw, store = workdir / "raw", workdir / "store"
    print(f"[1/2] phantoms: {len(DEMO_KINDS)} datasets x {cases} cases -> {raw}")
    make_phantoms(str(raw), DEMO_KINDS, cases, DEMO_SHAPE, seed=0, formats=("nifti",))
    cfg = load_config(preset="tiny")
    failed = 0
    print(f"[2/2] preprocess -> {store}")
    for kind in DEMO_KINDS:
        name = DATASET_NAMES[kind]
        summary = preprocess(str(raw / name), name, str(store), cfg.preprocess)
        # one spacing for every dataset: pretraining mixes them, fine-tuning checks the contract
        cfg.preprocess.target_spacing_mm = tuple(summary.plan["target_spacing_mm"])
        failed += len(summary.failed)
        for line in summary.lines():
            print("   ", line)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; everything is under {workdir}")
    print(f"  store:   {store}   (one Zarr group per dataset; manifest.json in each)")
    return 0 if failed == 0 else 1
