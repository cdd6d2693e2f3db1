"""Metrics that did not reach MLflow, sent again: ``<output>/metrics.jsonl`` replayed to a run.

A stage whose tracking server went away keeps training and keeps every metrics row in its
output's ``metrics.jsonl`` (:mod:`flows.tracking.mlflow_run`). Once a server answers again,
:func:`replay_metrics` logs those rows to the stage's own run (its id is recorded in
``<output>/mlflow-run.json`` when the stage starts, and in ``stage.json`` when it is done), to a
run given by id, or to a new run.

Idempotent: a row's value is logged only when the run's history of that key holds no value at that
step yet (MLflow's metric history, read once per key), so a replay after a replay, or after live
forwarding that did get through, logs nothing twice. Rows keep their original step and time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from flows.tracking.follow import metric_values, read_metrics
from storage import blobs
from storage.uri import join_uri, redact_uri

RUN_RECORD = "mlflow-run.json"
_BATCH = 1000


class ReplayError(ValueError):
    """Nothing to replay, or nowhere to replay it; ``unreachable`` when the server did not answer."""

    def __init__(self, message: str, unreachable: bool = False) -> None:
        super().__init__(message)
        self.unreachable = unreachable


@dataclass
class ReplayResult:
    """What a replay did: ``logged`` values sent, ``present`` values the run already had."""

    run_id: str
    tracking_uri: str
    rows: int
    logged: int
    present: int
    keys: list[str]
    finished: bool = False

    def line(self, output: str) -> str:
        done = "; run marked FINISHED (the stage is done)" if self.finished else ""
        return (f"replay-metrics {redact_uri(output)} -> run {self.run_id} on {redact_uri(self.tracking_uri)}: "
                f"{self.logged} value(s) logged, {self.present} already there ({self.rows} rows, "
                f"{len(self.keys)} keys){done}")


def record_run(sink: Any, output: str, stage: str, storage_options: dict | None = None) -> None:
    """Write ``<output>/mlflow-run.json`` naming the stage's run (nothing when it has none)."""
    if not getattr(sink, "run_id", None):
        return
    record = {"run_id": sink.run_id, "stage": stage, "tracking_uri": redact_uri(sink.tracking_uri or "")}
    blobs.put_bytes_atomic(join_uri(output, RUN_RECORD), json.dumps(record, indent=1).encode(), storage_options)


def _read_json(uri: str, storage_options: dict | None) -> dict[str, Any]:
    try:
        data = json.loads(blobs.get_bytes(uri, storage_options))
    except (FileNotFoundError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _marker_run_id(output: str, storage_options: dict | None) -> str | None:
    """The run id of the stage's ``stage.json`` marker (``{"key", "result": {"run_id", ...}}``)."""
    result = _read_json(join_uri(output, "stage.json"), storage_options).get("result")
    return result.get("run_id") if isinstance(result, dict) else None


def recorded_run(output: str, storage_options: dict | None = None) -> dict[str, Any] | None:
    """The run recorded for ``output``: ``mlflow-run.json``, else the run id of ``stage.json``."""
    record = _read_json(join_uri(output, RUN_RECORD), storage_options)
    if record.get("run_id"):
        return record
    run_id = _marker_run_id(output, storage_options)
    return {"run_id": run_id} if run_id else None


def _history_steps(client: Any, run_id: str, keys: list[str]) -> dict[str, set[int]]:
    return {key: {m.step for m in client.get_metric_history(run_id, key)} for key in keys}


def _target_run(client: Any, output: str, run_id: str | None, new_run: bool, experiment: str,
                storage_options: dict | None, artifacts: str | None = None) -> str:
    if run_id:
        return run_id
    if new_run:
        from flows.tracking.mlflow_run import experiment_id

        recorded = recorded_run(output, storage_options) or {}
        tags = {"pgl.replayed_from": redact_uri(output), "pgl.stage": str(recorded.get("stage", "replay"))}
        return client.create_run(experiment_id(client, experiment, artifacts), tags=tags,
                                 run_name=f"replay {tags['pgl.stage']}").info.run_id
    recorded = recorded_run(output, storage_options)
    if recorded is None:
        raise ReplayError(f"no MLflow run is recorded for {redact_uri(output)} (no {RUN_RECORD} or stage.json "
                          "with a run id): pass --run-id RUN or --new-run")
    return str(recorded["run_id"])


def _finish_if_done(client: Any, output: str, run_id: str, storage_options: dict | None) -> bool:
    """Mark the run FINISHED when it is still RUNNING but its stage is done (``stage.json`` names it):
    the server was away when the stage ended it."""
    if _marker_run_id(output, storage_options) != run_id or client.get_run(run_id).info.status != "RUNNING":
        return False
    client.set_terminated(run_id, "FINISHED")
    return True


def replay_metrics(output: str, run_id: str | None = None, new_run: bool = False, workdir: str | None = None,
                   storage_options: dict | None = None, experiment: str = "pgl") -> ReplayResult:
    """Log every metrics row of ``<output>/metrics.jsonl`` that the target run lacks (see module doc).

    The tracking server is ``MLFLOW_TRACKING_URI`` (else the embedded store under ``workdir``).
    Raises :class:`ReplayError` when there is nothing to replay, no run to replay to, or the server
    does not answer.
    """
    from flows.tracking.mlflow_run import Metric, MlflowException, artifact_location, client_for, probe, tracking_uri

    rows = read_metrics(output, storage_options)
    if not rows:
        raise ReplayError(f"no metrics rows in {redact_uri(join_uri(output, 'metrics.jsonl'))}")
    uri = tracking_uri(workdir)
    reason = probe(uri)
    if reason is not None:
        raise ReplayError(f"the MLflow tracking server {redact_uri(uri)} does not answer ({reason})", unreachable=True)
    client = client_for(uri)
    target = _target_run(client, output, run_id, new_run, experiment, storage_options,
                         artifact_location(workdir, uri))
    try:
        client.get_run(target)
    except MlflowException as err:
        raise ReplayError(f"run {target} is not on {redact_uri(uri)} ({err.error_code})") from None
    values = [(int(row["step"]), int(float(row.get("time", 0)) * 1000), metric_values(row)) for row in rows]
    keys = sorted({k for _, _, vals in values for k in vals})
    try:
        present = _history_steps(client, target, keys)
        batch = [Metric(k, v, ms, step) for step, ms, vals in values for k, v in vals.items()
                 if step not in present[k]]
        for i in range(0, len(batch), _BATCH):
            client.log_batch(target, metrics=batch[i:i + _BATCH])
        finished = _finish_if_done(client, output, target, storage_options)
    except MlflowException as err:  # the server went away again: what got through stays, rerun for the rest
        raise ReplayError(f"replaying to run {target} on {redact_uri(uri)} stopped ({str(err)[:300]}); rerun "
                          "to send the rest", unreachable=True) from None
    total = sum(len(vals) for _, _, vals in values)
    return ReplayResult(target, uri, len(rows), len(batch), total - len(batch), keys, finished)
