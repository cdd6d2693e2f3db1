"""Single-file volumes (NIfTI, NRRD, MetaImage) and the value checks every CT must pass.

Pixels are read with SimpleITK (NIfTI scl_slope / scl_inter applied by it); compressed payloads
are then verified to the end of their stream (``storage.readers.payload``). NIfTI geometry
follows the standard, which ITK does not always do: the sform when ``sform_code > 0``, else the
qform (nibabel's best affine), converted from RAS to ITK's LPS; when the qform (or the bare
pixdim) gives the geometry, a zero, negative or NaN pixdim is refused (nibabel would silently make
it 1 mm). Sheared affines, 4D images, multi-component images and non-finite values are refused
with the reason.
"""

from __future__ import annotations

import os

from pathlib import Path

import nibabel as nib
import numpy as np
import SimpleITK as sitk

from storage.checks import check_voxel_size
from storage.errors import RefusedInput, UnreadableInput
from storage.readers.payload import verify_decoded, verify_nifti
from storage.volume import Volume

IMAGE_SUFFIXES: dict[str, str] = {
    ".nii.gz": "nifti", ".nii": "nifti", ".nrrd": "nrrd", ".nhdr": "nrrd", ".mha": "metaimage", ".mhd": "metaimage",
}
MIN_SLICES = 3


def image_suffix(name: str) -> str | None:
    """The recognised volume suffix of a file name (``.nii.gz`` before ``.nii``), else None."""
    low = name.lower()
    return next((s for s in IMAGE_SUFFIXES if low.endswith(s)), None)


def file_stem(name: str) -> str:
    """File name without its volume suffix: ``liver_3.nii.gz`` -> ``liver_3``."""
    base = Path(name).name
    suffix = image_suffix(base)
    return base[: -len(suffix)] if suffix else Path(base).stem


def raw_header(nii: "nib.Nifti1Image", path: str) -> "nib.Nifti1Header":
    """The header as the file stores it (nibabel's loaded header has scl_slope / scl_inter moved into
    its data proxy, and zero or negative pixdims made positive)."""
    with nib.openers.ImageOpener(path) as fh:
        return type(nii.header).from_fileobj(fh, check=False)


def _check_pixdim(nii: "nib.Nifti1Image", path: str) -> None:
    """Refuse a zero, negative or NaN pixdim[1..3] when it gives the voxel size (no sform)."""
    if int(nii.header["sform_code"]) != 0:
        return
    raw = raw_header(nii, path)
    for axis, value in zip("xyz", np.asarray(raw["pixdim"][1:4], dtype=np.float64)):
        if not value > 0:
            raise RefusedInput(path, f"NIfTI pixdim of axis {axis} is {value:g}: no voxel size (the qform needs "
                               "pixdim[1..3] > 0)")


def check_data_offset(nii: "nib.Nifti1Image", path: str) -> None:
    """Refuse a single-file NIfTI whose vox_offset points into its own header: its voxels would be
    read shifted by the header's bytes (ITK and nibabel each shift them differently)."""
    if image_suffix(path) not in (".nii", ".nii.gz"):
        return
    header_bytes = int(type(nii.header).sizeof_hdr) + 4  # the header and its extension flag
    offset = int(nii.dataobj.offset)
    if offset < header_bytes:
        raise RefusedInput(path, f"NIfTI vox_offset {offset} lies inside the {header_bytes}-byte header: a corrupt "
                           "header")


def affine_geometry(nii: "nib.Nifti1Image", path: str) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """(spacing_xyz, origin_lps, direction_rowmajor) from the standard's best affine (header only)."""
    _check_pixdim(nii, path)
    affine = np.asarray(nii.affine, dtype=np.float64)
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3, :]
    cols = lps[:, :3]
    spacing = np.linalg.norm(cols, axis=0)
    if np.any(spacing <= 0):
        raise RefusedInput(path, f"degenerate NIfTI affine (zero voxel size): {affine[:3].tolist()}")
    direction = cols / spacing
    gram = direction.T @ direction
    if np.max(np.abs(gram - np.eye(3))) > 1e-4:
        raise RefusedInput(path, "sheared NIfTI affine (voxel axes not orthogonal)")
    return tuple(spacing), tuple(lps[:, 3]), tuple(direction.reshape(-1))


def _nifti_geometry(path: str) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Geometry from the standard's best affine (see :func:`affine_geometry`).

    Also refuses non-finite float data: ITK's NIfTI reader silently turns NaN into 0, so
    float files are checked on nibabel's view of the stored values.
    """
    nii = nib.load(path)
    check_data_offset(nii, path)
    if np.issubdtype(nii.get_data_dtype(), np.floating):
        if not np.isfinite(np.asanyarray(nii.dataobj).sum(dtype=np.float64)):
            raise RefusedInput(path, "image contains NaN or infinite values")
    return affine_geometry(nii, path)


def image_geometry(path: str) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """Header-only (spacing_xyz, origin_lps, direction_rowmajor) of a local volume file, exactly as
    :func:`read_image_file` will report it (NIfTI from its affine, others from ITK)."""
    if image_suffix(path) in (".nii", ".nii.gz"):
        try:
            return affine_geometry(nib.load(path), path)
        except RefusedInput:
            raise
        except Exception as exc:  # nibabel raises many types on corrupt headers
            raise UnreadableInput(path, f"cannot read NIfTI header: {type(exc).__name__}: {exc}") from exc
    reader = _header_reader(path)
    dim = reader.GetDimension()
    if dim < 3:
        raise RefusedInput(path, f"{dim}D image: one 3D volume per case expected")
    direction = np.asarray(reader.GetDirection(), dtype=np.float64).reshape(dim, dim)[:3, :3]
    return tuple(reader.GetSpacing()[:3]), tuple(reader.GetOrigin()[:3]), tuple(direction.reshape(-1))


def _header_reader(path: str) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise UnreadableInput(path, f"cannot read image header: {str(exc).strip().splitlines()[-1]}") from exc
    return reader


# Deflate (gzip / zlib) cannot compress by more than ~1032:1, so a compressed file whose header
# claims more voxels than that allows is lying, whatever its content.
DEFLATE_MAX_RATIO = 1032
DETACHED_SUFFIXES = (".mhd", ".nhdr")  # header files whose pixels live in another file


def max_voxels() -> int:
    """Largest volume read, in voxels (env ``PGL_MAX_VOXELS``; default 2**31, e.g. 2048x1024x1024)."""
    return int(os.environ.get("PGL_MAX_VOXELS", str(2**31)))


def check_claimed_size(path: str, shape: tuple[int, ...], bytes_per_voxel: int) -> None:
    """Refuse a header whose claimed size the file cannot hold, or beyond :func:`max_voxels`,
    before any pixel memory is allocated."""
    n = int(np.prod([int(v) for v in shape], dtype=np.int64))
    if n > max_voxels():
        raise RefusedInput(path, f"header claims {'x'.join(map(str, shape))} = {n:,} voxels, more than the limit "
                           f"{max_voxels():,} (PGL_MAX_VOXELS)")
    name = path.lower()
    if name.endswith(DETACHED_SUFFIXES) or not os.path.isfile(path):
        return
    size, need = os.path.getsize(path), n * int(bytes_per_voxel)
    if name.endswith(".nii") and size < need:
        raise RefusedInput(path, f"header claims {'x'.join(map(str, shape))} voxels ({need:,} bytes) but the file "
                           f"holds {size:,} bytes: truncated or a corrupt header")
    if need > DEFLATE_MAX_RATIO * size + 4096:
        raise RefusedInput(path, f"header claims {'x'.join(map(str, shape))} voxels ({need:,} bytes), more than "
                           f"a {size:,}-byte file can hold even compressed: a corrupt header")


def _bytes_per_voxel(reader: sitk.ImageFileReader, path: str) -> int:
    """Stored bytes per voxel: NIfTI's on-disk type (ITK reports the rescaled output type), else ITK's."""
    if image_suffix(path) in (".nii", ".nii.gz"):
        try:
            return int(nib.load(path).header.get_data_dtype().itemsize)
        except Exception:  # noqa: BLE001 - nibabel cannot parse it: fall back to ITK's type
            pass
    return sitk.Image([1, 1, 1], reader.GetPixelID()).GetSizeOfPixelComponent() * reader.GetNumberOfComponents()


def _read_sitk(path: str) -> sitk.Image:
    reader = _header_reader(path)
    size = reader.GetSize()
    if reader.GetDimension() != 3:
        raise RefusedInput(path, f"{reader.GetDimension()}D image of size {size}: one 3D volume per case expected")
    if reader.GetNumberOfComponents() != 1:
        raise RefusedInput(path, f"{reader.GetNumberOfComponents()} components per voxel: a scalar CT expected")
    check_claimed_size(path, tuple(size), _bytes_per_voxel(reader, path))
    if image_suffix(path) not in (".nii", ".nii.gz"):  # zero or NaN: ITK would fail with a vaguer message
        check_voxel_size([abs(v) for v in reader.GetSpacing()], path)  # (negative: ITK reads a flip)
    try:
        return reader.Execute()
    except RuntimeError as exc:
        raise UnreadableInput(path, f"cannot read image data: {str(exc).strip().splitlines()[-1]}") from exc


def _compact_dtype(array: np.ndarray) -> np.ndarray:
    """int16 when the values are integers that fit, else float32."""
    if np.issubdtype(array.dtype, np.integer):
        if array.size == 0 or (array.min() >= -32768 and array.max() <= 32767):
            return array.astype(np.int16, copy=False)
        return array.astype(np.float32)
    return array.astype(np.float32, copy=False)


def _read_nibabel(path: str) -> np.ndarray:
    """(z, y, x) scaled data of a NIfTI file ITK cannot open (e.g. NIfTI-2)."""
    try:
        nii = nib.load(path)
    except Exception as exc:  # nibabel raises several types on corrupt headers
        raise UnreadableInput(path, f"cannot read NIfTI header: {exc}") from exc
    if len(nii.shape) != 3:
        raise RefusedInput(path, f"{len(nii.shape)}D image of size {nii.shape}: one 3D volume per case expected")
    check_claimed_size(path, tuple(nii.shape), nii.header.get_data_dtype().itemsize)
    data = np.asanyarray(nii.dataobj)
    return np.ascontiguousarray(data.transpose(2, 1, 0))


def _read_pixels(path: str) -> tuple[np.ndarray, tuple | None]:
    """(z, y, x) array and ITK geometry (None for NIfTI, whose geometry comes from its affine); a
    compressed payload is verified (see ``storage.readers.payload``)."""
    nifti = image_suffix(path) in (".nii", ".nii.gz")
    try:
        img = _read_sitk(path)
    except UnreadableInput:
        if not nifti:
            raise
        verify_nifti(path, decoder_checked_crc=False)
        return _read_nibabel(path), None
    array = sitk.GetArrayFromImage(img)
    if nifti:
        verify_nifti(path, decoder_checked_crc=True)
        return array, None
    verify_decoded(path, array)
    return array, (img.GetSpacing(), img.GetOrigin(), img.GetDirection())


def read_image_file(path: str, is_label: bool = False) -> Volume:
    """Read one local volume file -> Volume (image: int16 or float32; label: uint8)."""
    array, geometry = _read_pixels(path)
    if geometry is None:
        geometry = _nifti_geometry(path)
    if array.shape[0] < MIN_SLICES and not is_label:
        raise RefusedInput(path, f"{array.shape[0]} slice(s): a volume needs at least {MIN_SLICES}")
    array = _label_values(array, path) if is_label else _compact_dtype(array)
    return Volume(array, geometry[0], geometry[1], geometry[2])


class LabelValues:
    """What a label map must satisfy (finite, integral values in 0..255), over the whole array or a
    slice at a time (:meth:`add`); :meth:`finish` refuses, naming ``path``."""

    def __init__(self, path: str) -> None:
        self.path, self.finite, self.integral = path, True, True
        self.lo = self.hi = None

    def add(self, values: np.ndarray) -> None:
        if np.issubdtype(values.dtype, np.floating):
            self.finite = self.finite and bool(np.isfinite(values.sum(dtype=np.float64)))
            self.integral = self.integral and bool(np.array_equal(values, np.rint(values)))
        if values.size:
            lo, hi = values.min(), values.max()
            self.lo = lo if self.lo is None else min(self.lo, lo)
            self.hi = hi if self.hi is None else max(self.hi, hi)

    def finish(self) -> None:
        if not self.finite:
            raise RefusedInput(self.path, "label map contains NaN or infinite values")
        if not self.integral:
            raise RefusedInput(self.path, "label map has non-integer values")
        lo, hi = (self.lo, self.hi) if self.lo is not None else (0, 0)
        if lo < 0 or hi > 255:
            raise RefusedInput(self.path, f"label values {lo}..{hi} outside 0..255")


def _label_values(array: np.ndarray, path: str) -> np.ndarray:
    checks = LabelValues(path)
    checks.add(array)
    checks.finish()
    return array.astype(np.uint8, copy=False)
