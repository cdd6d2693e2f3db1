"""The training-time intensity mapping of stored HU: clip, then normalise.

Resolved once per run from :class:`pgl_core.config.IntensityConfig` and the datasets' manifest
statistics, recorded in the pretraining and segmenter contracts, and applied on the training device
to the int16 crops the loader delivers (cheap there, and it keeps host->device transfers at 2
bytes/voxel). Kinds:

- ``foreground`` (default; nnU-Net's CT scheme over the body instead of labels, so that unlabelled
  pretraining data and labelled fine-tuning data normalise alike): clip to the body voxels'
  ``foreground_percentiles`` (0.5, 99.5), z-score with the mean / std of the clipped body values.
  Body voxels are those >= -500 HU (``storage.layout.body_stats``; pooled histograms of the
  datasets). Air (half of a CT's voxels, std ~455 HU with it) no longer sets the scale, so organs
  10-15 HU apart stay ~0.1 units apart instead of 0.02-0.03.
- ``zscore``: clip to ``hu_window``, z-score with the whole-volume (air included) clipped stats.
- ``minmax``: ``hu_window`` to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from pgl_core.config import IntensityConfig


@dataclass(frozen=True)
class IntensityNorm:
    """``kind`` "zscore" / "foreground": ``(clip(x, lo, hi) - mean_hu) / std_hu``; "minmax":
    ``(clip - lo) / (hi - lo)``. ``hu_window`` is the clip range actually used (for "foreground",
    the body percentiles)."""

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

    def units_per_hu(self) -> float:
        """How many normalised units one HU step becomes (to express augmentations in HU)."""
        lo, hi = self.hu_window
        return 1.0 / (hi - lo) if self.kind == "minmax" else 1.0 / float(self.std_hu)

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


def body_norm_stats(bodies: list[dict[str, Any]], percentiles: tuple[float, float]) -> tuple[float, float, float, float]:
    """(lo_hu, hi_hu, mean_hu, std_hu) of pooled body histograms (``storage.layout.body_stats``):
    the percentiles, then the mean / std of the values clipped to them (bin centres)."""
    hist = np.sum([np.asarray(b["hist"], dtype=np.float64) for b in bodies], axis=0)
    first = bodies[0]
    centres = first["hist_lo_hu"] + first["bin_hu"] * (np.arange(hist.size) + 0.5)
    total = hist.sum()
    if not total > 0:
        raise ValueError("no body voxels (>= -500 HU) in the datasets' statistics")
    cdf = np.cumsum(hist) / total
    lo, hi = (float(centres[min(int(np.searchsorted(cdf, q / 100.0)), hist.size - 1)]) for q in percentiles)
    if not hi > lo:
        hi = lo + float(first["bin_hu"])
    clipped = np.clip(centres, lo, hi)
    mean = float((hist * clipped).sum() / total)
    std = float(np.sqrt(max((hist * (clipped - mean) ** 2).sum() / total, 0.0)))
    return lo, hi, mean, std


def _foreground(cfg: IntensityConfig, manifests: dict[str, dict[str, Any]]) -> IntensityNorm:
    bodies = [(m.get("stats") or {}).get("body") for m in manifests.values()]
    if not bodies or any(not b for b in bodies):
        missing = sorted(n for n, m in manifests.items() if not (m.get("stats") or {}).get("body"))
        raise ValueError(f"datasets {missing} have no body statistics in their manifest (written before "
                         "they existed): re-run pgl preprocess with --force for them, or set "
                         "intensity.normalisation=zscore")
    lo, hi, mean, std = body_norm_stats(bodies, tuple(cfg.foreground_percentiles))
    mean = mean if cfg.mean_hu is None else float(cfg.mean_hu)
    std = std if cfg.std_hu is None else float(cfg.std_hu)
    if not std > 0:
        raise ValueError(f"foreground std_hu must be > 0, got {std} (datasets {sorted(manifests)})")
    return IntensityNorm((lo, hi), "foreground", mean, std)


def resolve_norm(cfg: IntensityConfig, manifests: dict[str, dict[str, Any]] | None = None) -> IntensityNorm:
    """The run's :class:`IntensityNorm` from ``cfg`` and ``{dataset: manifest}`` (for the stats)."""
    if cfg.normalisation == "foreground":
        return _foreground(cfg, manifests or {})
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
