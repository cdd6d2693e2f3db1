"""``pgl demo``: the ``pipeline`` flow end to end on synthetic phantoms with the embedded stack.

Phantoms -> preprocess every dataset -> pretrain on the pool and all images -> fine-tune each
labelled dataset -> evaluate -> register. Everything stays under the work folder: raw phantoms, the
Zarr store, training outputs, the MLflow database and artifacts, the Prefect home, results.json.
A rerun skips every unchanged stage.
"""

from __future__ import annotations

import time
from pathlib import Path

from flows.commands import make_phantoms

DEMO_KINDS = ["pool", "btcv", "lits", "kits", "spleen"]  # pool first
# The demo-sized study (docs/study.md): small phantoms, one plan for every dataset, the study config.
DEMO_SHAPE = (24, 48, 48)
DEMO_CASES = {"pool": 16, "labelled": 10}
DEMO_SPACING_MM = (8.0, 8.0, 10.0)
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "configs" / "study-small.yaml"
DEMO_INITS = ["pgl", "global", "random"]
DEMO_SEEDS = [0, 1, 2]


def _registered_models(workdir: Path) -> list[str]:
    from flows.registry import registered_models

    uri = f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}"
    return [f"models:/{name}@champion   ({', '.join(f'{a}=v{v}' for a, v in aliases.items())})"
            for name, aliases in registered_models(uri)]


def run_demo(workdir: Path, cases: int | None = None, inits: list[str] | None = None,
             seeds: list[int] | None = None, preset: str = "tiny") -> int:
    """Generate phantoms and run the pipeline flow on them; print where to look. Returns an exit code."""
    from flows.pipeline import PipelineFailed, pipeline_flow, summary_lines

    t0 = time.perf_counter()
    workdir = workdir.resolve()
    raw, store, output = workdir / "raw", workdir / "store", workdir / "runs"
    n_labelled = cases or DEMO_CASES["labelled"]
    print(f"[1/2] phantoms: pool x {DEMO_CASES['pool']} + 4 labelled datasets x {n_labelled} -> {raw}")
    make_phantoms(str(raw), ["pool"], DEMO_CASES["pool"], DEMO_SHAPE, seed=0, formats=("nifti",))
    make_phantoms(str(raw), DEMO_KINDS[1:], n_labelled, DEMO_SHAPE, seed=1, formats=("nifti",))
    inits, seeds = inits or DEMO_INITS, seeds or DEMO_SEEDS
    print(f"[2/2] pipeline flow: preprocess -> pretrain -> fine-tune + evaluate + register ({preset} preset)")
    code = 0
    try:
        spacing = ",".join(str(v) for v in DEMO_SPACING_MM)
        summary = pipeline_flow(str(raw), str(store), str(output), preset=preset, config=str(DEMO_CONFIG),
                                overrides=[f"preprocess.target_spacing_mm=[{spacing}]"], inits=inits,
                                seeds=seeds, workdir=str(workdir), parallel=2)
        lines = summary_lines(summary)
    except PipelineFailed as err:
        lines, code = [f"FAILED: {err}"], 1
    for line in lines:
        print("   ", line)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; everything is under {workdir}")
    print(f"  store:     {store}   (one Zarr group per dataset; manifest.json in each)")
    print(f"  runs:      {output}   (pretrain-pgl/, finetune/DATASET/INIT-seedN/, stage.json markers)")
    print(f"  results:   {workdir / 'results.json'}   (dataset -> init -> mean/std Dice over seeds)")
    print(f"  MLflow UI: mlflow ui --backend-store-uri sqlite:///{workdir / 'mlflow' / 'mlflow.db'}")
    for line in _registered_models(workdir):
        print(f"  model:     {line}")
    return code
