"""Canonical geometry of CT volumes: reorientation, resampling, spacing statistics, HU casting.

Canonical orientation is SimpleITK's ``"LPS"`` (direction as close to identity as the data
allows): array axes (z, y, x) with +x towards patient left, +y posterior, +z superior.
Reorientation is a pure axis permutation / flip, so it is exact for images and labels alike.

Speed (both paths are numerically those of SimpleITK, see the tests in tests/readers):
- :func:`canonicalize` permutes / flips with numpy views when every direction column has one
  dominant component (|cosine| > 0.9; the orientation code is then unambiguous); other
  directions go through ``sitk.DICOMOrient``. An already canonical volume is returned as is.
- :func:`resample` keeps origin and direction, so the output -> input index map is diagonal
  and trilinear interpolation is separable: it runs as 1D linear passes per axis (in-plane per
  slice, then along z per output slice), in float32, with the nearest-voxel extrapolation of
  ``sitk.ResampleImageFilter`` (coordinates clamped to the first / last voxel centre). It
  matches SimpleITK linear to float32 rounding (within 1 HU after rounding) and nearest
  neighbour exactly, except at exact half-voxel ties, which round up here (ITK's choice there
  depends on floating-point error). An axis whose spacing already matches the target (within
  ``SPACING_MATCH_RTOL`` relative, same size) is not interpolated and keeps its own spacing.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import SimpleITK as sitk

from storage.errors import RefusedInput
from storage.volume import PlaneSource, Volume

CANONICAL_ORIENTATION = "LPS"
SPACING_MATCH_RTOL = 1e-3
_DOMINANT_COSINE = 0.9
_INT16_MIN, _INT16_MAX = np.iinfo(np.int16).min, np.iinfo(np.int16).max


def axis_map(direction: tuple[float, ...]) -> tuple[list[int], list[bool]] | None:
    """For each LPS axis k: the ITK index axis pointing along it and whether it runs backwards.

    None when a direction column has no dominant component (oblique: left to DICOMOrient).
    """
    d = np.asarray(direction, dtype=np.float64).reshape(3, 3)
    src = [int(np.argmax(np.abs(d[k]))) for k in range(3)]
    if sorted(src) != [0, 1, 2] or any(abs(d[k, src[k]]) <= _DOMINANT_COSINE for k in range(3)):
        return None
    return src, [bool(d[k, src[k]] < 0) for k in range(3)]


def canonicalize(vol: Volume, is_label: bool = False) -> Volume:
    """Reorient ``vol`` to LPS by permuting / flipping axes (no interpolation, dtype kept).

    Every voxel keeps its physical position: origin and direction are updated with the data.
    ``is_label`` is accepted for symmetry with :func:`resample`; the operation is the same.
    The returned array may be a (non-contiguous) view of ``vol.array``.
    """
    del is_label  # exact for any content
    mapping = axis_map(vol.direction)
    if mapping is None:
        img = sitk.DICOMOrient(vol.to_sitk(), CANONICAL_ORIENTATION)
        return Volume.from_sitk(img, meta=vol.meta)
    src, flip = mapping
    d = np.asarray(vol.direction, dtype=np.float64).reshape(3, 3)
    size_xyz = vol.array.shape[::-1]
    origin = np.asarray(vol.origin_mm, dtype=np.float64)
    for k in range(3):
        if flip[k]:
            origin = origin + d[:, src[k]] * (vol.spacing_mm[src[k]] * (size_xyz[src[k]] - 1))
    # numpy axis a holds ITK axis 2 - a
    arr = _reoriented(vol.array, [2 - src[2 - a] for a in range(3)], tuple(a for a in range(3) if flip[2 - a]))
    direction = np.stack([d[:, src[k]] * (-1.0 if flip[k] else 1.0) for k in range(3)], axis=1)
    return Volume(arr, tuple(vol.spacing_mm[s] for s in src), tuple(origin), tuple(direction.reshape(-1)),
                  meta=vol.meta)


def _reoriented(array: "np.ndarray | PlaneSource", axes: list[int], flips: tuple[int, ...]) -> "np.ndarray | PlaneSource":
    """``array`` with its axes permuted (``axes``, as np.transpose) then ``flips`` flipped: numpy
    views, or a plane source's own in-plane reorientation (its z axis must stay first, forwards)."""
    if isinstance(array, np.ndarray):
        arr = np.transpose(array, axes)
        return np.flip(arr, axis=flips) if flips else arr
    if axes[0] != 0:
        raise ValueError("a volume read slice by slice can only be reoriented within its slices, or flipped")
    return array.reoriented((axes[1] - 1, axes[2] - 1), (0 in flips, 1 in flips, 2 in flips))


def _resampled_size(vol: Volume, spacing_mm: tuple[float, float, float]) -> list[int]:
    size_xyz = vol.array.shape[::-1]
    return [max(1, int(round(n * s / t))) for n, s, t in zip(size_xyz, vol.spacing_mm, spacing_mm)]


def _output_grid(vol: Volume, spacing_mm: tuple[float, float, float]) -> tuple[list[int], list[float]]:
    """Output size and spacing (x, y, z); an axis already at the target spacing is kept as is."""
    size, spacing = _resampled_size(vol, spacing_mm), [float(t) for t in spacing_mm]
    for k, (n, s, t) in enumerate(zip(vol.array.shape[::-1], vol.spacing_mm, spacing_mm)):
        if abs(s - t) <= SPACING_MATCH_RTOL * t and size[k] == n:
            spacing[k] = float(s)
    return size, spacing


def _source_coords(n_in: int, n_out: int, s_in: float, s_out: float) -> np.ndarray:
    """Continuous input index of each output voxel along one axis (not clamped)."""
    if s_in == s_out and n_in == n_out:
        return np.arange(n_out, dtype=np.float64)
    return np.arange(n_out, dtype=np.float64) * s_out / s_in


class _Axis:
    """1D resampling along one axis: linear (two neighbours and a weight) or nearest."""

    def __init__(self, raw: np.ndarray, n_in: int, nearest: bool) -> None:
        self.identity = raw.size == n_in and bool(np.array_equal(raw, np.arange(n_in)))
        # ITK's buffer ends half a voxel past the last centre; beyond it the whole point is
        # extrapolated by nearest neighbour (on every axis), inside it neighbours are clamped.
        self.outside = np.flatnonzero(raw >= n_in - 0.5)
        coords = np.clip(raw, 0.0, n_in - 1)
        self.nearest = np.floor(coords + 0.5).astype(np.intp)
        if nearest:
            self.lo = self.hi = self.nearest
            self.weight = None
        else:
            self.lo = np.floor(coords).astype(np.intp)
            self.weight = (coords - self.lo).astype(np.float32)
            self.hi = np.where(self.weight > 0, self.lo + 1, self.lo)
        self.interpolates = self.weight is not None and bool(np.any(self.weight))

    def apply(self, a: np.ndarray, axis: int) -> np.ndarray:
        lo = np.take(a, self.lo, axis=axis)
        if not self.interpolates:
            return lo
        hi = np.take(a, self.hi, axis=axis)
        shape = [1] * a.ndim
        shape[axis] = -1
        hi -= lo
        hi *= self.weight.reshape(shape)
        hi += lo
        return hi


class _Planes:
    """Input slices on demand, read in one direction: as stored (:meth:`raw`) and resampled in
    plane (``planes(i)``); the two most recent of each are kept (a z pass needs two, the
    nearest-voxel extrapolation one of those). ``src[i]`` is the only access to the input, so it
    may be a stream that decodes slices as they are asked for."""

    def __init__(self, src: "np.ndarray | PlaneSource", ay: _Axis, ax: _Axis, nearest: bool) -> None:
        self.src, self.ay, self.ax, self.nearest = src, ay, ax, nearest
        self.cache: dict[int, np.ndarray] = {}
        self.raw_cache: dict[int, np.ndarray] = {}

    @staticmethod
    def _keep(cache: dict[int, np.ndarray], i: int, make: Callable[[], np.ndarray]) -> np.ndarray:
        if i not in cache:
            if len(cache) >= 2:
                cache.pop(next(iter(cache)))  # the oldest
            cache[i] = make()
        return cache[i]

    def raw(self, i: int) -> np.ndarray:
        return self._keep(self.raw_cache, i, lambda: self.src[i])

    def __call__(self, i: int) -> np.ndarray:
        def make() -> np.ndarray:
            sl = self.raw(i) if self.nearest else self.raw(i).astype(np.float32)
            sl = sl if self.ay.identity else self.ay.apply(sl, 0)
            return sl if self.ax.identity else self.ax.apply(sl, 1)
        return self._keep(self.cache, i, make)


class _Edges:
    """Nearest-voxel extrapolation (ITK's, see :class:`_Axis`) of one output slice: the voxels past
    the input buffer on any axis take their nearest input voxel, from that slice's nearest input
    slice (one of the two its z pass used)."""

    def __init__(self, axes: list[_Axis], finish: Callable[[np.ndarray], np.ndarray]) -> None:
        self.az, self.ay, self.ax = axes
        self.finish = finish
        self.z_outside = set(self.az.outside.tolist())

    def apply(self, planes: _Planes, k: int, row: np.ndarray) -> None:
        """Overwrite the extrapolated voxels of output slice ``k`` (``row``: (y, x))."""
        ay, ax = self.ay, self.ax
        if k not in self.z_outside and not ay.outside.size and not ax.outside.size:
            return
        raw = planes.raw(int(self.az.nearest[k]))
        if k in self.z_outside:  # the whole slice lies past the last input slice
            row[...] = self.finish(raw[np.ix_(ay.nearest, ax.nearest)].astype(np.float32))
            return
        if ay.outside.size:
            row[ay.outside, :] = self.finish(raw[np.ix_(ay.nearest[ay.outside], ax.nearest)].astype(np.float32))
        if ax.outside.size:
            row[:, ax.outside] = self.finish(raw[np.ix_(ay.nearest, ax.nearest[ax.outside])].astype(np.float32))


def _separable(planes: _Planes, az: _Axis, store: "_Store", out: np.ndarray,
               z0: int = 0, edges: _Edges | None = None, descending: bool = False) -> np.ndarray:
    """Output slices ``z0 .. z0 + len(out)`` of the resampled volume into ``out`` (z, y, x).

    In-plane passes run per input slice (``planes``), the z pass ``az`` per output slice, then the
    slice's ``edges`` (extrapolated voxels), so the working memory beyond the output is a few
    slices and the input is read once, in increasing z (``descending``: decreasing).
    """
    for j in (range(out.shape[0] - 1, -1, -1) if descending else range(out.shape[0])):
        k = z0 + j
        interpolated = az.weight is not None and az.weight[k] != 0
        if interpolated and descending:
            planes(int(az.hi[k]))  # the upper neighbour is read first
        lo = planes(int(az.lo[k]))
        if not interpolated:
            store(lo, out[j], False)
        else:
            mixed = planes(int(az.hi[k])) - lo
            mixed *= az.weight[k]
            mixed += lo
            store(mixed, out[j], True)
        if edges is not None:
            edges.apply(planes, k, out[j])
    return out


_Store = Callable[[np.ndarray, np.ndarray, bool], None]
"""``store(values, row, temporary)``: one output slice's float32 (labels: stored) ``values`` into
the output ``row``; ``temporary``: ``values`` may be overwritten (else it is a cached plane)."""


def _store_as_is(values: np.ndarray, row: np.ndarray, temporary: bool) -> None:
    row[...] = values


def _store_rounded(values: np.ndarray, row: np.ndarray, temporary: bool) -> None:
    row[...] = _round_int16(values if temporary else values.copy())


def _store_rounded_in_range(values: np.ndarray, row: np.ndarray, temporary: bool) -> None:
    """Values interpolated from an input within int16 (convex combinations: still within it):
    rounded straight into the int16 row, no clipping (the same voxels as :func:`_store_rounded`)."""
    np.rint(values, out=row, casting="unsafe")


def _round_int16(a: np.ndarray) -> np.ndarray:
    np.rint(a, out=a)
    return np.clip(a, _INT16_MIN, _INT16_MAX, out=a)


class Resampled:
    """A volume resampled on demand, one z range at a time: ``slab(z0, z1)`` computes output slices
    ``[z0, z1)`` (z, y, x), exactly the voxels :func:`resample` gives (same arithmetic per voxel), so a
    writer can stream the output without holding all of it. ``shape``, ``dtype``, ``spacing_mm``
    (x, y, z) describe the output; ``identity``: no interpolation (slabs are views of the input).
    Slabs are cheapest in increasing z order (the two last input planes are kept); from a
    :class:`~storage.volume.PlaneSource` (``order``: "ascending" or "descending", the direction it
    reads, or "any"; "any" for an array) they must come in that order, and :meth:`finish` after the
    last."""

    def __init__(self, vol: Volume, spacing_mm: tuple[float, float, float], is_label: bool = False,
                 to_int16: bool = False) -> None:
        if any(float(s) <= 0 for s in spacing_mm):
            raise ValueError(f"target spacing must be positive, got {spacing_mm}")
        size_xyz, out_spacing = _output_grid(vol, spacing_mm)
        shape_in = vol.array.shape
        self.axes = [_Axis(_source_coords(shape_in[a], size_xyz[2 - a], vol.spacing_mm[2 - a],
                                          out_spacing[2 - a]), shape_in[a], is_label) for a in range(3)]
        # store: how _separable writes an output slice; finish: how _Edges turns extrapolated values
        store: _Store = _store_as_is
        finish: Callable[[np.ndarray], np.ndarray] = lambda a: a
        if is_label:
            dtype = vol.array.dtype
        elif np.issubdtype(vol.array.dtype, np.integer):
            dtype, finish = np.dtype(np.int16), _round_int16
            store = _store_rounded_in_range if np.can_cast(vol.array.dtype, np.int16) else _store_rounded
        else:
            dtype = np.dtype(np.float32)
        self.vol, self.is_label, self.store = vol, is_label, store
        self.identity = all(ax.identity for ax in self.axes) and vol.array.dtype == dtype
        self.resampled_dtype = np.dtype(dtype)
        self.to_int16 = to_int16 and not is_label and self.resampled_dtype != np.int16
        self.dtype = np.dtype(np.int16) if self.to_int16 else self.resampled_dtype
        self.shape = tuple(size_xyz[::-1]) if not self.identity else tuple(shape_in)
        self.spacing_mm = tuple(out_spacing)
        self._planes = _Planes(vol.array, self.axes[1], self.axes[2], is_label)
        streamed = not isinstance(vol.array, np.ndarray)
        self.order = vol.array.order if streamed else "any"
        self._edges = None if is_label else _Edges(self.axes, finish)

    def finish(self) -> None:
        """After the last slab: a streamed input reads to its end, verifies and runs its
        whole-volume checks (raising like a reader); nothing for an array."""
        if not isinstance(self.vol.array, np.ndarray):
            self.vol.array.finish()

    def volume(self, array: np.ndarray) -> Volume:
        """A Volume of the output geometry holding ``array``."""
        return Volume(array, self.spacing_mm, self.vol.origin_mm, self.vol.direction, meta=self.vol.meta)

    def slab(self, z0: int, z1: int) -> np.ndarray:
        """Output slices ``[z0, z1)``: a view of the input when nothing is interpolated, else new."""
        if self.identity:
            out = self.vol.array[z0:z1]
        else:
            out = np.empty((z1 - z0, *self.shape[1:]), dtype=self.resampled_dtype)
            _separable(self._planes, self.axes[0], self.store, out, z0, self._edges, self.order == "descending")
        return _int16_of(out) if self.to_int16 else out


def resample(vol: Volume, spacing_mm: tuple[float, float, float], is_label: bool = False) -> Volume:
    """Resample ``vol`` to ``spacing_mm`` (x, y, z) over the same physical extent.

    The output keeps origin (centre of the first voxel) and direction; its size is
    ``round(size * spacing / spacing_mm)`` per axis. Labels use nearest neighbour and keep their
    dtype. Images use linear interpolation in float32; an integer input (e.g. int16 HU) is
    rounded back to int16 here (:func:`to_int16_hu`), a float input stays float32. Points past
    the last input voxel centre take the nearest voxel's value (no padding value is invented).
    An axis whose spacing already matches (see module doc) is copied, keeping its spacing.
    :class:`Resampled` gives the same output a z range at a time.
    """
    res = Resampled(vol, spacing_mm, is_label)
    return res.volume(vol.array if res.identity else res.slab(0, res.shape[0]))


def median_spacing(spacings: list[tuple[float, float, float]]) -> tuple[float, float, float]:
    """Per-axis median of (x, y, z) spacings in mm (the nnU-Net style default target)."""
    if not spacings:
        raise ValueError("median_spacing needs at least one spacing")
    med = np.median(np.asarray(spacings, dtype=np.float64), axis=0)
    return (float(med[0]), float(med[1]), float(med[2]))


def _int16_of(array: np.ndarray) -> np.ndarray:
    if array.dtype == np.int16:
        return array
    return np.clip(np.rint(array), _INT16_MIN, _INT16_MAX).astype(np.int16)


def to_int16_hu(vol: Volume) -> Volume:
    """Round to the nearest integer and clip to the int16 range; geometry and meta kept."""
    if vol.array.dtype == np.int16:
        return vol
    return Volume(_int16_of(vol.array), vol.spacing_mm, vol.origin_mm, vol.direction, dict(vol.meta))


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
