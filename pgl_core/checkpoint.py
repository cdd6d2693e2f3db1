"""Training checkpoints: atomic writes, integrity check, retention, latest-valid lookup, RNG capture.

Layout under the run's ``output_uri`` (a local path or ``s3://`` URI, written via
``storage.blobs``)::

    checkpoints/step_00000500.pt          torch.save bytes of the full state dict
    checkpoints/step_00000500.pt.sha256   JSON {"sha256", "bytes", "step"}, written after the .pt

A checkpoint counts only when its sidecar exists and the payload's sha256 and length match it, so
a partial or corrupt write is detected and the previous valid checkpoint is used instead. Only
rank 0 writes; every rank loads.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import re
from typing import Any

import numpy as np
import torch

from storage import blobs

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"step_(\d{8})\.pt$")
SIDECAR_SUFFIX = ".sha256"


def checkpoint_dir(output_uri: str) -> str:
    return output_uri.rstrip("/") + "/checkpoints"


def checkpoint_uri(output_uri: str, step: int) -> str:
    return f"{checkpoint_dir(output_uri)}/step_{step:08d}.pt"


def save_checkpoint(output_uri: str, step: int, state: dict[str, Any], storage_options: dict | None = None,
                    keep: int | None = None) -> str:
    """Serialise ``state`` and write it atomically (payload, then sidecar); prune to ``keep``.

    Returns the checkpoint URI.
    """
    buf = io.BytesIO()
    torch.save(state, buf)
    data = buf.getvalue()
    uri = checkpoint_uri(output_uri, step)
    blobs.put_bytes_atomic(uri, data, storage_options=storage_options)
    side = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "step": int(step)}
    blobs.put_bytes_atomic(uri + SIDECAR_SUFFIX, json.dumps(side).encode(), storage_options=storage_options)
    if keep is not None:
        prune_checkpoints(output_uri, keep, storage_options)
    return uri


def list_checkpoints(output_uri: str, storage_options: dict | None = None) -> list[tuple[int, str]]:
    """``(step, uri)`` of every checkpoint payload present (valid or not), oldest first."""
    found = []
    for uri in blobs.list_uris(checkpoint_dir(output_uri), storage_options=storage_options):
        m = _NAME_RE.search(uri.rsplit("/", 1)[-1])
        if m:
            found.append((int(m.group(1)), uri))
    return sorted(found)


def prune_checkpoints(output_uri: str, keep: int, storage_options: dict | None = None) -> list[str]:
    """Delete all but the newest ``keep`` checkpoints (payload and sidecar); returns deleted URIs."""
    found = list_checkpoints(output_uri, storage_options)
    doomed = [uri for _, uri in found[:-keep]] if keep > 0 else [uri for _, uri in found]
    for uri in doomed:
        blobs.delete_uri(uri + SIDECAR_SUFFIX, storage_options=storage_options)
        blobs.delete_uri(uri, storage_options=storage_options)
    return doomed


def read_verified(uri: str, storage_options: dict | None = None) -> bytes:
    """The payload at ``uri`` after checking it against its sidecar; ValueError names the problem."""
    try:
        side = json.loads(blobs.get_bytes(uri + SIDECAR_SUFFIX, storage_options=storage_options))
    except FileNotFoundError as exc:
        raise ValueError(f"checkpoint {uri} has no {SIDECAR_SUFFIX} sidecar (incomplete write)") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"checkpoint sidecar {uri}{SIDECAR_SUFFIX} is not valid JSON") from exc
    data = blobs.get_bytes(uri, storage_options=storage_options)
    if len(data) != side.get("bytes"):
        raise ValueError(f"checkpoint {uri} is truncated: {len(data)} bytes, expected {side.get('bytes')}")
    digest = hashlib.sha256(data).hexdigest()
    if digest != side.get("sha256"):
        raise ValueError(f"checkpoint {uri} is corrupt: sha256 {digest[:12]}.. != {str(side.get('sha256'))[:12]}..")
    return data


def load_checkpoint(uri: str, storage_options: dict | None = None, map_location: str | torch.device = "cpu") -> dict:
    """Load one verified checkpoint into a state dict (tensors on ``map_location``)."""
    data = read_verified(uri, storage_options)
    return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)


def load_latest(output_uri: str, storage_options: dict | None = None,
                map_location: str | torch.device = "cpu") -> tuple[dict, str] | None:
    """The newest checkpoint that verifies and loads, with its URI; None when there is none.

    Invalid ones (no sidecar, wrong length or hash, unreadable) are skipped with a warning.
    """
    for step, uri in reversed(list_checkpoints(output_uri, storage_options)):
        try:
            return load_checkpoint(uri, storage_options, map_location), uri
        except Exception as exc:  # noqa: BLE001 - any failure means: use the previous one
            log.warning("skipping checkpoint step %d: %s", step, exc)
    return None


def capture_rng() -> dict[str, Any]:
    """RNG states of python, numpy, torch (CPU) and CUDA (all devices, when available)."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states only when the device count matches)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
