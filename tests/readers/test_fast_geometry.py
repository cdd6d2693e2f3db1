"""The numpy fast paths of canonicalize / resample match SimpleITK (DICOMOrient, ResampleImageFilter)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from storage.geometry import SPACING_MATCH_RTOL, canonicalize, resample
from storage.volume import Volume


def _sitk_resample(vol: Volume, spacing_mm: tuple[float, float, float], is_label: bool) -> np.ndarray:
    """The reference: SimpleITK linear (float32) / nearest, nearest-voxel extrapolation."""
    img = vol.to_sitk()
    if not is_label:
        img = sitk.Cast(img, sitk.sitkFloat32)
    flt = sitk.ResampleImageFilter()
    flt.SetOutputSpacing(spacing_mm)
    flt.SetSize([max(1, int(round(n * s / t))) for n, s, t in zip(vol.array.shape[::-1], vol.spacing_mm, spacing_mm)])
    flt.SetOutputOrigin(vol.origin_mm)
    flt.SetOutputDirection(vol.direction)
    flt.SetInterpolator(sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear)
    flt.SetUseNearestNeighborExtrapolator(True)
    flt.SetOutputPixelType(img.GetPixelID())
    return sitk.GetArrayFromImage(flt.Execute(img))


@pytest.fixture(scope="module")
def smooth_hu() -> np.ndarray:
    """A smooth int16 HU volume (24, 30, 36) spanning about -900..900 HU."""
    field = ndimage.gaussian_filter(np.random.default_rng(3).normal(size=(24, 30, 36)), 3.0)
    return (field / np.abs(field).max() * 900).astype(np.int16)


# (input spacing, target spacing) pairs (x, y, z mm) without exact half-voxel ties
SPACINGS = [
    ((0.7, 0.7, 2.5), (0.8, 0.8, 2.0)),
    ((0.7233, 0.7233, 2.067), (1.5, 1.5, 1.5)),
    ((1.0, 2.0, 3.0), (1.0, 2.0, 1.7)),
    ((0.9, 0.6, 1.25), (0.65, 0.95, 3.1)),
]
DIRECTIONS = {"lps": np.eye(3), "ras": np.diag([-1.0, -1.0, 1.0]),
              "oblique": np.array([[0.96, -0.28, 0.0], [0.28, 0.96, 0.0], [0.0, 0.0, 1.0]])}


@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
@pytest.mark.parametrize("spacings", SPACINGS, ids=lambda p: f"{p[0]}->{p[1]}")
def test_linear_matches_simpleitk_within_1hu(smooth_hu: np.ndarray, spacings, direction: str) -> None:
    src, dst = spacings
    vol = Volume(smooth_hu, src, (-120.5, 33.25, -7.0), tuple(DIRECTIONS[direction].reshape(-1)))
    ref = np.clip(np.rint(_sitk_resample(vol, dst, is_label=False)), -32768, 32767)
    out = resample(vol, dst)
    assert out.array.dtype == np.int16 and out.array.shape == ref.shape
    assert np.abs(out.array.astype(np.float64) - ref).max() <= 1.0
    assert out.origin_mm == vol.origin_mm and out.direction == vol.direction


@pytest.mark.parametrize("spacings", SPACINGS, ids=lambda p: f"{p[0]}->{p[1]}")
def test_float_linear_matches_simpleitk(smooth_hu: np.ndarray, spacings) -> None:
    src, dst = spacings
    vol = Volume(smooth_hu.astype(np.float32) * 0.37, src, (1.0, 2.0, 3.0), tuple(np.eye(3).reshape(-1)))
    out = resample(vol, dst)
    assert out.array.dtype == np.float32
    np.testing.assert_allclose(out.array, _sitk_resample(vol, dst, is_label=False), atol=1e-3)


@pytest.mark.parametrize("spacings", SPACINGS, ids=lambda p: f"{p[0]}->{p[1]}")
def test_nearest_labels_match_simpleitk_exactly(smooth_hu: np.ndarray, spacings) -> None:
    src, dst = spacings
    labels = np.digitize(smooth_hu, [-300, 0, 300]).astype(np.uint8)
    vol = Volume(labels, src, (4.0, -5.0, 6.0), tuple(np.diag([-1.0, -1.0, 1.0]).reshape(-1)))
    out = resample(vol, dst, is_label=True)
    assert out.array.dtype == np.uint8
    np.testing.assert_array_equal(out.array, _sitk_resample(vol, dst, is_label=True))


def test_nearest_half_voxel_ties_pick_a_neighbour() -> None:
    """At exact ties (2x upsampling) either neighbour is a correct nearest value."""
    ramp = np.broadcast_to(np.arange(9, dtype=np.uint8), (3, 4, 9)).copy()
    out = resample(Volume(ramp, (1.0, 1.0, 1.0), (0, 0, 0), tuple(np.eye(3).reshape(-1))), (0.5, 1.0, 1.0), True)
    np.testing.assert_array_equal(out.array[0, 0], np.minimum((np.arange(18) + 1) // 2, 8))


def test_matching_spacing_is_not_interpolated(smooth_hu: np.ndarray) -> None:
    near = 2.0 * (1 + SPACING_MATCH_RTOL / 2)
    vol = Volume(smooth_hu, (0.75, 0.75, near), (0, 0, 0), tuple(np.eye(3).reshape(-1)))
    out = resample(vol, (0.75, 0.75, 2.0))
    assert out.array is vol.array and out.spacing_mm == (0.75, 0.75, near)
    partly = resample(vol, (1.5, 0.75, 2.0))
    assert partly.spacing_mm == (1.5, 0.75, near) and partly.shape_zyx == (24, 30, 18)
    np.testing.assert_array_equal(partly.array, smooth_hu[:, :, ::2])


SIGNED_PERMUTATIONS = [(p, s) for p in itertools.permutations(range(3)) for s in itertools.product((1, -1), repeat=3)]


@pytest.mark.parametrize("perm,signs", SIGNED_PERMUTATIONS)
def test_canonicalize_matches_dicomorient(smooth_hu: np.ndarray, perm, signs) -> None:
    d = np.zeros((3, 3))
    for k in range(3):
        d[k, perm[k]] = signs[k]
    d = d @ np.array([[1.0, 0.0, 0.0], [0.0, 0.999, -0.0447], [0.0, 0.0447, 0.999]])  # slightly oblique
    d /= np.linalg.norm(d, axis=0)
    vol = Volume(smooth_hu, (0.5, 0.8, 2.5), (10.0, -20.0, 30.0), tuple(d.reshape(-1)))
    ref = sitk.DICOMOrient(vol.to_sitk(), "LPS")
    out = canonicalize(vol)
    np.testing.assert_array_equal(out.array, sitk.GetArrayViewFromImage(ref))
    assert out.spacing_mm == ref.GetSpacing()
    np.testing.assert_allclose(out.origin_mm, ref.GetOrigin(), atol=1e-9)
    np.testing.assert_allclose(out.direction, ref.GetDirection(), atol=1e-12)


def test_int16_rounding_without_clip_equals_the_clipping_path(smooth_hu: np.ndarray) -> None:
    """An int16 input is rounded straight into the output (convex combinations stay in range); the
    same values as a wider integer type, which takes the rounding and clipping path, give the same
    voxels; values beyond int16 are clipped."""
    src, dst = SPACINGS[1]
    direction = tuple(np.eye(3).reshape(-1))
    extreme = smooth_hu.astype(np.int32) * 36  # up to about +-32400: near both ends of int16
    narrow = resample(Volume(extreme.astype(np.int16), src, (0, 0, 0), direction), dst).array
    wide = resample(Volume(extreme, src, (0, 0, 0), direction), dst).array
    assert narrow.dtype == wide.dtype == np.int16
    np.testing.assert_array_equal(narrow, wide)
    unsigned = np.abs(extreme).astype(np.uint16) * 2  # up to about 64800
    big = resample(Volume(unsigned, src, (0, 0, 0), direction), dst).array
    assert big.dtype == np.int16 and big.max() == 32767 and big.min() >= 0
