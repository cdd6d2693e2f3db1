"""What an image must satisfy to be taken as a CT: a plausible voxel spacing and Hounsfield values.

:func:`storage.readers.read_case` applies both to every image it reads, at ingest and in
``pgl predict``, with the settings of the dataset's plan (``spacing_range_mm``, ``allow_non_hu``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from storage.errors import RefusedInput

if TYPE_CHECKING:  # a light module: the plan (and so the configuration) imports its constants
    from storage.volume import Volume

DEFAULT_SPACING_RANGE_MM = (0.1, 20.0)
HU_RANGE = (-2048.0, 4095.0)
# The HU rule. A CT of a body, cropped or not, shows air (about -1000: around the body, lungs, bowel
# gas, the padding outside the scan circle) or at least fat (about -100), and no other kind of image
# has values that low. So at least LOW_FRACTION of the voxels must lie at or below LOW_HU, and at
# most half outside HU_RANGE. This refuses 8-bit photos (0..255), MR- and PET-like non-negative
# ranges, [0, 1]-scaled or z-scored intensities, label maps given as images and CT stored without
# its rescale intercept (air near 0 instead of -1000); DICOM is checked after its rescale slope and
# intercept. A crop inside one organ with neither fat nor air is refused too: allow_non_hu accepts it.
LOW_HU, LOW_FRACTION = -100.0, 0.001
_FULL_SAMPLE = 1 << 20  # voxels: arrays up to this size are checked whole, larger ones subsampled


def check_voxel_size(spacing_xyz, source: str) -> None:
    """Refuse a zero, negative or NaN spacing on any axis."""
    for axis, value in zip("xyz", (float(v) for v in spacing_xyz)):
        if not value > 0:
            raise RefusedInput(source, f"voxel spacing of axis {axis} is {value:g} mm: not a voxel size")


def check_geometry(volume: "Volume", source: str,
                   spacing_range_mm: tuple[float, float] = DEFAULT_SPACING_RANGE_MM) -> None:
    """Refuse a zero, negative, NaN or implausible voxel spacing (outside ``spacing_range_mm``, on
    any axis) and a non-finite origin or direction: header errors that would resample into nonsense
    (1e-6 mm makes a one-voxel case)."""
    check_voxel_size(volume.spacing_mm, source)
    lo, hi = spacing_range_mm
    for axis, value in zip("xyz", (float(v) for v in volume.spacing_mm)):
        if not lo <= value <= hi:
            raise RefusedInput(source, f"voxel spacing of axis {axis} is {value:g} mm, outside the plausible "
                               f"CT range {lo:g}-{hi:g} mm (preprocess.spacing_range_mm)")
    if not (np.all(np.isfinite(volume.origin_mm)) and np.all(np.isfinite(volume.direction))):
        raise RefusedInput(source, f"non-finite origin {list(volume.origin_mm)} or direction in the header")


def check_ct_values(array: np.ndarray, source: str, allow_non_hu: bool = False) -> None:
    """Refuse NaN / infinity always, and values that cannot be Hounsfield units unless
    ``allow_non_hu`` (the rule: see ``LOW_HU`` above). Fractions are measured on a strided
    subsample (every 2nd slice, 4th row and column) of arrays over 2**20 voxels.
    :class:`CTValues` applies the same rule to a volume read a slice at a time."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array.sum(dtype=np.float64)):
        raise RefusedInput(source, "image contains NaN or infinite values")
    if allow_non_hu or array.size == 0:
        return
    sample = array if array.size <= _FULL_SAMPLE else array[::2, ::4, ::4]
    _hu_verdict(float(np.mean(sample <= LOW_HU)), float(np.mean((sample < HU_RANGE[0]) | (sample > HU_RANGE[1]))),
                lambda: (float(array.min()), float(array.max())), source)


def _hu_verdict(low: float, outside: float, value_range, source: str) -> None:
    """Refuse unless the fractions ``low`` and ``outside`` of the sample satisfy the HU rule;
    ``value_range()`` gives (min, max) for the message."""
    if low >= LOW_FRACTION and outside <= 0.5:
        return
    found = (f"{low:.2%} of voxels at or below {LOW_HU:g} HU, at least {LOW_FRACTION:.1%} expected: a CT "
             "shows air near -1000 or fat near -100" if low < LOW_FRACTION
             else f"{outside:.0%} of voxels outside {HU_RANGE[0]:g}..{HU_RANGE[1]:g}")
    lo, hi = value_range()
    raise RefusedInput(source, f"values do not look like Hounsfield units (range {lo:g}..{hi:g}; {found}); "
                       "preprocess.allow_non_hu accepts it")


class CTValues:
    """:func:`check_ct_values` on a volume of ``shape_zyx`` given one slice at a time (:meth:`add`,
    in z order from 0): the same rule, sample and messages; :meth:`finish` after the last slice."""

    def __init__(self, shape_zyx: tuple[int, int, int], source: str, allow_non_hu: bool = False) -> None:
        self.source, self.allow_non_hu = source, allow_non_hu
        self.whole = int(np.prod(shape_zyx, dtype=np.int64)) <= _FULL_SAMPLE
        self.n = self.low = self.outside = 0
        self.lo, self.hi = np.inf, -np.inf
        self.total = 0.0

    def add(self, plane: np.ndarray, z: int) -> None:
        """Slice ``z`` (y, x) as stored (the subsample's rows and columns count from its first)."""
        if np.issubdtype(plane.dtype, np.floating):
            self.total += float(plane.sum(dtype=np.float64))
        if self.allow_non_hu or plane.size == 0:
            return
        self.lo, self.hi = min(self.lo, float(plane.min())), max(self.hi, float(plane.max()))
        if not self.whole and z % 2:
            return
        sample = plane if self.whole else plane[::4, ::4]
        self.n += int(sample.size)
        self.low += int(np.count_nonzero(sample <= LOW_HU))
        self.outside += int(np.count_nonzero((sample < HU_RANGE[0]) | (sample > HU_RANGE[1])))

    def finish(self) -> None:
        """Refuse the volume as :func:`check_ct_values` would have."""
        if not np.isfinite(self.total):
            raise RefusedInput(self.source, "image contains NaN or infinite values")
        if self.allow_non_hu or not self.n:
            return
        _hu_verdict(self.low / self.n, self.outside / self.n, lambda: (self.lo, self.hi), self.source)
