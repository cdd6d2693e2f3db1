"""Canonical geometry of CT volumes: reorientation, resampling, spacing statistics, HU casting.

Canonical orientation is SimpleITK's ``"LPS"`` (direction as close to identity as the data
allows): array axes (z, y, x) with +x towards patient left, +y posterior, +z superior.
Reorientation is a pure axis permutation / flip, so it is exact for images and labels alike.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from storage.errors import RefusedInput
from storage.volume import Volume

CANONICAL_ORIENTATION = "LPS"
_INT16_MIN, _INT16_MAX = np.iinfo(np.int16).min, np.iinfo(np.int16).max


def canonicalize(vol: Volume, is_label: bool = False) -> Volume:
    """Reorient ``vol`` to LPS by permuting / flipping axes (no interpolation, dtype kept).

    Every voxel keeps its physical position: origin and direction are updated with the data.
    ``is_label`` is accepted for symmetry with :func:`resample`; the operation is the same.
    """
    del is_label  # exact for any content
    img = sitk.DICOMOrient(vol.to_sitk(), CANONICAL_ORIENTATION)
    return Volume.from_sitk(img, meta=vol.meta)


def _resampled_size(vol: Volume, spacing_mm: tuple[float, float, float]) -> list[int]:
    size_xyz = vol.array.shape[::-1]
    return [max(1, int(round(n * s / t))) for n, s, t in zip(size_xyz, vol.spacing_mm, spacing_mm)]


def resample(vol: Volume, spacing_mm: tuple[float, float, float], is_label: bool = False) -> Volume:
    """Resample ``vol`` to ``spacing_mm`` (x, y, z) over the same physical extent.

    The output keeps origin (centre of the first voxel) and direction; its size is
    ``round(size * spacing / spacing_mm)`` per axis. Labels use nearest neighbour and keep their
    dtype. Images use linear interpolation in float32; an integer input (e.g. int16 HU) is
    rounded back to int16 here (:func:`to_int16_hu`), a float input stays float32. Points past
    the last input voxel centre take the nearest voxel's value (no padding value is invented).
    """
    if any(float(s) <= 0 for s in spacing_mm):
        raise ValueError(f"target spacing must be positive, got {spacing_mm}")
    img = vol.to_sitk()
    if not is_label:
        img = sitk.Cast(img, sitk.sitkFloat32)
    flt = sitk.ResampleImageFilter()
    flt.SetOutputSpacing(tuple(float(s) for s in spacing_mm))
    flt.SetSize(_resampled_size(vol, spacing_mm))
    flt.SetOutputOrigin(vol.origin_mm)
    flt.SetOutputDirection(vol.direction)
    flt.SetInterpolator(sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear)
    flt.SetUseNearestNeighborExtrapolator(True)
    flt.SetOutputPixelType(img.GetPixelID())
    out = Volume.from_sitk(flt.Execute(img), meta=vol.meta)
    if not is_label and np.issubdtype(vol.array.dtype, np.integer):
        out = to_int16_hu(out)
    return out


def median_spacing(spacings: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Per-axis median of (x, y, z) spacings in mm (the nnU-Net style default target)."""
    if not spacings:
        raise ValueError("median_spacing needs at least one spacing")
    med = np.median(np.asarray(spacings, dtype=np.float64), axis=0)
    return (float(med[0]), float(med[1]), float(med[2]))


def to_int16_hu(vol: Volume) -> Volume:
    """Round to the nearest integer and clip to the int16 range; geometry and meta kept."""
    if vol.array.dtype == np.int16:
        return vol
    arr = np.clip(np.rint(vol.array), _INT16_MIN, _INT16_MAX).astype(np.int16)
    return Volume(arr, vol.spacing_mm, vol.origin_mm, vol.direction, dict(vol.meta))


def labels_match_image(image: Volume, label: Volume, tol_mm: float = 1e-3) -> None:
    """Raise :class:`RefusedInput` unless ``label`` lies on exactly the grid of ``image``.

    Shapes must be equal; spacing and origin may differ by at most ``tol_mm``; direction
    cosines by at most 1e-3.
    """
    source = str(label.meta.get("source_uri", "label"))
    if image.shape_zyx != label.shape_zyx:
        raise RefusedInput(source, f"label shape {label.shape_zyx} differs from image shape {image.shape_zyx}")
    checks = (
        ("spacing", image.spacing_mm, label.spacing_mm, tol_mm),
        ("origin", image.origin_mm, label.origin_mm, tol_mm),
        ("direction", image.direction, label.direction, 1e-3),
    )
    for name, a, b, tol in checks:
        if np.max(np.abs(np.subtract(a, b))) > tol:
            raise RefusedInput(source, f"label {name} {tuple(round(v, 4) for v in b)} differs from "
                                       f"image {name} {tuple(round(v, 4) for v in a)}")
