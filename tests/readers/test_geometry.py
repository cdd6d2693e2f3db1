"""Canonical orientation is exact; resampling keeps extent; spacing and HU helpers."""

from __future__ import annotations

import numpy as np
import pytest

from storage.errors import RefusedInput
from storage.geometry import canonicalize, labels_match_image, median_spacing, resample, to_int16_hu
from storage.volume import Volume


def _rotation(ax: float, ay: float) -> np.ndarray:
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    return rx @ ry


DIRECTIONS = {
    "lps": np.eye(3),
    "ras": np.diag([-1.0, -1.0, 1.0]),
    "descending_z": np.diag([1.0, 1.0, -1.0]),
    "permuted": np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
    "oblique": _rotation(0.3, -0.2) @ np.diag([-1.0, 1.0, -1.0]),
}


def _marked_volume(direction: np.ndarray) -> tuple[Volume, tuple[int, int, int]]:
    arr = np.zeros((5, 6, 7), dtype=np.int16)
    idx_zyx = (1, 4, 2)
    arr[idx_zyx] = 999
    return Volume(arr, (0.5, 0.8, 2.5), (10.0, -20.0, 30.0), tuple(direction.reshape(-1))), idx_zyx


def _physical(vol: Volume, idx_zyx: tuple[int, ...]) -> np.ndarray:
    d = np.asarray(vol.direction).reshape(3, 3)
    ijk = np.array(idx_zyx[::-1], dtype=np.float64)
    return np.asarray(vol.origin_mm) + d @ (ijk * np.asarray(vol.spacing_mm))


@pytest.mark.parametrize("name", sorted(DIRECTIONS))
def test_canonicalize_keeps_every_voxel_in_place(name: str) -> None:
    vol, idx = _marked_volume(DIRECTIONS[name])
    out = canonicalize(vol)
    assert out.array.dtype == np.int16 and out.array.size == vol.array.size
    hits = np.argwhere(out.array == 999)
    assert len(hits) == 1
    np.testing.assert_allclose(_physical(out, tuple(hits[0])), _physical(vol, idx), atol=1e-9)
    d = np.asarray(out.direction).reshape(3, 3)
    assert np.all(np.diag(d) > 0.5), d  # as close to identity as the data allows
    assert sorted(out.spacing_mm) == sorted(vol.spacing_mm)


def test_canonicalize_of_canonical_is_identity() -> None:
    vol, _ = _marked_volume(np.eye(3))
    out = canonicalize(vol, is_label=True)
    np.testing.assert_array_equal(out.array, vol.array)
    assert out.origin_mm == vol.origin_mm and out.direction == vol.direction


def test_resample_image_keeps_extent_and_values() -> None:
    z, y, x = np.meshgrid(np.arange(8), np.arange(10), np.arange(12), indexing="ij")
    arr = (10 * x + 3 * y - 7 * z).astype(np.int16)  # linear: interpolation is exact
    vol = Volume(arr, (1.0, 1.0, 2.0), (5.0, 6.0, 7.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    out = resample(vol, (0.5, 2.0, 1.0))
    assert out.array.dtype == np.int16
    assert out.shape_zyx == (16, 5, 24)
    assert out.origin_mm == vol.origin_mm and out.direction == vol.direction
    zz, yy, xx = np.meshgrid(np.arange(16), np.arange(5), np.arange(24), indexing="ij")
    expect = 10 * xx * 0.5 + 3 * yy * 2.0 - 7 * zz * 0.5
    inside = (xx * 0.5 <= 11) & (zz * 0.5 <= 7)  # past the last input voxel: nearest voxel's value
    np.testing.assert_allclose(out.array[inside], np.rint(expect[inside]), atol=1)
    assert out.array.min() >= arr.min() and out.array.max() <= arr.max()


def test_resample_float_image_stays_float32() -> None:
    vol = Volume(np.random.default_rng(0).normal(size=(4, 4, 4)), (1.0, 1.0, 1.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert resample(vol, (2.0, 2.0, 2.0)).array.dtype == np.float32


def test_resample_label_is_nearest_and_keeps_label_set() -> None:
    arr = np.zeros((6, 6, 6), dtype=np.uint8)
    arr[2:4, 1:5, 1:5] = 3
    arr[0, 0, 0] = 7
    vol = Volume(arr, (1.0, 1.0, 1.0), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    out = resample(vol, (0.5, 0.5, 0.5), is_label=True)
    assert out.array.dtype == np.uint8
    assert set(np.unique(out.array)) == {0, 3, 7}
    assert out.shape_zyx == (12, 12, 12)


def test_median_spacing_per_axis() -> None:
    assert median_spacing([(1.0, 1.0, 5.0), (0.7, 0.7, 1.0), (0.8, 0.9, 2.5)]) == (0.8, 0.9, 2.5)
    with pytest.raises(ValueError):
        median_spacing([])


def test_to_int16_hu_rounds_and_clips() -> None:
    vol = Volume(np.array([-40000.2, -1.5, 0.4, 2.6, 40000.0], dtype=np.float32).reshape(1, 1, 5),
                 (1, 1, 1), (0, 0, 0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    out = to_int16_hu(vol)
    assert out.array.dtype == np.int16
    assert out.array.ravel().tolist() == [-32768, -2, 0, 3, 32767]


def test_labels_match_image() -> None:
    ident = (1, 0, 0, 0, 1, 0, 0, 0, 1)
    image = Volume(np.zeros((3, 4, 5), np.int16), (1.0, 1.0, 2.0), (0.0, 0.0, 0.0), ident)
    labels_match_image(image, Volume(np.zeros((3, 4, 5), np.uint8), (1.0, 1.0, 2.0000001), (0, 0, 0), ident))
    with pytest.raises(RefusedInput, match="shape"):
        labels_match_image(image, Volume(np.zeros((3, 4, 4), np.uint8), (1, 1, 2), (0, 0, 0), ident))
    with pytest.raises(RefusedInput, match="origin"):
        labels_match_image(image, Volume(np.zeros((3, 4, 5), np.uint8), (1, 1, 2), (0, 0.5, 0), ident))
    with pytest.raises(RefusedInput, match="direction"):
        labels_match_image(image, Volume(np.zeros((3, 4, 5), np.uint8), (1, 1, 2), (0, 0, 0),
                                         (-1, 0, 0, 0, -1, 0, 0, 0, 1)))
