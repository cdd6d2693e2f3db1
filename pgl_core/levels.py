"""Which feature levels carry PGL's local loss (``loss.local_levels``, default ``auto``).

The local loss compares the two views' features over the anatomy they share. At a level whose cells
are large against the views' overlap, the aligned "map" is one or two cells wide and carries no
spatial content: measured at an 8x24x24 view, the bottleneck overlap spans ~0.5x1.3x1.3 cells and
the local loss on true correspondences (0.454) is barely below spatially permuted pairs (0.472),
while the stride-4 decoder level separates them (0.565 vs 0.700). ``auto`` therefore keeps every
level whose overlap spans at least ``loss.local_min_cells`` cells on every axis (the median over
sampled view pairs of the configured view sampler), and the finest level when none does. The
result is written into the run's config (checkpoint, contract), never left as ``auto``.
"""

from __future__ import annotations

import torch

from pgl_core.config import ModelConfig, PGLConfig
from pgl_core.nets.unet import cumulative_strides, decoder_depth_for_stride

LEVELS = ("bottleneck", "decoder_s4")


def level_geometry(model_cfg: ModelConfig, level: str) -> tuple[int, tuple[int, int, int]]:
    """(channels, cumulative (D, H, W) stride) of a local level of the backbone; ValueError when the
    backbone has no such level (no stage at in-plane stride 4 for ``decoder_s4``)."""
    cum = cumulative_strides(model_cfg)
    if level == "bottleneck":
        return model_cfg.widths[-1], cum[-1]
    stage = len(cum) - 1 - decoder_depth_for_stride(model_cfg, 4)
    return model_cfg.widths[stage], cum[stage]


def level_stride(cfg: PGLConfig, level: str) -> tuple[int, int, int]:
    """Cumulative (D, H, W) stride of a local level of the configured backbone."""
    return level_geometry(cfg.model, level)[1]


def overlap_cells(cfg: PGLConfig, level: str, pairs: int = 512, seed: int = 0) -> tuple[float, float, float]:
    """Median over ``pairs`` sampled view pairs of the aligned overlap's extent in ``level`` cells, per
    axis (z, y, x), the smaller of the two views: each view's overlap in its own voxels / stride,
    less one cell (alignment samples between the outermost cell centres, ``align.overlap_region``)."""
    from pgl_core.views import sample_views, source_shape_for

    params = sample_views(tuple(source_shape_for(cfg.views)), cfg.views, torch.Generator().manual_seed(seed), pairs)
    lo, size = params.box_lo.float(), params.box_size.float()  # (B, 2, 3) source voxels
    overlap = (torch.minimum(lo[:, 0] + size[:, 0], lo[:, 1] + size[:, 1]) - lo.amax(1)).clamp(min=0)
    patch = torch.tensor(cfg.views.patch_vox, dtype=torch.float32)
    stride = torch.tensor(level_stride(cfg, level), dtype=torch.float32)
    # the aligned region runs between the outermost cell centres of the overlap: one cell less
    cells = (overlap[:, None] / size * patch / stride - 1.0).clamp(min=0).amin(1)  # (B, 3)
    return tuple(float(v) for v in cells.median(0).values)  # type: ignore[return-value]


def auto_levels(cfg: PGLConfig) -> tuple[str, ...]:
    """The levels ``auto`` chooses for this config (see module doc)."""
    available = []
    for level in LEVELS:
        try:
            level_stride(cfg, level)
        except ValueError:
            continue  # a backbone without an in-plane stride-4 stage has no decoder_s4 level
        available.append(level)
    good = [lv for lv in available if min(overlap_cells(cfg, lv)) >= cfg.loss.local_min_cells]
    return tuple(good) if good else (available[-1],)


def resolve_local_levels(cfg: PGLConfig) -> PGLConfig:
    """A copy of ``cfg`` whose ``loss.local_levels`` names concrete levels (``auto`` resolved)."""
    if "auto" not in cfg.loss.local_levels:
        return cfg
    out = cfg.model_copy(deep=True)
    explicit = [lv for lv in cfg.loss.local_levels if lv != "auto"]
    out.loss.local_levels = tuple(dict.fromkeys([*auto_levels(cfg), *explicit]))
    return out
