"""Stage keys and ``stage.json`` markers: how a stage decides that it has nothing to do.

Stages hand each other URIs only (store + dataset names, pretraining output folders, model
directories or ``models:/`` references). A stage that finished writes ``<output>/stage.json``
holding its *key*: a hash of the config sections it reads, the manifest hashes of its input
datasets and the hash of its init contract. A rerun whose key matches a marker (and whose outputs
still exist) is skipped and says so. The marker lives next to the outputs (local or ``s3://``),
so the decision is the same in any process, on any machine, with or without a Prefect server.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from pgl_core.config import PGLConfig, config_to_dict, load_config
from storage import blobs
from storage.store import DatasetStore
from storage.uri import join_uri

MARKER_FILE = "stage.json"


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
    return hashlib.sha256(blobs.get_bytes(join_uri(model_dir, "contract.json"), storage_options)).hexdigest()


def read_marker(output: str, storage_options: dict | None = None) -> dict[str, Any] | None:
    """The ``stage.json`` marker of a stage output folder, or None."""
    uri = join_uri(output, MARKER_FILE)
    if not blobs.exists(uri, storage_options):
        return None
    try:
        return json.loads(blobs.get_bytes(uri, storage_options))
    except (ValueError, OSError):
        return None


def write_marker(output: str, key: str, result: dict[str, Any], storage_options: dict | None = None) -> None:
    """Record that the stage with ``key`` finished with ``result`` (atomic)."""
    body = {"key": key, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "result": result}
    blobs.put_bytes_atomic(join_uri(output, MARKER_FILE), json.dumps(body, indent=1, default=str).encode(),
                           storage_options)


def unchanged(output: str, key: str, required: list[str], storage_options: dict | None = None
              ) -> dict[str, Any] | None:
    """The marker's result when ``output`` holds a marker with ``key`` and every ``required`` file."""
    marker = read_marker(output, storage_options)
    if not marker or marker.get("key") != key:
        return None
    if not all(blobs.exists(join_uri(output, r), storage_options) for r in required):
        return None
    return dict(marker.get("result") or {})
