"""The canonical in-memory CT volume shared by readers, geometry and the store.

A :class:`Volume` follows the ITK / SimpleITK convention: ``array`` is indexed (z, y, x);
``spacing_mm`` and ``origin_mm`` are (x, y, z) in millimetres in LPS patient coordinates;
``direction`` is the 3x3 direction-cosine matrix, row-major, 9 numbers. So
``sitk.GetImageFromArray(array)`` + SetSpacing/SetOrigin/SetDirection rebuilds the exact image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import SimpleITK as sitk


class PlaneSource(Protocol):
    """A ``(z, y, x)`` volume read one slice at a time, in the z order ``order`` asks for, never
    whole (``storage.readers.nifti_stream.NiftiSlices``, ``dicom_stream.DicomSlices``). ``source[k]``
    is slice k ``(y, x)``, ``source[k0:k1]`` a stack; :meth:`reoriented` (before reading begins)
    permutes the in-plane axes (``axes``: the stored axis of output y, x) and flips axes (``flip``:
    output z, y, x); :meth:`finish` reads to the end and runs the checks that need every voxel (raising
    like a reader); ``order``: "ascending" or "descending" when slices must be asked for in that
    z order (a compressed stream), "any" when any order is cheap (one file per slice).
    ``storage.geometry`` canonicalizes and resamples such a source as it reads."""

    shape: tuple[int, int, int]
    dtype: np.dtype
    ndim: int
    order: str

    def __getitem__(self, index: int | slice) -> np.ndarray: ...

    def reoriented(self, axes: tuple[int, int], flip: tuple[bool, bool, bool]) -> "PlaneSource": ...

    def finish(self) -> None: ...


def stacked(source: "PlaneSource", index: slice, descending: bool = False) -> np.ndarray:
    """``source[index]`` (a z range, step 1) of a plane source: its slices read in the source's
    order (from the last when ``descending``) and stacked in increasing z."""
    start, stop, step = index.indices(source.shape[0])
    if step != 1:
        raise ValueError(f"slices of a plane source are read with step 1, not {step}")
    if stop <= start:
        return np.empty((0, *source.shape[1:]), dtype=source.dtype)
    ks = range(stop - 1, start - 1, -1) if descending else range(start, stop)
    planes = {k: source[k] for k in ks}
    return np.stack([planes[k] for k in range(start, stop)])


def reoriented_plane(plane: np.ndarray, axes: tuple[int, int], flip: tuple[bool, bool]) -> np.ndarray:
    """A stored slice ``(y, x)`` with its axes permuted (``axes``: the stored axis of output y, x)
    then flipped (``flip``: output y, x), as views."""
    plane = plane.T if tuple(axes) != (0, 1) else plane
    return np.flip(plane, axis=tuple(a for a in (0, 1) if flip[a])) if any(flip) else plane


@dataclass
class Volume:
    """A 3D scalar image. ``array``: (z, y, x), an ndarray or, from a streaming reader, a
    :class:`PlaneSource` (which only ``storage.geometry`` and the store's writer consume); geometry
    in ITK convention (see module doc)."""

    array: np.ndarray
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]
    direction: tuple[float, ...]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume needs a 3D array (z, y, x), got shape {self.array.shape}")
        self.spacing_mm = tuple(float(s) for s in self.spacing_mm)  # type: ignore[assignment]
        self.origin_mm = tuple(float(o) for o in self.origin_mm)  # type: ignore[assignment]
        self.direction = tuple(float(d) for d in self.direction)
        if len(self.spacing_mm) != 3 or len(self.origin_mm) != 3 or len(self.direction) != 9:
            raise ValueError("Volume geometry needs 3 spacings, 3 origin values and 9 direction values")

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    def to_sitk(self) -> sitk.Image:
        img = sitk.GetImageFromArray(np.ascontiguousarray(self.array))
        img.SetSpacing(self.spacing_mm)
        img.SetOrigin(self.origin_mm)
        img.SetDirection(self.direction)
        return img

    @classmethod
    def from_sitk(cls, img: sitk.Image, meta: dict[str, Any] | None = None) -> "Volume":
        if img.GetDimension() != 3:
            raise ValueError(f"expected a 3D image, got {img.GetDimension()}D")
        return cls(
            array=sitk.GetArrayFromImage(img),
            spacing_mm=img.GetSpacing(),
            origin_mm=img.GetOrigin(),
            direction=img.GetDirection(),
            meta=dict(meta or {}),
        )

    def geometry(self) -> dict[str, Any]:
        """JSON-safe geometry (the store's case attributes use these keys)."""
        return {
            "spacing": list(self.spacing_mm),
            "origin": list(self.origin_mm),
            "direction": list(self.direction),
            "shape_zyx": list(self.shape_zyx),
        }
