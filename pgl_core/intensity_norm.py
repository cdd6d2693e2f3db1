"""The training-time intensity mapping of stored HU: clip to the HU window, then normalise.

Resolved once per run from :class:`pgl_core.config.IntensityConfig` and the datasets' manifest
statistics (voxel-weighted pooling of each dataset's clipped-HU mean / std, or the config's
overrides), recorded in the pretraining contract, and applied on the training device to the int16
crops the loader delivers (cheap there, and it keeps host->device transfers at 2 bytes/voxel).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch

from pgl_core.config import IntensityConfig


@dataclass(frozen=True)
class IntensityNorm:
    """``kind`` "zscore": ``(clip(x, lo, hi) - mean_hu) / std_hu``; "minmax": ``(clip - lo) / (hi - lo)``."""

    hu_window: tuple[float, float]
    kind: str
    mean_hu: float | None
    std_hu: float | None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: HU, any layout and dtype -> float32 of the same shape."""
        lo, hi = self.hu_window
        x = x.float().clamp_(lo, hi) if x.dtype != torch.float32 else x.clamp(lo, hi)
        if self.kind == "minmax":
            return (x - lo) / (hi - lo)
        return (x - self.mean_hu) / self.std_hu

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hu_window"] = list(self.hu_window)
        return d


def pool_stats(stats: list[dict[str, Any]]) -> tuple[float, float]:
    """Voxel-weighted pooled (mean, std) of several datasets' {"mean_hu", "std_hu", "n_vox"}.

    Datasets without ``n_vox`` weigh equally. Raises ValueError when no dataset has statistics.
    """
    usable = [s for s in stats if s and s.get("mean_hu") is not None and s.get("std_hu") is not None]
    if not usable:
        raise ValueError("no dataset manifest has HU statistics (mean_hu/std_hu); set intensity.mean_hu/std_hu")
    weights = [float(s.get("n_vox") or 1.0) for s in usable]
    total = sum(weights)
    mean = sum(w * s["mean_hu"] for w, s in zip(weights, usable)) / total
    second = sum(w * (s["std_hu"] ** 2 + s["mean_hu"] ** 2) for w, s in zip(weights, usable)) / total
    return mean, math.sqrt(max(second - mean * mean, 0.0))


def resolve_norm(cfg: IntensityConfig, manifests: dict[str, dict[str, Any]] | None = None) -> IntensityNorm:
    """The run's :class:`IntensityNorm` from ``cfg`` and ``{dataset: manifest}`` (for the stats)."""
    lo, hi = (float(v) for v in cfg.hu_window)
    if not hi > lo:
        raise ValueError(f"intensity.hu_window {cfg.hu_window} must have low < high")
    if cfg.normalisation == "minmax":
        return IntensityNorm((lo, hi), "minmax", None, None)
    mean, std = cfg.mean_hu, cfg.std_hu
    if mean is None or std is None:
        stats = [m.get("stats") or {} for m in (manifests or {}).values()]
        pooled_mean, pooled_std = pool_stats(stats)
        mean = pooled_mean if mean is None else mean
        std = pooled_std if std is None else std
    if not std > 0:
        raise ValueError(f"z-score std_hu must be > 0, got {std} (datasets {sorted(manifests or {})})")
    return IntensityNorm((lo, hi), "zscore", float(mean), float(std))
