"""The pretraining output contract: what travels with the pretrained encoder weights.

A finished pretraining run writes, under its ``output_uri``:

- ``encoder.pt``: the online backbone's state dict (``PGLModel.encoder_state_dict()``);
- ``contract.json``: the preprocessing the weights expect (spacing, orientation, HU window,
  normalisation, patch), the architecture, the datasets with their manifest hashes, the step
  count and the full config. Fine-tuning and inference check it before using the weights.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from storage import blobs

FORMAT_VERSION = 1
KIND = "pgl-encoder"
CONTRACT_FILE = "contract.json"
ENCODER_FILE = "encoder.pt"


@dataclass(frozen=True)
class PretrainContract:
    """Parsed ``contract.json`` (format version 1). Spacing (x, y, z) mm; patch (z, y, x) voxels."""

    architecture: dict[str, Any]
    in_channels: int
    spacing_mm: list[float] | None
    orientation: str
    hu_window: list[float]
    normalisation: dict[str, Any]
    patch_vox: list[int]
    mode: str
    datasets: dict[str, str]
    steps: int
    config: dict[str, Any]
    torch_version: str
    format_version: int = FORMAT_VERSION
    kind: str = KIND
    spacing_mm_per_dataset: dict[str, list[float] | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name


def dataset_spacing(manifest: dict[str, Any]) -> list[float] | None:
    """The plan's target spacing (x, y, z) mm of a dataset manifest, or None when absent."""
    spacing = (manifest.get("plan") or {}).get("target_spacing_mm")
    return [float(v) for v in spacing] if spacing is not None else None


def common_spacing(per_dataset: dict[str, list[float] | None]) -> list[float] | None:
    """The datasets' shared target spacing; the element-wise median when they differ."""
    known = [s for s in per_dataset.values() if s is not None]
    if not known:
        return None
    return [float(sorted(axis)[len(axis) // 2]) for axis in zip(*known)]


def build_contract(config: dict[str, Any], norm: dict[str, Any], manifests: dict[str, dict[str, Any]],
                   manifest_hashes: dict[str, str], steps: int) -> PretrainContract:
    """The contract of a run from its config dict, resolved normalisation and dataset manifests.

    ``norm``: ``IntensityNorm.to_dict()`` (``hu_window``, ``kind``, ``mean_hu``, ``std_hu``).
    """
    model = dict(config["model"])
    per_ds = {name: dataset_spacing(m) for name, m in manifests.items()}
    orientations = {(m.get("plan") or {}).get("orientation", "LPS") for m in manifests.values()}
    if len(orientations) > 1:
        raise ValueError(f"datasets {sorted(manifests)} mix orientations {sorted(orientations)}")
    return PretrainContract(
        architecture={"name": "ResidualUNet", **model},
        in_channels=int(model["in_channels"]),
        spacing_mm=common_spacing(per_ds),
        orientation=orientations.pop() if orientations else "LPS",
        hu_window=[float(v) for v in norm["hu_window"]],
        normalisation={"kind": norm["kind"], "mean_hu": norm["mean_hu"], "std_hu": norm["std_hu"]},
        patch_vox=[int(v) for v in config["views"]["patch_vox"]],
        mode=str(config["loss"]["mode"]),
        datasets=dict(manifest_hashes),
        steps=int(steps),
        config=config,
        torch_version=torch.__version__,
        spacing_mm_per_dataset=per_ds,
    )


def write_contract(output_uri: str, contract: PretrainContract, encoder_state: dict[str, torch.Tensor],
                   storage_options: dict | None = None) -> tuple[str, str]:
    """Write ``encoder.pt`` then ``contract.json`` atomically; returns both URIs."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in encoder_state.items()}, buf)
    enc_uri, con_uri = _join(output_uri, ENCODER_FILE), _join(output_uri, CONTRACT_FILE)
    blobs.put_bytes_atomic(enc_uri, buf.getvalue(), storage_options=storage_options)
    text = json.dumps(contract.to_dict(), indent=1, sort_keys=True, allow_nan=False)
    blobs.put_bytes_atomic(con_uri, text.encode(), storage_options=storage_options)
    return enc_uri, con_uri


def load_contract(uri: str, storage_options: dict | None = None) -> PretrainContract:
    """Read a contract from a run's ``output_uri`` or the ``contract.json`` URI itself."""
    target = uri if uri.endswith(".json") else _join(uri, CONTRACT_FILE)
    data = json.loads(blobs.get_bytes(target, storage_options=storage_options))
    if data.get("kind") != KIND:
        raise ValueError(f"{target}: kind {data.get('kind')!r} is not {KIND!r}")
    if data.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{target}: unsupported format_version {data.get('format_version')!r}")
    known = set(PretrainContract.__dataclass_fields__)
    missing = known - set(data) - {"spacing_mm_per_dataset"}
    if missing:
        raise ValueError(f"{target}: contract lacks fields {sorted(missing)}")
    return PretrainContract(**{k: v for k, v in data.items() if k in known})


def load_encoder_state(uri: str, storage_options: dict | None = None) -> dict[str, torch.Tensor]:
    """The encoder state dict from a run's ``output_uri`` (or the ``encoder.pt`` URI)."""
    target = uri if uri.endswith(".pt") else _join(uri, ENCODER_FILE)
    data = blobs.get_bytes(target, storage_options=storage_options)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
