"""Dice / HD95 / NSD against closed-form values on synthetic shapes, edge cases, and MONAI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pgl_core.evaluation.metrics import binary_metrics, segmentation_metrics, spacing_zyx_from_xyz

LABELS = {1: "organ"}


def cube(shape, corner, side) -> np.ndarray:
    """uint8 label map (z, y, x) with a cube of label 1 at voxel corner (z, y, x)."""
    out = np.zeros(shape, np.uint8)
    z, y, x = corner
    out[z : z + side, y : y + side, x : x + side] = 1
    return out


def sphere_mm(shape, spacing_zyx_mm, radius_mm) -> np.ndarray:
    """uint8 ball of physical radius ``radius_mm`` centred in the volume (anisotropic voxels)."""
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing_zyx_mm)], indexing="ij")
    return (sum(g**2 for g in grids) <= radius_mm**2).astype(np.uint8)


def surface_count(side: int) -> int:
    """Surface voxels (removed by a 6-connected erosion) of a cube of ``side`` voxels."""
    return side**3 - (side - 2) ** 3


@pytest.mark.parametrize("offset", [0, 1, 3, 7])
def test_dice_of_offset_cubes_is_closed_form(offset):
    a = 10
    truth = cube((16, 16, 24), (3, 3, 2), a)
    pred = cube((16, 16, 24), (3, 3, 2 + offset), a)
    out = segmentation_metrics(pred, truth, (1.0, 1.0, 1.0), LABELS)
    assert out["organ"]["dice"] == pytest.approx((a - offset) / a, abs=1e-12)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_hd95_of_cube_shifted_along_z_with_3mm_slices_is_3k_mm(k):
    a = 12
    truth = cube((24, 16, 16), (2, 2, 2), a)
    pred = cube((24, 16, 16), (2 + k, 2, 2), a)
    out = segmentation_metrics(pred, truth, (3.0, 0.8, 0.8), LABELS)["organ"]
    assert out["hd95"] == pytest.approx(3.0 * k, abs=1e-9)
    assert out["dice"] == pytest.approx((a - k) / a)


def test_same_voxel_shift_scales_with_spacing():
    truth = cube((24, 24, 24), (4, 4, 4), 12)
    pred = cube((24, 24, 24), (4, 4, 6), 12)  # 2 voxels along x
    fine = segmentation_metrics(pred, truth, (5.0, 5.0, 0.7), LABELS)["organ"]
    coarse = segmentation_metrics(pred, truth, (5.0, 5.0, 2.1), LABELS)["organ"]
    assert fine["hd95"] == pytest.approx(1.4)
    assert coarse["hd95"] == pytest.approx(4.2)
    assert fine["dice"] == coarse["dice"]


def test_hd95_of_concentric_spheres_in_anisotropic_spacing_is_radius_gap():
    spacing = (2.5, 0.9, 1.1)
    r1, r2 = 9.0, 15.0
    shape = (16, 40, 34)
    inner, outer = sphere_mm(shape, spacing, r1), sphere_mm(shape, spacing, r2)
    out = segmentation_metrics(inner, outer, spacing, LABELS)["organ"]
    assert abs(out["hd95"] - (r2 - r1)) <= max(spacing)
    assert out["dice"] == pytest.approx(2 * r1**3 / (r1**3 + r2**3), rel=0.1)
    assert out["nsd"] == 0.0  # tolerance 2 mm is far below the 6 mm gap


def test_nsd_with_tolerance_above_and_below_the_shift():
    a, k = 12, 2  # shift 2 slices of 3 mm = 6 mm
    truth = cube((24, 16, 16), (2, 2, 2), a)
    pred = cube((24, 16, 16), (2 + k, 2, 2), a)
    above = segmentation_metrics(pred, truth, (3.0, 1.0, 1.0), LABELS, nsd_tolerance_mm=6.5)["organ"]
    below = segmentation_metrics(pred, truth, (3.0, 1.0, 1.0), LABELS, nsd_tolerance_mm=5.5)["organ"]
    assert above["nsd"] == 1.0
    # the top face of each cube is exactly 6 mm from the other surface, so it is outside 5.5 mm
    assert 0.0 < below["nsd"] <= 1.0 - a * a / surface_count(a)
    tighter = segmentation_metrics(pred, truth, (3.0, 1.0, 1.0), LABELS, nsd_tolerance_mm=2.0)["organ"]
    assert tighter["nsd"] < below["nsd"]


def test_edge_cases_empty_classes():
    empty = np.zeros((8, 8, 8), np.uint8)
    blob = cube((8, 8, 8), (2, 2, 2), 3)
    assert segmentation_metrics(empty, empty, (1, 1, 1), LABELS)["organ"] == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}
    for pred, truth in [(blob, empty), (empty, blob)]:
        out = segmentation_metrics(pred, truth, (1, 1, 1), LABELS)["organ"]
        assert out["dice"] == 0.0 and out["nsd"] == 0.0 and math.isnan(out["hd95"])


def test_identical_masks_and_multiple_classes_torch_input():
    truth = np.zeros((12, 12, 12), np.int64)
    truth[2:6, 2:6, 2:6] = 1
    truth[7:11, 6:10, 3:9] = 2
    pred = truth.copy()
    pred[pred == 2] = 0
    names = {1: "a", 2: "b", 3: "c"}
    out = segmentation_metrics(torch.from_numpy(pred), torch.from_numpy(truth), (2.0, 1.0, 1.0), names)
    assert list(out) == ["a", "b", "c"]
    assert out["a"] == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}
    assert out["b"]["dice"] == 0.0 and math.isnan(out["b"]["hd95"])
    assert out["c"] == {"dice": 1.0, "hd95": 0.0, "nsd": 1.0}


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_matches_monai_public_metrics_on_random_blobs():
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice

    rng = np.random.default_rng(0)
    spacing, tol = (2.0, 0.7, 1.3), 1.5
    base = sphere_mm((20, 40, 32), spacing, 11.0).astype(bool)
    pred = base & (rng.random(base.shape) > 0.15)
    truth = np.roll(base, 2, axis=1)
    ours = binary_metrics(pred, truth, spacing, nsd_tolerance_mm=tol)
    p = torch.from_numpy(np.stack([~pred, pred])[None].astype(np.float32))
    t = torch.from_numpy(np.stack([~truth, truth])[None].astype(np.float32))
    kw = dict(include_background=False)
    assert ours["dice"] == pytest.approx(compute_dice(p, t, **kw).item(), rel=1e-6)
    hd = compute_hausdorff_distance(p, t, percentile=95, spacing=list(spacing), **kw).item()
    assert ours["hd95"] == pytest.approx(hd, rel=1e-5)
    nsd = compute_surface_dice(p, t, class_thresholds=[tol], spacing=list(spacing), **kw).item()
    assert ours["nsd"] == pytest.approx(nsd, rel=1e-6)


def test_bad_inputs_are_refused_with_their_values():
    a = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match=r"\(4, 4, 5\)"):
        segmentation_metrics(a, np.zeros((4, 4, 5), np.uint8), (1, 1, 1), LABELS)
    with pytest.raises(ValueError, match="spacing"):
        segmentation_metrics(a, a, (1, 0, 1), LABELS)
    with pytest.raises(ValueError, match="float32"):
        segmentation_metrics(a.astype(np.float32), a, (1, 1, 1), LABELS)
    with pytest.raises(ValueError, match="3D"):
        segmentation_metrics(a[0], a[0], (1, 1, 1), LABELS)


def test_spacing_order_conversion():
    assert spacing_zyx_from_xyz((0.7, 0.8, 3.0)) == (3.0, 0.8, 0.7)
    with pytest.raises(ValueError, match="3 values"):
        spacing_zyx_from_xyz((1.0, 2.0))
