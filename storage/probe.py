"""Header-only spacing probes, used to choose a dataset's target spacing (the median) cheaply."""

from __future__ import annotations

import os
import tempfile

import fsspec
import numpy as np
import pydicom

from storage.errors import UnreadableInput
from storage.readers import CaseSource
from storage.readers.image_file import image_geometry, image_suffix
from storage.uri import is_local, local_path


def canonical_spacing(spacing_xyz, direction: np.ndarray) -> tuple[float, float, float]:
    """Spacing permuted to the canonical (LPS-closest) axis order: image axis j whose direction column
    points most along patient axis i gives the canonical spacing of axis i."""
    out = [0.0, 0.0, 0.0]
    for j in range(3):
        i = int(np.argmax(np.abs(direction[:, j])))
        out[i] = float(spacing_xyz[j])
    if 0.0 in out:  # degenerate (45-degree) directions: keep the stored order
        return tuple(float(s) for s in spacing_xyz)  # type: ignore[return-value]
    return tuple(out)  # type: ignore[return-value]


HEADER_BYTES = 1 << 16  # every header this project reads fits (NIfTI 348/540 bytes + extensions, NRRD/MHA text)


def _probe_image_file(uri: str, storage_options: dict | None = None) -> tuple[float, float, float]:
    """Spacing from the header; a remote file's first bytes (decompressed) are fetched, never the
    whole volume, and read as a local header-only file of the same kind."""
    if is_local(uri):
        spacing, _, direction = image_geometry(local_path(uri))
    else:
        suffix = image_suffix(uri) or ""
        compression = "gzip" if suffix == ".nii.gz" else None
        with fsspec.open(uri, "rb", compression=compression, **(storage_options or {})) as fh:
            head = fh.read(HEADER_BYTES)
        with tempfile.TemporaryDirectory(prefix="pgl-probe-") as tmp:
            path = os.path.join(tmp, "header" + (".nii" if compression else suffix))
            with open(path, "wb") as out:
                out.write(head)
            try:
                spacing, _, direction = image_geometry(path)
            except UnreadableInput as exc:
                raise UnreadableInput(uri, exc.reason) from None
    return canonical_spacing(spacing, np.asarray(direction, dtype=np.float64).reshape(3, 3))


def _probe_dicom(uris: tuple[str, ...], storage_options: dict | None) -> tuple[float, float, float]:
    positions: list[float] = []
    pixel_spacing = None
    for uri in uris:
        with fsspec.open(uri, "rb", **(storage_options or {})) as fh:
            ds = pydicom.dcmread(fh, stop_before_pixels=True, force=True)
        iop = getattr(ds, "ImageOrientationPatient", None)
        ipp = getattr(ds, "ImagePositionPatient", None)
        if pixel_spacing is None and getattr(ds, "PixelSpacing", None) is not None:
            pixel_spacing = [float(v) for v in ds.PixelSpacing]
        if iop is not None and ipp is not None:
            normal = np.cross(np.array(iop[:3], float), np.array(iop[3:], float))
            positions.append(float(np.dot(normal, np.array(ipp, float))))
    if pixel_spacing is None or len(positions) < 2:
        raise UnreadableInput(uris[0], "DICOM series lacks PixelSpacing or slice positions")
    dz = float(np.median(np.diff(np.sort(positions))))
    row, col = np.array(iop[:3], float), np.array(iop[3:], float)
    direction = np.stack([row, col, np.cross(row, col)], axis=1)  # columns: image x, y, z axes
    # PixelSpacing is (row spacing = between rows = along y, column spacing = along x)
    return canonical_spacing((pixel_spacing[1], pixel_spacing[0], dz), direction)


def probe_spacing(source: CaseSource, storage_options: dict | None = None) -> tuple[float, float, float]:
    """Spacing (x, y, z) mm of ``source`` from headers only. Raises UnreadableInput."""
    if source.kind == "dicom":
        return _probe_dicom(source.image_uris, storage_options)
    return _probe_image_file(source.image_uris[0], storage_options)
