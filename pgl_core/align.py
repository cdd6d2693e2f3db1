"""PGL's prior: resample the two views' feature maps over their shared anatomy onto one grid.

Conventions come from ``views.py``: source voxel-edge coordinates, views rendered with
align_corners=False semantics, ``c = A t`` between box-normalised and view-normalised coordinates.
A feature map of ``n`` cells along a view axis (any stride, e.g. average pooling or a strided
conv net) has its cell ``m`` centred at view coordinate ``t = (2 m + 1) / n - 1``: the
align_corners=False position, so ``grid_sample(..., align_corners=False)`` reads it.

The common grid [ours]:

1. O = box_a ∩ box_b (source coordinates). Trilinear reads are exact only between cell centres,
   so the grid covers R = O shrunk to the cell-centre hull of both views' feature maps (half a
   cell of each view inside its box edges). R depends on the level's cell counts.
2. The grid's ``out_size`` points per axis run over R end to end (align_corners=True spacing on R),
   in source axis order (z, y, x) and source orientation, whatever the flips / quarter turns.
3. Each view's feature map is read at those points with ``grid_sample`` (trilinear,
   align_corners=False, border padding). For any map that is trilinear between cell centres (e.g.
   average-pooled coordinates) the two results are equal up to float rounding.

If O is narrower along an axis than the two views' half cells together (possible only when the
overlap is under one feature cell; ``sample_views``' ``min_axis_overlap`` prevents it for levels with
>= 1 / min_axis_overlap cells), that axis collapses to R's midpoint and each view is read at most
half of its own cell away from it (border clamping).

Default grid size: the feature map's own size (at least 2 per axis). O lies inside each box, so
O's extent at the level's stride never exceeds it: this is the batch-wide upper bound of the
per-sample extent, static (torch.compile friendly, no host sync). For the tight batch maximum,
compute :func:`overlap_grid_size` on the CPU parameters and pass it as ``out_size``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from pgl_core.views import ViewParams, exact_affine_grid


def _cells_per_source_axis(a: Tensor, n_view: tuple[int, int, int]) -> Tensor:
    """(B, 2, 3) feature cells along each source axis, given the view-axis cell counts."""
    m = a.abs()
    return m[..., 0] * float(n_view[0]) + m[..., 1] * float(n_view[1]) + m[..., 2] * float(n_view[2])


def overlap_region(params: ViewParams, n_view: tuple[int, int, int]) -> tuple[Tensor, Tensor]:
    """Start and end (B, 3) of R, the sampled part of the overlap, in source coordinates."""
    a = params.view_matrices()
    lo, size = params.box_lo.float(), params.box_size.float()
    half_cell = size / (2 * _cells_per_source_axis(a, n_view))
    r_lo = (lo + half_cell).amax(1)
    r_hi = (lo + size - half_cell).amin(1)
    mid = (r_lo + r_hi) / 2
    empty = r_hi < r_lo
    return torch.where(empty, mid, r_lo), torch.where(empty, mid, r_hi)


def overlap_grids(
    params: ViewParams, n_view: tuple[int, int, int], out_size: tuple[int, int, int]
) -> tuple[Tensor, Tensor]:
    """Sampling grids (B, *out_size, 3) into view a's and view b's feature maps of ``n_view`` cells."""
    a = params.view_matrices()  # (B, 2, 3, 3), c = A t
    r_lo, r_hi = overlap_region(params, n_view)
    lo, size = params.box_lo.float(), params.box_size.float()
    c_lo = 2 * (r_lo[:, None] - lo) / size - 1  # (B, 2, 3) in each box's normalised coords
    c_hi = 2 * (r_hi[:, None] - lo) / size - 1
    mid, half = (c_hi + c_lo) / 2, (c_hi - c_lo) / 2
    a_t = a.transpose(-1, -2)  # t = A^T c
    m = a_t * half[..., None, :]
    t = (a_t * mid[..., None, :]).sum(-1)
    grid = exact_affine_grid(m.flatten(0, 1), t.flatten(0, 1), out_size, align_corners=True)
    grid = grid.view(params.batch, 2, *grid.shape[1:])
    return grid[:, 0], grid[:, 1]


def sample_grid(feat: Tensor, grid: Tensor) -> Tensor:
    """Trilinear read of feat (B, C, d, h, w) at grid (B, d', h', w', 3) -> (B, C, d', h', w') float32."""
    return F.grid_sample(feat.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)


def _check(feat_a: Tensor, feat_b: Tensor, params: ViewParams) -> None:
    if feat_a.dim() != 5 or feat_a.shape != feat_b.shape or feat_a.shape[0] != params.batch:
        raise ValueError(
            f"feature maps must both be (B={params.batch}, C, d, h, w) with equal shapes, "
            f"got {tuple(feat_a.shape)} and {tuple(feat_b.shape)}"
        )


def default_out_size(n_view: tuple[int, ...]) -> tuple[int, int, int]:
    """Static grid size for a level with ``n_view`` cells: the cells themselves, at least 2."""
    return tuple(max(2, int(n)) for n in n_view)  # type: ignore[return-value]


def align_features(
    feat_a: Tensor, feat_b: Tensor, params: ViewParams, out_size: tuple[int, int, int] | None = None
) -> tuple[Tensor, Tensor]:
    """Resample view a's and view b's maps (B, C, d, h, w) over their shared anatomy.

    Returns two float32 tensors (B, C, *out_size) whose voxel (i, j, k) shows the same source
    location in both, axes in source (z, y, x) order. ``out_size`` defaults to (d, h, w), >= 2.
    """
    _check(feat_a, feat_b, params)
    n_view = tuple(int(s) for s in feat_a.shape[2:])
    size = default_out_size(n_view) if out_size is None else tuple(int(s) for s in out_size)
    grid_a, grid_b = overlap_grids(params.on(feat_a.device), n_view, size)  # type: ignore[arg-type]
    return sample_grid(feat_a, grid_a), sample_grid(feat_b, grid_b)


def overlap_grid_size(params: ViewParams, n_view: tuple[int, int, int]) -> tuple[int, int, int]:
    """Batch maximum of O's extent in feature cells per source axis (>= 2): the tight grid size.

    Host computation (call it on CPU parameters to avoid a device sync).
    """
    a = params.view_matrices()
    lo, size = params.box_lo.float(), params.box_size.float()
    o = (torch.minimum(lo[:, 0] + size[:, 0], lo[:, 1] + size[:, 1]) - lo.amax(1)).clamp(min=0)
    cells = o[:, None] / (size / _cells_per_source_axis(a, n_view))  # (B, 2, 3)
    best = cells.amax(dim=(0, 1)).tolist()
    return tuple(max(2, int(math.ceil(c - 1e-4))) for c in best)  # type: ignore[return-value]
