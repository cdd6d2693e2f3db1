"""The study protocol behind ``pgl demo`` and ``pgl study``: the ``pipeline`` flow end to end on
synthetic phantoms with the embedded stack.

Phantoms -> preprocess every dataset -> pretrain on the pool and all images -> fine-tune each
labelled dataset -> evaluate -> register. Everything stays under the work folder: raw phantoms, the
Zarr store, training outputs, the MLflow database and artifacts, the Prefect home, results.json.
A rerun skips every unchanged stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from phantoms import write_datasets

DEMO_KINDS = ["lits", "spleen"]  # labelled kinds of the demo (a pool is always made)
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "deploy" / "configs" / "study-small.yaml"


@dataclass
class StudySpec:
    """The PGL-versus-baselines protocol on phantoms (docs/study.md). Defaults: the demo's small form,
    with one plan (spacing) for every dataset and the study config on the tiny preset."""

    shape_zyx: tuple[int, int, int] = (24, 48, 48)
    pool_cases: int = 16
    labelled_cases: int = 10
    spacing_mm: tuple[float, float, float] = (8.0, 8.0, 10.0)
    preset: str = "tiny"
    config: str | None = str(DEMO_CONFIG)
    overrides: list[str] = field(default_factory=list)
    inits: list[str] = field(default_factory=lambda: ["pgl", "global", "random"])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    kinds: list[str] = field(default_factory=lambda: list(DEMO_KINDS))
    gate: bool = True
    gate_steps: int | None = 500  # the gate learns the recipe's ceiling: more steps than the grid
    labelled: float | None = None
    parallel: int | None = 2
    data_seed: int = 0


def _registered_models(workdir: Path) -> list[str]:
    from flows.tracking.registry import registered_models

    uri = f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}"
    return [f"models:/{name}@champion   ({', '.join(f'{a}=v{v}' for a, v in aliases.items())})"
            for name, aliases in registered_models(uri)]


def run_demo(workdir: Path, spec: StudySpec | None = None) -> int:
    """Generate phantoms and run the pipeline flow on them (the study grid); print where to look.

    Returns an exit code (0, or 1 when some item failed)."""
    from flows.stages.context import stage_context
    from flows.stages.pipeline import PipelineFailed, pipeline_flow
    from flows.stages.results import summary_lines

    t0 = time.perf_counter()
    workdir = workdir.resolve()
    raw, store, output = workdir / "raw", workdir / "store", workdir / "runs"
    spec = spec or StudySpec()
    print(f"[1/2] phantoms {spec.shape_zyx} (portal venous): pool x {spec.pool_cases} + {', '.join(spec.kinds)} "
          f"x {spec.labelled_cases} -> {raw}")
    write_datasets(str(raw), ["pool"], spec.pool_cases, seed=spec.data_seed, shape_zyx=spec.shape_zyx)
    write_datasets(str(raw), spec.kinds, spec.labelled_cases, seed=spec.data_seed + 1, shape_zyx=spec.shape_zyx)
    print(f"[2/2] pipeline flow: preprocess -> pretrain ({', '.join(m for m in spec.inits if m != 'random')}) "
          f"-> {'gate + ' if spec.gate else ''}fine-tune {'/'.join(spec.inits)} x seeds {spec.seeds} + evaluate + "
          f"register ({spec.preset} preset)")
    code = 0
    try:
        spacing = ",".join(str(v) for v in spec.spacing_mm)
        with stage_context(workdir=str(workdir)):
            summary = pipeline_flow(str(raw), str(store), str(output), preset=spec.preset, config=spec.config,
                                    overrides=[f"preprocess.target_spacing_mm=[{spacing}]", *spec.overrides],
                                    inits=spec.inits, seeds=spec.seeds, labelled=spec.labelled,
                                    parallel=spec.parallel, gate=spec.gate, gate_steps=spec.gate_steps)
        lines = summary_lines(summary)
    except PipelineFailed as err:
        lines, code = [f"FAILED: {err}"], 1
    for line in lines:
        print("   ", line)
    print(f"\nfinished in {time.perf_counter() - t0:.0f} s; everything is under {workdir}")
    print(f"  store:     {store}   (one Zarr group per dataset; manifest.json in each)")
    print(f"  runs:      {output}   (pretrain-pgl/, finetune/DATASET/INIT-seedN/, stage.json markers)")
    print(f"  results:   {workdir / 'results.json'}   (gate, datasets, paired 95% intervals, verdict)")
    print(f"  MLflow UI: mlflow ui --backend-store-uri sqlite:///{workdir / 'mlflow' / 'mlflow.db'}")
    for line in _registered_models(workdir):
        print(f"  model:     {line}")
    return code
