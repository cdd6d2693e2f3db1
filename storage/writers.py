"""Writing volumes out of the pipeline: a label map onto another image's grid, and to a file URI.

- :func:`resample_to_reference`: nearest-neighbour (labels) or linear resampling of a volume onto
  exactly the grid of ``reference`` (its size, spacing, origin and direction), through physical
  space with SimpleITK; points past the source's edge take the nearest source voxel.
- :func:`write_volume`: a Volume to a NIfTI (``.nii`` / ``.nii.gz``), NRRD (``.nrrd``) or
  MetaImage (``.mha``) file at a local path or any fsspec URI (``s3://...``). The file is written
  to a temporary local file first, then moved (locally, atomically) or uploaded in one PUT.
  Formats with a detached data file (``.mhd``, ``.nhdr``) are refused.
"""

from __future__ import annotations

import os
import tempfile

import SimpleITK as sitk

from storage import blobs
from storage.errors import RefusedInput
from storage.readers.image_file import image_suffix
from storage.uri import is_local, local_path
from storage.volume import Volume

WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha")


def resample_to_reference(volume: Volume, reference: Volume, is_label: bool = True) -> Volume:
    """``volume`` resampled onto ``reference``'s grid; dtype kept. Labels: nearest neighbour."""
    interp = sitk.sitkNearestNeighbor if is_label else sitk.sitkLinear
    src = volume.to_sitk()
    ref = sitk.Image(list(reference.array.shape[::-1]), src.GetPixelID())
    ref.SetSpacing(reference.spacing_mm)
    ref.SetOrigin(reference.origin_mm)
    ref.SetDirection(reference.direction)
    out = sitk.Resample(src, ref, sitk.Transform(), interp, 0, src.GetPixelID(), True)
    return Volume(sitk.GetArrayFromImage(out), reference.spacing_mm, reference.origin_mm, reference.direction,
                  meta=dict(volume.meta))


def _suffix(uri: str) -> str:
    suffix = image_suffix(uri.rstrip("/").rsplit("/", 1)[-1])
    if suffix not in WRITABLE_SUFFIXES:
        raise RefusedInput(uri, f"cannot write a volume here: the name must end with one of {WRITABLE_SUFFIXES}")
    return suffix  # type: ignore[return-value]


def write_volume(volume: Volume, uri: str, storage_options: dict | None = None, compress: bool = True) -> str:
    """Write ``volume`` (array (z, y, x), ITK geometry) as the file ``uri``; returns ``uri``."""
    suffix = _suffix(uri)
    image = volume.to_sitk()
    if is_local(uri):
        path = local_path(uri)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", suffix=suffix, dir=folder)
        os.close(fd)
        try:
            sitk.WriteImage(image, tmp, compress)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return uri
    with tempfile.TemporaryDirectory(prefix="pgl-write-") as tmp_dir:
        tmp = os.path.join(tmp_dir, "volume" + suffix)
        sitk.WriteImage(image, tmp, compress)
        with open(tmp, "rb") as fh:
            blobs.put_bytes_atomic(uri, fh.read(), storage_options)
    return uri
