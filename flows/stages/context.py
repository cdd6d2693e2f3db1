"""Where a stage flow's runs are recorded, kept out of the flows' parameters (and so out of the
deployment forms): the work folder (embedded MLflow store, model cache) and the MLflow run of
the pipeline a stage runs under.

- ``workdir``: set by the CLI (``--workdir``) around the flow it runs; for served runs, ``pgl serve
  --workdir`` exports ``PGL_WORKDIR``, which every run it starts inherits.
- ``parent_run_id``: set by the pipeline around its stage subflows. Prefect copies the context into
  the threads of the tasks it submits, so the fine-tunes running in parallel see it too.
"""

from __future__ import annotations

import contextvars
import os
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Iterator

from flows.runtime import WORKDIR_ENV


@dataclass(frozen=True)
class StageContext:
    """The work folder (None: MLflow's own default, or ``MLFLOW_TRACKING_URI``) and the pipeline's
    MLflow run (None: the stage's run is a run of its own)."""

    workdir: str | None = None
    parent_run_id: str | None = None


_CURRENT: contextvars.ContextVar[StageContext | None] = contextvars.ContextVar("pgl_stage_context", default=None)


def current() -> StageContext:
    """The context set around this call, else the work folder of ``PGL_WORKDIR`` and no parent."""
    ctx = _CURRENT.get()
    if ctx is not None:
        return ctx
    return StageContext(workdir=os.environ.get(WORKDIR_ENV) or None)


@contextmanager
def stage_context(**changes: str | None) -> Iterator[StageContext]:
    """Run the body with ``workdir`` and/or ``parent_run_id`` changed (the rest inherited)."""
    token = _CURRENT.set(replace(current(), **changes))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)
