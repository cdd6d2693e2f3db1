"""PGL's correctness test (PGL.md): aligned coordinate views agree at every feature stride."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from pgl_core.align import align_features, overlap_grid_size, overlap_region
from pgl_core.config import ViewConfig
from pgl_core.views import render_views, sample_views
from tests.method.conftest import coordinate_volume

TOL_VOX = 1e-3
STRIDES = [(1, 1, 1), (1, 2, 2), (2, 4, 4), (4, 8, 8)]


def _aligned_coords(shape, cfg, seed, batch, stride, out_size=None, **kw):
    gen = torch.Generator().manual_seed(seed)
    params = sample_views(shape, cfg, gen, batch, **kw)
    view_a, view_b = render_views(coordinate_volume(shape, batch), params, intensity=False)
    # Pool in float64: float32 sums over large windows of coordinates ~100 drift by ~1e-3.
    feat_a, feat_b = F.avg_pool3d(view_a.double(), stride), F.avg_pool3d(view_b.double(), stride)
    return params, feat_a, align_features(feat_a, feat_b, params, out_size)


@pytest.mark.parametrize("rotate90", [False, True])
@pytest.mark.parametrize("stride", STRIDES)
def test_coordinate_views_align_exactly_at_every_stride(stride, rotate90):
    cfg = ViewConfig(patch_vox=(16, 32, 32), rotate90=rotate90)
    params, _, (al_a, al_b) = _aligned_coords((40, 72, 72), cfg, seed=7, batch=16, stride=stride)
    assert params.flips.any() and (~params.flips).any()
    if rotate90:
        assert (params.rot90 % 2 == 1).any()
    assert al_a.shape == al_b.shape
    assert (al_a - al_b).abs().max().item() < TOL_VOX


def test_aligned_grid_walks_the_overlap_in_source_order():
    cfg = ViewConfig(patch_vox=(16, 32, 32), rotate90=True)
    params, feat_a, (al_a, _) = _aligned_coords((40, 72, 72), cfg, seed=3, batch=12, stride=(2, 4, 4))
    # Voxel-centre coordinates of the rendered field are source index = edge coordinate - 0.5.
    r_lo, r_hi = overlap_region(params, tuple(feat_a.shape[2:]))
    for axis in range(3):
        vals = al_a[:, axis].movedim(axis + 1, -1)
        steps = vals[..., 1:] - vals[..., :-1]
        assert (steps > 0).all(), f"axis {axis} not increasing in source order"
        lo = vals.flatten(1).amin(1) + 0.5
        hi = vals.flatten(1).amax(1) + 0.5
        torch.testing.assert_close(lo, r_lo[:, axis], atol=TOL_VOX, rtol=0)
        torch.testing.assert_close(hi, r_hi[:, axis], atol=TOL_VOX, rtol=0)
    box_lo, box_hi = params.box_lo.amax(1), (params.box_lo + params.box_size).amin(1)
    assert (r_lo >= box_lo - 1e-4).all() and (r_hi <= box_hi + 1e-4).all()


def test_tight_grid_size_is_exact_and_no_larger_than_default():
    cfg = ViewConfig(patch_vox=(16, 32, 32))
    gen = torch.Generator().manual_seed(11)
    params = sample_views((40, 72, 72), cfg, gen, 8)
    size = overlap_grid_size(params, (8, 8, 8))
    assert all(2 <= s <= 8 for s in size)
    _, _, (al_a, al_b) = _aligned_coords((40, 72, 72), cfg, 11, 8, (2, 4, 4), out_size=size)
    assert tuple(al_a.shape[2:]) == size
    assert (al_a - al_b).abs().max().item() < TOL_VOX


def test_sub_cell_overlap_degrades_to_half_a_cell():
    """With no per-axis overlap floor, each view is read at most half a cell from the true spot."""
    cfg = ViewConfig(patch_vox=(8, 16, 16), min_overlap=0.02)
    stride = (4, 8, 8)  # 2 cells per axis
    params, _, (al_a, al_b) = _aligned_coords(
        (40, 60, 60), cfg, seed=5, batch=64, stride=stride, min_axis_overlap=0.0
    )
    half_cells = (params.box_size / 4).sum(1)  # (B, 3): size / (2 * 2 cells), both views
    err = (al_a - al_b).abs().flatten(2).amax(2)  # (B, 3)
    assert (err <= half_cells + TOL_VOX).all()
    assert (err > TOL_VOX).any(), "expected some unresolvable overlaps with no per-axis floor"


def test_alignment_stays_exact_under_autocast():
    cfg = ViewConfig(patch_vox=(16, 32, 32), rotate90=True)
    gen = torch.Generator().manual_seed(2)
    params = sample_views((40, 72, 72), cfg, gen, 6)
    view_a, view_b = render_views(coordinate_volume((40, 72, 72), 6), params, intensity=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        al_a, al_b = align_features(F.avg_pool3d(view_a.double(), 2), F.avg_pool3d(view_b.double(), 2), params)
    assert al_a.dtype == torch.float32
    assert (al_a - al_b).abs().max().item() < TOL_VOX


def _stride_for(p: int, choice: int) -> int:
    options = [s for s in (1, 2, 4) if p % s == 0 and p // s >= 4]
    return options[choice % len(options)]


@settings(max_examples=30, deadline=None)
@given(
    patch=st.tuples(st.sampled_from([4, 8, 12, 16]), st.sampled_from([8, 12, 16, 24])),
    square=st.booleans(),
    width_extra=st.sampled_from([4, 8]),
    scale_lo=st.floats(1.0, 1.3),
    scale_span=st.floats(0.0, 0.3),
    margin=st.tuples(*[st.integers(0, 20)] * 3),
    stride_choice=st.tuples(*[st.integers(0, 2)] * 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_alignment_property(patch, square, width_extra, scale_lo, scale_span, margin, stride_choice, seed):
    patch_vox = (patch[0], patch[1], patch[1] if square else patch[1] + width_extra)
    scale = (scale_lo, scale_lo + scale_span)
    cfg = ViewConfig(patch_vox=patch_vox, scale_range=scale, rotate90=square)
    shape = tuple(int(math.ceil(p * scale[1])) + m for p, m in zip(patch_vox, margin))
    stride = tuple(_stride_for(p, c) for p, c in zip(patch_vox, stride_choice))
    if square:
        stride = (stride[0], stride[1], stride[1])
    _, _, (al_a, al_b) = _aligned_coords(shape, cfg, seed, 4, stride)
    assert (al_a - al_b).abs().max().item() < TOL_VOX


@pytest.mark.parametrize("stride", [(1, 2, 2), (2, 4, 4), (4, 8, 8), (4, 16, 16)])
def test_paper_patch_aligns_at_the_paper_strides(stride):
    cfg = ViewConfig(patch_vox=(16, 96, 96), rotate90=True)
    _, _, (al_a, al_b) = _aligned_coords((34, 202, 202), cfg, seed=0, batch=4, stride=stride)
    assert (al_a - al_b).abs().max().item() < TOL_VOX
