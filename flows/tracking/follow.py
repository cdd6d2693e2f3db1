"""Stage runs in MLflow and the metrics that reach them: each stage's run (a child of the
pipeline's run when there is one), and ``<output>/metrics.jsonl`` (written by the training's rank 0)
forwarded to it while training runs and once more at the end.
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from storage import blobs
from storage.uri import join_uri

# One lock around MLflow calls of stages running in parallel threads (the embedded sqlite store
# does not like concurrent writers); training itself runs outside it.
TRACKING_LOCK = threading.RLock()


def read_metrics(output: str, storage_options: dict | None = None) -> list[dict[str, Any]]:
    """The ``metrics`` records of ``<output>/metrics.jsonl`` (rank 0 wrote it), oldest first."""
    uri = join_uri(output, "metrics.jsonl")
    if not blobs.exists(uri, storage_options):
        return []
    rows = []
    for line in blobs.get_bytes(uri, storage_options).decode().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        if row.get("kind") == "metrics":
            rows.append(row)
    return rows


def forward_metrics(sink: Any, output: str, storage_options: dict | None = None, since: int = 0) -> int:
    """Log every metrics record after the first ``since`` to ``sink`` (rows that share a step, such
    as a validation row beside the training row, each reach it); returns the records forwarded so
    far, the ``since`` of the next call."""
    rows = read_metrics(output, storage_options)
    for row in rows[since:]:
        values = {k: float(v) for k, v in row.items() if k not in ("kind", "step", "time")
                  and isinstance(v, (int, float))}
        with TRACKING_LOCK:
            sink.log_metrics(int(row["step"]), values)
    return max(since, len(rows))


_PARENTS: dict[str, Any] = {}


def register_parent(sink: Any) -> None:
    """Make a pipeline's parent run findable by stage flows running in this process."""
    if sink.run_id:
        _PARENTS[sink.run_id] = sink


@contextmanager
def stage_run(stage: str, workdir: str | None, parent_run_id: str | None, output: str | None = None,
              tags: dict[str, Any] | None = None) -> Iterator[Any]:
    """The MLflow run of one stage: a child of the pipeline's run when ``parent_run_id`` is known
    in this process, else a run of its own. Ends FAILED when the body raises."""
    from flows.tracking.mlflow_run import start_run

    tags = {k: str(v) for k, v in (tags or {}).items()}
    with TRACKING_LOCK:
        parent = _PARENTS.get(parent_run_id or "")
        if parent is not None:
            sink = parent.stage(stage, None, tags=tags)
        else:
            extra = {"pgl.parent_run_id": parent_run_id} if parent_run_id else {}
            sink = start_run(workdir, stage, tags={"pgl.stage": stage, "pgl.output": output or "", **extra, **tags})
    try:
        yield sink
    except BaseException:
        with TRACKING_LOCK:
            sink.close("FAILED")
        raise
    with TRACKING_LOCK:
        sink.close("FINISHED")


@contextmanager
def follow_metrics(sink: Any, output: str, storage_options: dict | None = None,
                   every_s: float = 5.0) -> Iterator[None]:
    """Forward ``<output>/metrics.jsonl`` to ``sink`` while the body runs, and once more at the end."""
    stop = threading.Event()
    state = {"forwarded": 0}

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                state["forwarded"] = forward_metrics(sink, output, storage_options, state["forwarded"])
            except Exception:  # noqa: BLE001 - following is best effort; the final pass counts
                pass

    thread = threading.Thread(target=loop, name="pgl-metrics-follower", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s + 5)
        forward_metrics(sink, output, storage_options, state["forwarded"])
