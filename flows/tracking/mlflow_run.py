"""The MLflow tracking adapter: one parent run per pipeline run, one nested child run per stage.

Only the tracking adapter (``flows/tracking/``) imports mlflow: this module (runs, params, metrics,
artifacts), ``inputs.py`` (datasets as run inputs), ``registry.py`` (registered models, aliases,
``resolve_model``) and ``pyfunc_model.py`` (the pyfunc wrapper). Everything else talks to MLflow through
them (``replay.py``, which sends ``metrics.jsonl`` again after an outage, through this module);
``pgl_core`` only sees the :class:`pgl_core.sinks.MetricsSink` protocol that
:class:`MlflowSink` implements.

Where runs go (configuration, never a code fork):
- ``MLFLOW_TRACKING_URI`` set: that server; S3 artifact variables (``MLFLOW_S3_ENDPOINT_URL``,
  ``AWS_*``) pass through the environment.
- otherwise the embedded default: ``sqlite:///<workdir>/mlflow/mlflow.db`` with artifacts in
  ``<workdir>/mlflow/artifacts``.

Tracking is never required for a run to succeed. The server is probed once at start (a single
short HTTP request, no retries); when it is unreachable, or any later tracking call fails, the
run goes on, warns once (:class:`TrackingUnavailableWarning`) and its metrics still land in the
local JSONL file of each stage's output folder (``pgl replay-metrics`` sends them later).
"""

from __future__ import annotations

import csv
import functools
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from flows.runtime import TELEMETRY_OFF, move_url_credentials
from pgl_core.sinks import JsonlSink

for _key, _value in TELEMETRY_OFF.items():
    os.environ.setdefault(_key, _value)
# A tracking call that fails mid-run must not stall training for minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")

import mlflow  # noqa: E402
from mlflow.entities import Metric, Param, RunTag  # noqa: E402
from mlflow.exceptions import MlflowException  # noqa: E402
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME  # noqa: E402

DEFAULT_EXPERIMENT = "pgl"
STAGE_TAG = "pgl.stage"
PROBE_TIMEOUT_S = 3.0
_PARAM_MAX_CHARS = 6000
_BATCH = 100


class TrackingUnavailableWarning(RuntimeWarning):
    """MLflow could not be reached; the run continues with local JSONL metrics only."""


def tracking_uri(workdir: str | Path | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set (its credentials moved to their own variables), else the
    embedded sqlite DB under ``workdir/mlflow``."""
    move_url_credentials()
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env
    if workdir is None:
        return mlflow.get_tracking_uri()
    folder = Path(workdir).resolve() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def client_for(uri: str) -> Any:
    """An MLflow client of the tracking store (and model registry) at ``uri``."""
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def artifact_location(workdir: str | Path | None, uri: str) -> str | None:
    """Local artifact folder for the embedded default; None (the server decides) otherwise."""
    if workdir is None or not uri.startswith("sqlite:"):
        return None
    folder = Path(workdir).resolve() / "mlflow" / "artifacts"
    folder.mkdir(parents=True, exist_ok=True)
    return folder.as_uri()


def probe(uri: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """One reachability check of a tracking server: None when fine, else the reason.

    Only http(s) URIs are probed (``GET <uri>/health``, one try); other stores are local.
    """
    if not uri.startswith(("http://", "https://")):
        return None
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout_s) as resp:
            return None if resp.status == 200 else f"HTTP {resp.status} from {uri}/health"
    except Exception as err:  # noqa: BLE001 - any failure means "not reachable"
        return f"{type(err).__name__}: {err}"


@functools.lru_cache(maxsize=1)
def _system_tags() -> tuple[tuple[str, str], ...]:
    tags = {"pgl.python": platform.python_version(), "pgl.platform": platform.platform()}
    for dist, key in (("torch", "pgl.torch"), ("mlflow", "pgl.mlflow"), ("pgl-ct", "pgl.version")):
        try:
            tags[key] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    commit = git_commit()
    if commit:
        tags["pgl.git_commit"] = commit
        tags["mlflow.source.git.commit"] = commit
    return tuple(tags.items())


def system_tags() -> dict[str, str]:
    """Version and platform info for a run (no host names, no user data); computed once."""
    return dict(_system_tags())


def git_commit() -> str | None:
    """The source tree's HEAD commit, or None outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                             capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


@dataclass
class _Link:
    """Connection state shared by a parent run and its children: one warning per pipeline run."""

    client: Any
    online: bool
    warned: bool = False

    def fail(self, what: str, reason: str) -> None:
        self.online = False
        if not self.warned:
            self.warned = True
            warnings.warn(f"MLflow tracking unavailable ({what}: {reason}); continuing with local "
                          "JSONL metrics only", TrackingUnavailableWarning, stacklevel=3)


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:_PARAM_MAX_CHARS]


def _local_join(base: str, name: str) -> str:
    return base.rstrip("/") + "/" + name


class MlflowSink:
    """One MLflow run (a pipeline's parent run or a stage's child run); a ``MetricsSink``.

    Every metric is also appended to ``<output_dir>/metrics.jsonl`` when ``output_dir`` is given
    (a local path or URI), online or not. Artifacts logged while offline are copied to
    ``<output_dir>/tracking-artifacts/`` when the output folder is local.
    """

    def __init__(self, link: _Link, run_id: str | None, output_dir: str | None = None,
                 storage_options: dict | None = None, tracking_uri: str | None = None) -> None:
        self._link = link
        self.run_id = run_id
        self.tracking_uri = tracking_uri
        self.output_dir = output_dir
        self.history: list[dict[str, float]] = []
        self._params: dict[str, str] = {}
        self._closed = False
        self._jsonl = JsonlSink(_local_join(output_dir, "metrics.jsonl"), storage_options) if output_dir else None

    @property
    def online(self) -> bool:
        """True while this run is being recorded in MLflow."""
        return self._link.online and self.run_id is not None

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> bool:
        if not self.online:
            return False
        try:
            fn(*args, **kwargs)
            return True
        except Exception as err:  # noqa: BLE001 - tracking must never fail the run
            self._link.fail(what, f"{type(err).__name__}: {str(err)[:300]}")
            return False

    # -- the MetricsSink protocol ------------------------------------------------------------
    def log_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Record ``metrics`` at ``step`` (MLflow, the JSONL file and the in-memory history)."""
        values = {k: float(v) for k, v in metrics.items()}
        self.history.append({"step": float(step), **values})
        if self._jsonl is not None:
            self._jsonl.log_metrics(step, values)
        now = int(time.time() * 1000)
        batch = [Metric(k, v, now, int(step)) for k, v in values.items()]
        for i in range(0, len(batch), 1000):
            self._call("log_metrics", self._link.client.log_batch, self.run_id, metrics=batch[i:i + 1000])

    def log_params(self, params: dict[str, Any]) -> None:
        """Record params (values JSON-encoded, truncated to MLflow's limit). A key logged again
        with a different value is kept as a ``param_changed.<key>`` tag (params are immutable)."""
        if self._jsonl is not None:
            self._jsonl.log_params(params)
        fresh, changed = [], {}
        for key, value in params.items():
            text = _param_value(value)
            if key not in self._params:
                fresh.append(Param(key, text))
            elif self._params[key] != text:
                changed[f"param_changed.{key}"] = text
            self._params[key] = text
        for i in range(0, len(fresh), _BATCH):
            self._call("log_params", self._link.client.log_batch, self.run_id, params=fresh[i:i + _BATCH])
        if changed:
            self.set_tags(changed)

    def close(self, status: str = "FINISHED") -> None:
        """Log the loss curves, end the run with ``status``; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.history:
            with tempfile.TemporaryDirectory() as tmp:
                png = plot_history(self.history, Path(tmp) / "loss_curves.png")
                if png is not None:
                    self.log_artifacts([png], "plots")
        self._call("end run", self._link.client.set_terminated, self.run_id, status)
        if self._jsonl is not None:
            self._jsonl.close()

    # -- tags and artifacts ------------------------------------------------------------------
    def set_tags(self, tags: dict[str, Any]) -> None:
        """Set run tags (values stringified)."""
        items = [RunTag(k, str(v)[:_PARAM_MAX_CHARS]) for k, v in tags.items()]
        for i in range(0, len(items), _BATCH):
            self._call("set_tags", self._link.client.log_batch, self.run_id, tags=items[i:i + _BATCH])

    def log_artifacts(self, paths: Iterable[str | Path], artifact_path: str | None = None) -> None:
        """Log local files or folders (overlay PNGs, tables, reports) under ``artifact_path``."""
        for path in map(Path, paths):
            if not path.exists():
                raise FileNotFoundError(f"artifact {path} does not exist")
            fn = self._link.client.log_artifacts if path.is_dir() else self._link.client.log_artifact
            if not self._call(f"log artifact {path.name}", fn, self.run_id, str(path), artifact_path):
                self._keep_offline(path, artifact_path)

    def _keep_offline(self, path: Path, artifact_path: str | None) -> None:
        if not self.output_dir or "://" in self.output_dir:
            return
        dest = Path(self.output_dir) / "tracking-artifacts" / (artifact_path or "")
        dest.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, dest / path.name, dirs_exist_ok=True)
        else:
            shutil.copy2(path, dest / path.name)

    def log_dict(self, data: Any, name: str, artifact_path: str | None = None) -> None:
        """Log ``data`` as a JSON or YAML (by ``name``'s suffix) artifact file."""
        with tempfile.TemporaryDirectory() as tmp:
            target = Path(tmp) / name
            if name.endswith((".yaml", ".yml")):
                import yaml

                target.write_text(yaml.safe_dump(data, sort_keys=False))
            else:
                target.write_text(json.dumps(data, indent=1, sort_keys=True, default=str))
            self.log_artifacts([target], artifact_path)

    def log_table(self, rows: list[dict[str, Any]], name: str, artifact_path: str | None = "eval") -> None:
        """Log an evaluation table (one dict per row) as ``<name>.csv`` and ``<name>.json``."""
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with tempfile.TemporaryDirectory() as tmp:
            csv_path, json_path = Path(tmp) / f"{name}.csv", Path(tmp) / f"{name}.json"
            with csv_path.open("w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows)
            json_path.write_text(json.dumps(rows, indent=1, default=str))
            self.log_artifacts([csv_path, json_path], artifact_path)

    def log_config(self, config: dict[str, Any]) -> None:
        """Log a nested config dict: flattened params plus ``config.yaml`` / ``config.json``."""
        from pgl_core.config import flatten

        self.log_params(flatten(config))
        self.log_dict(config, "config.yaml", "config")
        self.log_dict(config, "config.json", "config")

    def log_manifests(self, manifests: dict[str, dict[str, Any]], store: str | None = None,
                      context: str | None = None) -> dict[str, str]:
        """Log dataset manifests (JSON artifacts) and their hashes (params and tags); with ``store``
        and ``context`` ("training", "evaluation") also each dataset as a run input."""
        from storage.manifest import manifest_hash

        hashes = {name: manifest_hash(m) for name, m in manifests.items()}
        self.log_params({f"dataset.{n}.manifest_hash": h for n, h in hashes.items()})
        self.set_tags({f"pgl.dataset.{n}.manifest_hash": h for n, h in hashes.items()})
        for name, manifest in manifests.items():
            self.log_dict(manifest, f"{name}.json", "manifests")
        if store is not None and context is not None:
            self.log_inputs(store, manifests, context)
        return hashes

    def ui_url(self) -> str | None:
        """This run's page in the MLflow UI of an http(s) tracking server; None for a local store
        (open it with ``mlflow ui --backend-store-uri <tracking_uri>``) or when offline."""
        uri = self.tracking_uri or ""
        if not self.online or not uri.startswith(("http://", "https://")):
            return None
        try:
            experiment_id = self._link.client.get_run(self.run_id).info.experiment_id
        except Exception:  # noqa: BLE001 - a link is a convenience
            return None
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{self.run_id}"

    def log_inputs(self, store: str, manifests: dict[str, dict[str, Any]], context: str) -> None:
        """Each dataset of ``store`` in ``manifests`` as an MLflow run input (:mod:`flows.tracking.inputs`)."""
        if not self.online:
            return
        from flows.tracking.inputs import dataset_input

        inputs = [dataset_input(store, name, manifest, context) for name, manifest in manifests.items()]
        self._call("log_inputs", self._link.client.log_inputs, self.run_id, datasets=inputs)

    # -- nesting -------------------------------------------------------------------------
    def stage(self, stage: str, output_dir: str | None = None, storage_options: dict | None = None,
              tags: dict[str, Any] | None = None) -> "MlflowSink":
        """A child run nested under this one, tagged ``pgl.stage=<stage>``."""
        run_id = None
        if self.online:
            run_tags = {MLFLOW_PARENT_RUN_ID: self.run_id, MLFLOW_RUN_NAME: stage, STAGE_TAG: stage,
                        **system_tags(), **{k: str(v) for k, v in (tags or {}).items()}}
            try:
                experiment_id = self._link.client.get_run(self.run_id).info.experiment_id
                run_id = self._link.client.create_run(experiment_id, tags=run_tags, run_name=stage).info.run_id
            except Exception as err:  # noqa: BLE001
                self._link.fail(f"start stage {stage}", f"{type(err).__name__}: {str(err)[:300]}")
        return MlflowSink(self._link, run_id, output_dir, storage_options, self.tracking_uri)

    def __enter__(self) -> "MlflowSink":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close("FAILED" if exc_type is not None else "FINISHED")


def experiment_id(client: Any, name: str, location: str | None) -> str:
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently
        return client.get_experiment_by_name(name).experiment_id


def start_run(workdir: str | Path | None, run_name: str, *, experiment: str = DEFAULT_EXPERIMENT,
              output_dir: str | None = None, config: dict[str, Any] | None = None,
              manifests: dict[str, dict[str, Any]] | None = None,
              tags: dict[str, Any] | None = None) -> MlflowSink:
    """Start a pipeline's parent run; stages hang off it via :meth:`MlflowSink.stage`.

    Probes the tracking server once; when it is unreachable the returned sink is offline
    (warned once) and still writes ``<output_dir>/metrics.jsonl``.
    """
    uri = tracking_uri(workdir)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    link = _Link(client=client, online=False)
    reason = probe(uri)
    run_id = None
    if reason is not None:
        link.fail(f"probe {uri}", reason)
    else:
        try:
            exp = experiment_id(client, experiment, artifact_location(workdir, uri))
            run_tags = {MLFLOW_RUN_NAME: run_name, STAGE_TAG: "pipeline", **system_tags(),
                        **{k: str(v) for k, v in (tags or {}).items()}}
            run_id = client.create_run(exp, tags=run_tags, run_name=run_name).info.run_id
            link.online = True
        except Exception as err:  # noqa: BLE001
            link.fail(f"start run on {uri}", f"{type(err).__name__}: {str(err)[:300]}")
    sink = MlflowSink(link, run_id, output_dir, tracking_uri=uri)
    if config is not None:
        sink.log_config(config)
    if manifests:
        sink.log_manifests(manifests)
    return sink


def plot_history(history: list[dict[str, float]], target: str | Path) -> Path | None:
    """Loss curves (every metric whose name contains ``loss``) vs step, as a PNG; None if none."""
    keys = sorted({k for row in history for k in row if "loss" in k})
    if not keys:
        return None
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    fig = Figure(figsize=(6, 4), dpi=100)
    ax = fig.add_subplot()
    for key in keys:
        rows = [r for r in history if key in r]
        ax.plot([r["step"] for r in rows], [r[key] for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(str(target))
    return Path(target)
