"""What every training stage flow shares: config resolution, stage keys and ``stage.json`` markers,
launching ``torch.distributed`` modules, and forwarding their ``metrics.jsonl`` to MLflow.

Stages hand each other URIs only (store + dataset names, pretraining output folders, model
directories or ``models:/`` references). A stage that finished writes ``<output>/stage.json``
holding its *key*: a hash of the config sections it depends on, the manifest hashes of its input
datasets and the hash of its init contract. A rerun whose key matches a marker (and whose outputs
still exist) is skipped and says so. The marker lives next to the outputs (local or ``s3://``),
so the decision is the same in any process, on any machine, with or without a Prefect server.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.launch import PREEMPTED_EXIT, LaunchError, NodeSpec, run_torchrun
from pgl_core.config import PGLConfig, config_to_dict, load_config
from storage import blobs
from storage.errors import TransientIOError
from storage.store import DatasetStore

MARKER_FILE = "stage.json"
# One lock around MLflow calls of stages running in parallel threads (the embedded sqlite store
# does not like concurrent writers); training itself runs outside it.
TRACKING_LOCK = threading.RLock()


class Preempted(RuntimeError):
    """Training exited with the preemption status after a checkpoint; a retry resumes it."""


def join(uri: str, *parts: str) -> str:
    """``uri/part/...`` for local paths and URIs alike."""
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


def resolve_config(preset: str = "paper", config: str | None = None,
                   overrides: list[str] | None = None) -> PGLConfig:
    """The typed config from a preset, an optional YAML file and ``section.key=value`` overrides."""
    return load_config(config, list(overrides or []), preset=preset)


def config_sections(cfg: PGLConfig, sections: tuple[str, ...]) -> dict[str, Any]:
    """The named config sections as a plain dict (what a stage key depends on)."""
    full = config_to_dict(cfg)
    return {name: full[name] for name in sections}


def stage_key(stage: str, config_sections: dict[str, Any], manifest_hashes: dict[str, str],
              init_hash: str | None = None, extra: dict[str, Any] | None = None) -> str:
    """sha256 over the stage name, its config sections, input manifest hashes and init contract."""
    payload = {"stage": stage, "config": config_sections, "manifests": dict(sorted(manifest_hashes.items())),
               "init": init_hash, "extra": extra or {}}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


def manifest_hashes(store: str, datasets: list[str], storage_options: dict | None = None) -> dict[str, str]:
    """``{dataset: manifest hash}`` of datasets in the store (an error names a missing one)."""
    return {d: DatasetStore(store, d, storage_options=storage_options).manifest_hash() for d in datasets}


def contract_hash(model_dir: str, storage_options: dict | None = None) -> str:
    """sha256 of a model / pretraining folder's ``contract.json`` bytes."""
    return hashlib.sha256(blobs.get_bytes(join(model_dir, "contract.json"), storage_options)).hexdigest()


def read_marker(output: str, storage_options: dict | None = None) -> dict[str, Any] | None:
    """The ``stage.json`` marker of a stage output folder, or None."""
    uri = join(output, MARKER_FILE)
    if not blobs.exists(uri, storage_options):
        return None
    try:
        return json.loads(blobs.get_bytes(uri, storage_options))
    except (ValueError, OSError):
        return None


def write_marker(output: str, key: str, result: dict[str, Any], storage_options: dict | None = None) -> None:
    """Record that the stage with ``key`` finished with ``result`` (atomic)."""
    body = {"key": key, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "result": result}
    blobs.put_bytes_atomic(join(output, MARKER_FILE), json.dumps(body, indent=1, default=str).encode(),
                           storage_options)


def unchanged(output: str, key: str, required: list[str], storage_options: dict | None = None
              ) -> dict[str, Any] | None:
    """The marker's result when ``output`` holds a marker with ``key`` and every ``required`` file."""
    marker = read_marker(output, storage_options)
    if not marker or marker.get("key") != key:
        return None
    if not all(blobs.exists(join(output, r), storage_options) for r in required):
        return None
    return dict(marker.get("result") or {})


def write_config_file(cfg: PGLConfig, folder: str) -> str:
    """The full resolved config as YAML in a local ``folder`` (the training module reads it)."""
    import yaml

    path = Path(folder) / "config.yaml"
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return str(path)


def train_argv(flags: dict[str, str | None], config_file: str) -> list[str]:
    """The training module's command line: ``--flag value`` pairs plus the full config file."""
    argv = []
    for flag, value in flags.items():
        if value is not None:
            argv += [f"--{flag}", str(value)]
    return argv + ["--preset", "paper", "--config", config_file]


def _retry_launch(task_, task_run, state) -> bool:
    try:
        state.result()
    except (Preempted, TransientIOError, ConnectionError, TimeoutError):
        return True
    except Exception:  # noqa: BLE001 - a training failure is not transient
        return False
    return False


@dataclass(frozen=True)
class LaunchSpec:
    """How to run a training module: processes per node, nodes, and the Dask cluster for nnodes > 1."""

    nproc: int = 1
    nnodes: int = 1
    dask_address: str | None = None
    threads: int | None = None


def launch(module: str, flags: dict[str, str | None], cfg: PGLConfig, spec: LaunchSpec) -> list[dict]:
    """Run ``module`` under torchrun on this node or on ``spec.nnodes`` Dask workers.

    Returns one ``{"node_rank", "returncode", "host"}`` per node. Raises :class:`LaunchError`
    (with the failing rank's last lines) or :class:`Preempted` (exit 75, checkpoint written).
    """
    if spec.nnodes > 1:
        from flows.multinode import launch_on_dask

        results = launch_on_dask(module, flags, config_to_dict(cfg), spec.nnodes, spec.nproc, spec.dask_address)
    else:
        env = {"OMP_NUM_THREADS": str(spec.threads)} if spec.threads else None
        logger = get_run_logger()
        with tempfile.TemporaryDirectory(prefix="pgl-launch-") as tmp:
            argv = train_argv(flags, write_config_file(cfg, tmp))
            code = run_torchrun(module, argv, nproc=spec.nproc, node=NodeSpec(), env=env,
                                echo=lambda line: logger.info(line))
        results = [{"node_rank": 0, "returncode": code, "host": os.uname().nodename}]
    if any(r["returncode"] == PREEMPTED_EXIT for r in results):
        raise Preempted(f"{module} was preempted (exit {PREEMPTED_EXIT}); a retry resumes from its checkpoint")
    return results


@task(name="train", retries=2, retry_delay_seconds=[5, 30], retry_condition_fn=_retry_launch,
      cache_policy=NO_CACHE, task_run_name="{module}")
def launch_task(module: str, flags: dict[str, str | None], cfg: PGLConfig, spec: LaunchSpec) -> list[dict]:
    """Prefect task around :func:`launch`: preemption and transient I/O are retried (resuming)."""
    return launch(module, flags, cfg, spec)


def read_metrics(output: str, storage_options: dict | None = None) -> list[dict[str, Any]]:
    """The ``metrics`` records of ``<output>/metrics.jsonl`` (rank 0 wrote it), oldest first."""
    uri = join(output, "metrics.jsonl")
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


def forward_metrics(sink: Any, output: str, storage_options: dict | None = None, since_step: int = -1) -> int:
    """Log metrics records newer than ``since_step`` to ``sink``; returns the last step logged."""
    last = since_step
    for row in read_metrics(output, storage_options):
        step = int(row["step"])
        if step <= last:
            continue
        values = {k: float(v) for k, v in row.items() if k not in ("kind", "step", "time")
                  and isinstance(v, (int, float))}
        with TRACKING_LOCK:
            sink.log_metrics(step, values)
        last = step
    return last


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
    from flows.tracking import start_run

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
    state = {"last": -1}

    def loop() -> None:
        while not stop.wait(every_s):
            try:
                state["last"] = forward_metrics(sink, output, storage_options, state["last"])
            except Exception:  # noqa: BLE001 - following is best effort; the final pass counts
                pass

    thread = threading.Thread(target=loop, name="pgl-metrics-follower", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=every_s + 5)
        forward_metrics(sink, output, storage_options, state["last"])


def local_files(folder: str, suffixes: tuple[str, ...]) -> list[str]:
    """Files under a local ``folder`` with one of ``suffixes`` (none for remote folders)."""
    if "://" in folder and not folder.startswith("file://"):
        return []
    root = Path(folder.removeprefix("file://"))
    return sorted(str(p) for p in root.rglob("*") if p.is_file() and p.suffix in suffixes) if root.is_dir() else []


def launch_error_text(err: BaseException) -> str:
    """A one-paragraph reason for a failed launch (the LaunchError tail is already in the message)."""
    if isinstance(err, LaunchError):
        return str(err)
    return f"{type(err).__name__}: {err}"
