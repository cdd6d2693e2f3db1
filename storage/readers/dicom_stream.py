"""A DICOM series decoded one slice (file) at a time, so that ingest never holds the whole input.

The series' headers are read and validated first (``storage.readers.dicom``: order along the
normal, uniform steps, one grid); :class:`DicomSlices` then decodes slice k's pixels from its own
file when the resampler asks for it, exactly as the whole-series read does (the numpy fast path
or GDCM, the same rescale and dtype), applies the HU rule on the same subsample
(``storage.checks.CTValues``) and keeps only the last few slices. :meth:`DicomSlices.finish`
decodes the slices nobody asked for (a slice that cannot be decoded fails the case, as it would
have before) and runs the whole-volume checks.

Only single-frame series whose canonical (LPS) z axis is the slice normal are streamed (any
direction along it: slices are separate files); an Enhanced (multi-frame) object or a sagittal /
coronal stack is read whole. The files must stay where they are until the case is written.
"""

from __future__ import annotations

import copy

import numpy as np

from storage.checks import CTValues
from storage.errors import RefusedInput, UnreadableInput
from storage.geometry import axis_map
from storage.readers.dicom import Series, decode_classic, to_dtype
from storage.readers.dicom_pixels import decode_raw
from storage.volume import Volume, reoriented_plane, stacked

_KEEP = 4  # decoded slices kept (the resampler asks for at most two at a time)


class DicomSlices:
    """The (z, y, x) HU of an ordered single-frame series, slice by slice (a ``PlaneSource``).

    ``slices[k]``: slice k (y, x) in the orientation :meth:`reoriented` set; ``slices[k0:k1]``: a
    stack. Any order is cheap (``order`` is "any"); each slice's pixels are checked once.
    """

    ndim = 3
    order = "any"

    def __init__(self, ordered: list, dtype: np.dtype, where: str, allow_non_hu: bool) -> None:
        self.ordered, self.dtype, self.where = ordered, np.dtype(dtype), where
        rows, cols = ordered[0].shape
        self.shape = (len(ordered), int(rows), int(cols))
        self._axes: tuple[int, int] = (0, 1)
        self._flip: tuple[bool, bool, bool] = (False, False, False)
        self._values = CTValues(self.shape, where, allow_non_hu)
        self._checked: set[int] = set()
        self._kept: dict[int, np.ndarray] = {}

    def reoriented(self, axes: tuple[int, int], flip: tuple[bool, bool, bool]) -> "DicomSlices":
        """A view with the in-plane axes permuted (``axes``: stored axis of output y, x) and axes
        flipped (``flip``: output z, y, x); before any slice is read. The view shares the checks."""
        if self._checked or self._axes != (0, 1) or any(self._flip):
            raise ValueError(f"{self.where}: reoriented twice, or after reading began")
        view = copy.copy(self)
        view.shape = (self.shape[0], self.shape[1 + axes[0]], self.shape[1 + axes[1]])
        view._axes, view._flip = tuple(axes), tuple(bool(f) for f in flip)  # type: ignore[assignment]
        view._kept = {}
        return view

    def _stored(self, i: int) -> np.ndarray:
        """Slice ``i`` of the series order, decoded as ``storage.readers.dicom`` stacks it, checked once."""
        s, (rows, cols) = self.ordered[i], self.ordered[i].shape
        try:
            if s.raw is not None and self.dtype == np.int16:
                plane = decode_raw(s, np.empty((rows, cols), dtype=np.int16))
            else:
                hu = decode_classic(s)
                if hu.shape != (rows, cols):
                    raise UnreadableInput(s.path, f"decoded slice shape {hu.shape} != header Rows/Columns "
                                          f"{(rows, cols)}")
                plane = to_dtype(hu, self.dtype)
        except (RefusedInput, UnreadableInput, MemoryError):
            raise
        except Exception as exc:  # the file went away or its decoder failed: this slice, named
            raise UnreadableInput(s.path, f"pixel data cannot be read: {type(exc).__name__}: {exc}") from exc
        if i not in self._checked:
            self._values.add(plane, i)
            self._checked.add(i)
        return plane

    def __getitem__(self, index: int | slice) -> np.ndarray:
        if isinstance(index, slice):
            return stacked(self, index)
        k = int(index)
        if k < 0 or k >= self.shape[0]:
            raise IndexError(f"slice {k} of {self.shape[0]}")
        if k not in self._kept:
            plane = self._stored(self.shape[0] - 1 - k if self._flip[0] else k)
            self._kept[k] = reoriented_plane(plane, self._axes, self._flip[1:])
            if len(self._kept) > _KEEP:
                self._kept.pop(next(iter(self._kept)))
        return self._kept[k]

    def finish(self) -> None:
        """Decode (and so check) the slices nobody asked for, then the whole-volume checks."""
        for i in range(self.shape[0]):
            if i not in self._checked:
                self._stored(i)
        self._values.finish()

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        out = self[0:self.shape[0]]
        return out.astype(dtype) if dtype is not None else out


def open_series(series: Series, where: str, allow_non_hu: bool = False) -> Volume | None:
    """A Volume of ``series`` whose array is a :class:`DicomSlices`, or None when the series is not
    one to stream (see the module doc: stack it whole)."""
    mapping = axis_map(series.direction)
    if series.ordered[0].frame >= 0 or mapping is None or mapping[0][2] != 2:
        return None
    slices = DicomSlices(series.ordered, series.dtype, where, allow_non_hu)
    return Volume(slices, series.spacing_mm, series.origin_mm, series.direction)  # type: ignore[arg-type]
