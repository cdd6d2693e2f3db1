"""The pretraining output contract (kind ``pgl-encoder``): ``encoder.pt`` + ``contract.json``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from pgl_core.contracts.common import (CONTRACT_FILE, ENCODER_FILE, ENCODER_KIND, FORMAT_VERSION, Contract,
                                       get_state, put_state)
from storage.uri import join_uri


def _dataset_spacing(manifest: dict[str, Any]) -> list[float] | None:
    spacing = (manifest.get("plan") or {}).get("target_spacing_mm")
    return [float(v) for v in spacing] if spacing is not None else None


def _common_spacing(per_dataset: dict[str, list[float] | None]) -> list[float] | None:
    """The datasets' shared target spacing; the element-wise median when they differ."""
    known = [s for s in per_dataset.values() if s is not None]
    if not known:
        return None
    return [float(sorted(axis)[len(axis) // 2]) for axis in zip(*known)]


@dataclass(frozen=True)
class PretrainContract(Contract):
    """A pretraining output's ``contract.json`` (format version 1). Spacing (x, y, z) mm; patch
    (z, y, x) voxels; ``spacing_mm`` None (native spacing) fits any dataset plan."""

    KIND: ClassVar[str] = ENCODER_KIND
    REQUIRED: ClassVar[tuple[str, ...]] = (
        "architecture", "in_channels", "spacing_mm", "orientation", "hu_window", "normalisation", "patch_vox",
        "mode", "datasets", "steps", "config", "torch_version", "format_version", "kind")
    SPACING_OPTIONAL: ClassVar[bool] = True

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
    kind: str = ENCODER_KIND
    spacing_mm_per_dataset: dict[str, list[float] | None] = field(default_factory=dict)
    source: str = field(default="", compare=False, repr=False)

    @classmethod
    def build(cls, config: dict[str, Any], norm: dict[str, Any], manifests: dict[str, dict[str, Any]],
              manifest_hashes: dict[str, str], steps: int) -> PretrainContract:
        """The contract of a run from its config dict, resolved normalisation and dataset manifests.

        ``norm``: ``IntensityNorm.to_dict()`` (``hu_window``, ``kind``, ``mean_hu``, ``std_hu``).
        """
        model = dict(config["model"])
        per_ds = {name: _dataset_spacing(m) for name, m in manifests.items()}
        orientations = {(m.get("plan") or {}).get("orientation", "LPS") for m in manifests.values()}
        if len(orientations) > 1:
            raise ValueError(f"datasets {sorted(manifests)} mix orientations {sorted(orientations)}")
        return cls(
            architecture={"name": "ResidualUNet", **model},
            in_channels=int(model["in_channels"]),
            spacing_mm=_common_spacing(per_ds),
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

    def write(self, output_uri: str, encoder_state: dict[str, torch.Tensor],
              storage_options: dict | None = None) -> tuple[str, str]:
        """Write ``encoder.pt`` then ``contract.json`` atomically; returns both URIs."""
        enc_uri, con_uri = join_uri(output_uri, ENCODER_FILE), join_uri(output_uri, CONTRACT_FILE)
        put_state(enc_uri, encoder_state, storage_options)
        self._write_json(con_uri, storage_options)
        return enc_uri, con_uri


def load_encoder_state(uri: str, storage_options: dict | None = None) -> dict[str, torch.Tensor]:
    """The encoder state dict from a run's ``output_uri`` (or the ``encoder.pt`` URI)."""
    return get_state(uri if uri.endswith(".pt") else join_uri(uri, ENCODER_FILE), storage_options)
