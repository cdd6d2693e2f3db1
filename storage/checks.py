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
    subsample (every 2nd slice, 4th row and column) of arrays over 2**20 voxels."""
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array.sum(dtype=np.float64)):
        raise RefusedInput(source, "image contains NaN or infinite values")
    if allow_non_hu or array.size == 0:
        return
    sample = array if array.size <= _FULL_SAMPLE else array[::2, ::4, ::4]
    low = float(np.mean(sample <= LOW_HU))
    outside = float(np.mean((sample < HU_RANGE[0]) | (sample > HU_RANGE[1])))
    if low >= LOW_FRACTION and outside <= 0.5:
        return
    found = (f"{low:.2%} of voxels at or below {LOW_HU:g} HU, at least {LOW_FRACTION:.1%} expected: a CT "
             "shows air near -1000 or fat near -100" if low < LOW_FRACTION
             else f"{outside:.0%} of voxels outside {HU_RANGE[0]:g}..{HU_RANGE[1]:g}")
    raise RefusedInput(source, f"values do not look like Hounsfield units (range {float(array.min()):g}.."
                       f"{float(array.max()):g}; {found}); preprocess.allow_non_hu accepts it")
