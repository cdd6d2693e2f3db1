"""Stage runs in MLflow and the metrics that reach them: each stage's run (a child of the
pipeline's run when there is one), and ``<output>/metrics.jsonl`` (written by the training's rank 0)
forwarded to it while training runs and once more at the end (rows that did not get through, the
server being away, are sent later by :mod:`flows.tracking.replay`).

Inside a Prefect flow run the two UIs point at each other: the MLflow run is tagged
``prefect.flow_run_id`` / ``prefect.flow_run_name`` (and ``prefect.flow_run_url`` when the Prefect UI's
address is known), and the flow run gets an artifact ``<stage>-mlflow-run`` that links to the MLflow
run (or names it and the ``mlflow ui`` command for a local store). While training runs, the flow
run's ``<stage>-progress`` artifact shows the step reached, losses and throughput; at the end
``<stage>-training`` holds a table of the losses over the run.
"""

from __future__ import annotations

import contextvars
import json
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from flows import artifacts
from storage import blobs
from storage.uri import join_uri, redact_uri

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


def metric_values(row: dict[str, Any]) -> dict[str, float]:
    """The metric values of a ``metrics.jsonl`` record (its numbers besides step and time)."""
    return {k: float(v) for k, v in row.items() if k not in ("kind", "step", "time") and isinstance(v, (int, float))}


def forward_metrics(sink: Any, output: str, storage_options: dict | None = None, since: int = 0) -> int:
    """Log every metrics record after the first ``since`` to ``sink`` (rows that share a step, such
    as a validation row beside the training row, each reach it); returns the records forwarded so
    far, the ``since`` of the next call."""
    return forward_rows(sink, read_metrics(output, storage_options), since)


def forward_rows(sink: Any, rows: list[dict[str, Any]], since: int = 0) -> int:
    """:func:`forward_metrics` of records already read."""
    for row in rows[since:]:
        with TRACKING_LOCK:
            sink.log_metrics(int(row["step"]), metric_values(row))
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
        link_runs(stage, sink)
    try:
        yield sink
    except BaseException:
        with TRACKING_LOCK:
            sink.close("FAILED")
        raise
    with TRACKING_LOCK:
        sink.close("FINISHED")


def link_runs(stage: str, sink: Any) -> None:
    """Point the stage's MLflow run and the current Prefect flow run at each other (no-op outside a
    flow run or offline)."""
    info = artifacts.flow_run_info()
    if not info or not getattr(sink, "run_id", None):
        return
    sink.set_tags(info)
    key = artifacts.artifact_key(stage, "mlflow-run")
    url = sink.ui_url()
    if url:
        artifacts.link(key, url, f"MLflow run {sink.run_id}", f"The {stage} stage's MLflow run (metrics, artifacts)")
    else:
        where = redact_uri(sink.tracking_uri or "")
        artifacts.markdown(key, f"MLflow run `{sink.run_id}` in `{where}`.\n\nOpen it with "
                                f"`mlflow ui --backend-store-uri {where}` (experiment `pgl`).",
                           f"The {stage} stage's MLflow run")


def _progress_text(row: dict[str, Any], total: int) -> str:
    shown = [f"{k} {float(v):.4f}" for k, v in row.items() if "loss" in k and isinstance(v, (int, float))]
    if isinstance(row.get("samples_per_s"), (int, float)):
        shown.append(f"{float(row['samples_per_s']):.1f} samples/s")
    return f"step {int(row['step'])}/{total}" + (": " + ", ".join(shown) if shown else "")


def training_table(rows: list[dict[str, Any]], shown: int = 12) -> list[dict[str, Any]]:
    """About ``shown`` metrics rows spread over the run (the last always), step + losses + Dice."""
    rows = [r for r in rows if any("loss" in k or "dice" in k for k in r)]
    if not rows:
        return []
    picks = sorted({round(i * (len(rows) - 1) / max(shown - 1, 1)) for i in range(shown)})
    cols = ["step"] + sorted({k for r in rows for k in r if "loss" in k or "dice" in k})
    return [{c: rows[i].get(c) for c in cols} for i in picks]


def _publish_training(stage: str, metrics_rows: list[dict[str, Any]], total: int | None) -> None:
    rows = training_table(metrics_rows)
    if rows:
        last = int(rows[-1]["step"])
        artifacts.markdown(artifacts.artifact_key(stage, "training"), artifacts.markdown_table(rows),
                           f"{stage}: losses over the run (step {last}{f'/{total}' if total else ''})")


@contextmanager
def follow_metrics(sink: Any, output: str, storage_options: dict | None = None,
                   every_s: float = 5.0, stage: str = "training", total_steps: int | None = None) -> Iterator[None]:
    """Forward ``<output>/metrics.jsonl`` to ``sink`` while the body runs, and once more at the end;
    inside a flow run, show the progress (``<stage>-progress``, of ``total_steps``) and the losses
    (``<stage>-training``) as artifacts. The run's id is recorded first in
    ``<output>/mlflow-run.json``, so ``pgl replay-metrics`` finds it (:mod:`flows.tracking.replay`)."""
    from flows.tracking.replay import record_run

    record_run(sink, output, stage, storage_options)
    stop = threading.Event()
    state = {"forwarded": 0}
    progress = artifacts.Progress(artifacts.artifact_key(stage, "progress"), total_steps or 1) if total_steps else None

    def poll() -> list[dict[str, Any]]:
        """One read of metrics.jsonl: its new rows to the sink, its last row to the progress."""
        rows = read_metrics(output, storage_options)
        state["forwarded"] = forward_rows(sink, rows, state["forwarded"])
        if progress is not None and rows:
            progress.update(int(rows[-1]["step"]), _progress_text(rows[-1], progress.total))
        return rows

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                poll()
            except Exception:  # noqa: BLE001 - following is best effort; the final pass counts
                pass

    # the flow run's context travels with the thread, so its artifacts belong to that run
    thread = threading.Thread(target=contextvars.copy_context().run, args=(loop,), name="pgl-metrics-follower",
                              daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s + 5)
        _publish_training(stage, poll(), total_steps)
