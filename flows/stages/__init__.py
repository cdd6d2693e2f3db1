"""The pipeline's stages, one module each: its typed API (``run_<stage>``), its flow, its key.

``STAGES`` is the one list of them, in pipeline order: ``pgl serve`` serves exactly these as
deployments named after their flows, and a test holds ``deploy/prefect.yaml`` to it. Shared parts:
``keys`` (stage keys and ``stage.json`` markers), ``results`` (what a pipeline run reports);
launching is :mod:`flows.launch`, tracking :mod:`flows.tracking`. Flows are named ``module:flow``
and imported only when needed, so the CLI starts without loading Prefect.
"""

from __future__ import annotations

import importlib
from typing import Any

from flows.runtime import move_url_credentials

# flows run by a Prefect worker start here, not in the CLI: take credentials out of tracking URLs
# before anything logs them
move_url_credentials()

STAGES: dict[str, str] = {
    "preprocess": "flows.stages.preprocess:preprocess_flow",
    "pretrain": "flows.stages.pretrain:pretrain_flow",
    "finetune": "flows.stages.finetune:finetune_flow",
    "evaluate": "flows.stages.evaluate:evaluate_flow",
    "pipeline": "flows.stages.pipeline:pipeline_flow",
}


def load_flow(name: str) -> Any:
    """The flow object of stage ``name`` (KeyError naming the known stages otherwise)."""
    if name not in STAGES:
        raise KeyError(f"unknown stage {name!r}; choose from {list(STAGES)}")
    module, attr = STAGES[name].split(":")
    return getattr(importlib.import_module(module), attr)
