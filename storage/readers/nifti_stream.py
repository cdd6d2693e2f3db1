"""NIfTI volumes decoded one slice at a time, so that ingest never holds a whole decompressed input.

NIfTI stores x fastest and the third voxel axis (k) slowest, so slice k is one contiguous run of
``nx * ny`` voxels of the (gzip) stream. :func:`open_slices` reads only the header and returns a
:class:`NiftiSlices` (a ``storage.volume.PlaneSource``): slices are decoded in increasing k as the
resampler asks for them, at most a few kept, and :meth:`NiftiSlices.finish` decodes whatever was
not asked for, verifies the stream to its end (every gzip member's CRC-32 and length, as
``storage.readers.payload`` does) and runs the checks that need the whole volume. A failure raises
:class:`~storage.errors.RefusedInput` / :class:`~storage.errors.UnreadableInput` naming the file,
there or at the slice where it shows; the store's write is atomic, so nothing of such a case is kept.

The voxels are exactly what the whole-file reader (``storage.readers.image_file``) gives: the
stored values with ``scl_slope`` / ``scl_inter`` applied as SimpleITK does (:func:`itk_scaling`),
images as int16 when stored as 8-bit integers or int16 without scaling, else float32 (the
whole-file reader's int16 for other integers that fit gives the same resampled int16 output);
labels as uint8 after the same checks (finite, integral, 0..255). The HU rule is applied on the
same subsample (``storage.checks.CTValues``). Geometry is the header's, as the whole-file reader
reports it; a ``vox_offset`` inside the header is refused, as there.

:func:`open_slices` returns None (read the whole file instead) when streaming cannot keep those
promises: not a 3D NIfTI of a plain numeric type, an oblique orientation, or one whose canonical
(LPS) z axis is not the stored k axis (a sagittal or coronal stack). When the canonical z runs
against k, the stream is read from the last canonical slice down (``descending``; the store's
writer then writes its chunk rows from the last). The file is opened at once and kept open until
the stream is finished, so a temporary local copy may be removed meanwhile (POSIX).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import nibabel as nib
import numpy as np

from storage.checks import CTValues
from storage.errors import RefusedInput, UnreadableInput
from storage.geometry import axis_map
from storage.readers.image_file import (MIN_SLICES, LabelValues, affine_geometry, check_claimed_size,
                                       check_data_offset, image_suffix, raw_header)
from storage.readers.payload import Stream, decoded_blocks
from storage.volume import Volume, reoriented_plane, stacked

_KEEP = 4  # decoded slices kept behind the newest (the resampler asks for at most two at a time)
_BLOCK = 1 << 20  # bytes decoded (or read) at a time
_SMALL_INT = (np.int8, np.uint8, np.int16)


def _plain_blocks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while block := fh.read(_BLOCK):
            yield block


class _Bytes:
    """Consecutive reads from a block iterator; a short stream is an UnreadableInput."""

    def __init__(self, blocks: Iterator[bytes], name: str) -> None:
        self.blocks, self.name = blocks, name
        self.buf, self.pos, self.total = bytearray(), 0, 0
        self.buf += self._next() or b""  # opens the file now (a temporary copy may go once it is open)

    def _next(self) -> bytes | None:
        try:
            return next(self.blocks, None)
        except OSError as exc:
            raise UnreadableInput(self.name, f"cannot read the file: {exc}") from exc

    def read(self, n: int) -> memoryview:
        while len(self.buf) - self.pos < n:
            if self.pos:
                del self.buf[:self.pos]
                self.pos = 0
            block = self._next()
            if block is None:
                raise UnreadableInput(self.name, f"compressed data decodes to {self.total + len(self.buf):,} bytes "
                                      f"but the header needs {self.total + n:,}: truncated or a corrupt header")
            self.buf += block
        view = memoryview(self.buf)[self.pos:self.pos + n]
        self.pos += n
        self.total += n
        return view

    def skip(self, n: int) -> None:
        """Pass ``n`` bytes without keeping them (a header's claimed offset may be anything)."""
        while n > len(self.buf) - self.pos:
            n -= len(self.buf) - self.pos
            self.total += len(self.buf) - self.pos
            self.buf, self.pos = bytearray(), 0
            block = self._next()
            if block is None:
                raise UnreadableInput(self.name, f"compressed data decodes to {self.total:,} bytes, fewer than the "
                                      f"header's data offset: truncated or a corrupt header")
            self.buf += block
        self.pos += n
        self.total += n

    def drain(self) -> None:
        """Decode (and so verify) the rest of the stream."""
        while self._next() is not None:
            pass


class NiftiSlices:
    """The (z, y, x) voxels of one NIfTI file, slice by slice in increasing z (see the module doc).

    ``slices[k]``: slice k (y, x), in the in-plane orientation set by :meth:`reoriented`;
    ``slices[k0:k1]``: a stack of them. Indices below the oldest kept slice raise ValueError (a
    caller reading backwards). ``np.asarray(slices)`` decodes the whole volume, before any slice.
    """

    ndim = 3

    def __init__(self, path: str, name: str, shape_zyx: tuple[int, int, int], stored: np.dtype, offset: int,
                 scale: tuple[float, float] | None, is_label: bool, allow_non_hu: bool) -> None:
        self.path, self.name, self.stored, self.scale, self.is_label = path, name, stored, scale, is_label
        self.shape = tuple(int(v) for v in shape_zyx)
        if is_label:
            self.dtype = np.dtype(np.uint8)
        elif scale is None and stored.type in _SMALL_INT:
            self.dtype = np.dtype(np.int16)
        else:
            self.dtype = np.dtype(np.float32)
        self._axes: tuple[int, int] = (0, 1)  # stored (y, x) axes -> output (y, x)
        self._flip: tuple[bool, bool] = (False, False)
        self.descending = False  # slice k is stored slice nz - 1 - k: read from the last
        self._stored_plane = self.shape[1:]
        self._plane_bytes = self.shape[1] * self.shape[2] * stored.itemsize
        gz = image_suffix(path) == ".nii.gz"
        self._bytes = _Bytes(decoded_blocks(Stream(path), _BLOCK) if gz else _plain_blocks(path), name)
        self._bytes.skip(offset)  # the header and its extensions
        self._values = LabelValues(name) if is_label else CTValues(self.shape, name, allow_non_hu)
        self._kept: dict[int, np.ndarray] = {}
        self._next = 0
        self._finished = False

    def reoriented(self, axes: tuple[int, int], flip: tuple[bool, bool, bool]) -> "NiftiSlices":
        """A view of this stream with its in-plane axes permuted (``axes``: stored axis of output y,
        x) and axes flipped (``flip``: output z, y, x; a flipped z is read from the last slice, and
        slices must then be asked for in decreasing z); only before the first slice is read. The
        view shares the decoder: read one of the two."""
        if self._next or self._axes != (0, 1) or any(self._flip) or self.descending:
            raise ValueError(f"{self.name}: reoriented twice, or after reading began")
        view = copy.copy(self)
        view.shape = (self.shape[0], self.shape[1 + axes[0]], self.shape[1 + axes[1]])
        view._axes, view._flip = tuple(axes), (bool(flip[1]), bool(flip[2]))  # type: ignore[assignment]
        view.descending = bool(flip[0])
        view._kept = {}
        return view

    @property
    def order(self) -> str:
        """The z order slices must be asked for in (a stream reads forwards)."""
        return "descending" if self.descending else "ascending"

    def _decode(self) -> np.ndarray:
        """The next stored slice, checked and converted, in the output orientation."""
        raw = np.frombuffer(self._bytes.read(self._plane_bytes), dtype=self.stored).reshape(self._stored_plane)
        if self.scale is not None:  # as ITK: integers through float32 first, then in double
            wide = raw.astype(np.float32) if self.stored.kind in "iu" else raw
            plane = (wide.astype(np.float64) * self.scale[0] + self.scale[1]).astype(np.float32)
        else:
            plane = raw.astype(raw.dtype.newbyteorder("=") if self.is_label else self.dtype)
        if self.is_label:
            self._values.add(plane)
            plane = plane.astype(np.uint8)
        else:
            self._values.add(plane, self._next)  # as stored: the subsample of the whole-file check
        self._next += 1
        return reoriented_plane(plane, self._axes, self._flip)

    def __getitem__(self, index: int | slice) -> np.ndarray:
        if isinstance(index, slice):
            return stacked(self, index, self.descending)
        k = int(index)
        if k < 0 or k >= self.shape[0]:
            raise IndexError(f"slice {k} of {self.shape[0]}")
        if k in self._kept:
            return self._kept[k]
        stored = self.shape[0] - 1 - k if self.descending else k
        if stored < self._next:
            raise ValueError(f"{self.name}: slice {k} asked for after the stream passed it (a stream reads in one "
                             "direction)")
        while self._next <= stored:
            at = self.shape[0] - 1 - self._next if self.descending else self._next
            self._kept[at] = self._decode()
            if len(self._kept) > _KEEP:
                self._kept.pop(next(iter(self._kept)))  # the oldest
        if self._next == self.shape[0]:
            self.finish()  # the last slice: verify and check before it is used
        return self._kept[k]

    def finish(self) -> None:
        """Decode the slices nobody asked for, verify the stream to its end, run the whole-volume
        checks (RefusedInput / UnreadableInput naming the file). Idempotent."""
        if self._finished:
            return
        while self._next < self.shape[0]:
            self._decode()
        self._bytes.drain()
        self._values.finish()
        self._finished = True

    def __array__(self, dtype: np.dtype | None = None, copy: bool | None = None) -> np.ndarray:
        if self._next:
            raise ValueError(f"{self.name}: the whole volume asked for after reading began")
        out = self[0:self.shape[0]]
        return out.astype(dtype) if dtype is not None else out


def itk_scaling(raw: "nib.Nifti1Header") -> tuple[float, float] | None:
    """(slope, intercept) as SimpleITK's NIfTI reader applies the stored header's scl_slope /
    scl_inter (``raw``: :func:`~storage.readers.image_file.raw_header`), None when it does not
    rescale. Measured against SimpleITK 2.5.7: a non-finite or (near) zero slope counts as 1 with
    the intercept kept; a non-finite intercept counts as 0."""
    slope, inter = float(raw["scl_slope"]), float(raw["scl_inter"])
    if not np.isfinite(slope) or abs(slope) < np.finfo(np.float64).eps:
        slope = 1.0
    if not np.isfinite(inter):
        inter = 0.0
    return None if (slope == 1.0 and inter == 0.0) else (slope, inter)


def open_slices(path: str, is_label: bool, name: str | None = None,
                allow_non_hu: bool = False) -> Volume | None:
    """A Volume of ``path`` whose array is a :class:`NiftiSlices` stream, or None when the file is
    not one to stream (see the module doc: read it whole). ``name``: the file as errors name it."""
    name = name or path
    if image_suffix(path) not in (".nii", ".nii.gz"):
        return None
    try:
        nii = nib.load(path)
    except Exception:  # noqa: BLE001 - the whole-file reader reports it with its reason
        return None
    if not isinstance(nii, (nib.Nifti1Image, nib.Nifti2Image)) or len(nii.shape) != 3:
        return None
    stored = nii.header.get_data_dtype()
    nx, ny, nz = (int(v) for v in nii.shape)
    if stored.kind not in "iuf" or stored.itemsize > 8:
        return None
    try:
        spacing, origin, direction = affine_geometry(nii, path)
    except RefusedInput as exc:
        raise RefusedInput(name, exc.reason) from exc
    mapping = axis_map(direction)
    if mapping is None or mapping[0][2] != 2:  # oblique, or the canonical z is not the stored k
        return None
    try:
        check_claimed_size(path, (nx, ny, nz), stored.itemsize)
        check_data_offset(nii, path)
        scale = itk_scaling(raw_header(nii, path))
    except RefusedInput as exc:
        raise RefusedInput(name, exc.reason) from exc
    if nz < MIN_SLICES and not is_label:
        raise RefusedInput(name, f"{nz} slice(s): a volume needs at least {MIN_SLICES}")
    slices = NiftiSlices(path, name, (nz, ny, nx), stored, int(nii.dataobj.offset), scale, is_label,
                         allow_non_hu)
    return Volume(slices, spacing, origin, direction)  # type: ignore[arg-type]
