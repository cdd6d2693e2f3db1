"""Raw CT readers: find cases (:func:`discover_cases`) and read one case (:func:`read_case`).

``read_case`` returns volumes in their original geometry (call ``storage.geometry.canonicalize``
next). Remote cases (any fsspec URI, e.g. ``s3://``) are first copied to a temporary folder that
is removed afterwards (a NIfTI slice stream keeps its copy open until it is finished; a remote
DICOM series is read whole); one case is in memory at a time. Every failure is a
:class:`~storage.errors.RefusedInput` (the input would make a wrong volume) or an
:class:`~storage.errors.UnreadableInput` (it cannot be decoded), naming the file and the reason.
Every image must have a plausible spacing and Hounsfield values (``storage.checks``).
The returned meta never holds patient-identifying fields nor file paths.
"""

from __future__ import annotations

import os
import tempfile
from contextlib import contextmanager
from collections.abc import Iterator

import fsspec
import numpy as np

from storage.checks import DEFAULT_SPACING_RANGE_MM, check_ct_values, check_geometry
from storage.checksum import sha256_files
from storage.errors import RefusedInput, StorageError, UnreadableInput
from storage.geometry import labels_match_image
from storage.readers.dicom import read_dicom_series, read_series_headers, stack_series
from storage.readers.dicom_stream import open_series
from storage.readers.discover import CaseSource, discover_cases
from storage.readers.image_file import IMAGE_SUFFIXES, image_suffix, read_image_file
from storage.readers.nifti_stream import open_slices
from storage.volume import Volume

__all__ = ["CaseSource", "discover_cases", "read_case"]


def _is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


@contextmanager
def local_copies(uris: list[str], storage_options: dict | None) -> Iterator[dict[str, str]]:
    """Map each URI to a local path, downloading remote ones into a temporary folder."""
    if all(_is_local(u) for u in uris):
        yield {u: u.removeprefix("file://") for u in uris}
        return
    with tempfile.TemporaryDirectory(prefix="pgl-case-") as tmp:
        mapping = {}
        for i, uri in enumerate(uris):
            name = uri.rstrip("/").rsplit("/", 1)[-1]
            local = os.path.join(tmp, f"{i:06d}_{name}")
            with fsspec.open(uri, "rb", **(storage_options or {})) as src, open(local, "wb") as dst:
                for block in iter(lambda: src.read(1 << 22), b""):
                    dst.write(block)
            mapping[uri] = local
        yield mapping


def _renamed(exc: StorageError, back: dict[str, str]) -> StorageError:
    """The same error with temporary paths replaced by the original URIs."""
    source, reason = getattr(exc, "source", ""), getattr(exc, "reason", str(exc))
    for local, uri in back.items():
        source, reason = source.replace(local, uri), reason.replace(local, uri)
    return type(exc)(source, reason)


def _read_file(path: str, is_label: bool, stream: bool, name: str, allow_non_hu: bool) -> Volume:
    """One volume file: streamed slice by slice when ``stream`` and the file allows it
    (``storage.readers.nifti_stream``, which then runs the value checks itself), else whole."""
    vol = open_slices(path, is_label, name, allow_non_hu) if stream else None
    return vol if vol is not None else read_image_file(path, is_label=is_label)


def _read_image(source: CaseSource, paths: list[str], allow_non_ct: bool, tol: float, stream: bool,
                allow_non_hu: bool) -> tuple[Volume, str, str]:
    if source.kind == "dicom":
        where = f"case {source.case_id}"
        if not stream:
            vol, modality = read_dicom_series(paths, allow_non_ct, tol, where=where)
            return vol, modality, "dicom"
        series = read_series_headers(paths, allow_non_ct, tol, where=where)
        return open_series(series, where, allow_non_hu) or stack_series(series), series.modality, "dicom"
    if len(paths) != 1:
        raise RefusedInput(source.case_id, f"an image case needs exactly one file, got {len(paths)}")
    vol = _read_file(paths[0], False, stream, source.image_uris[0], allow_non_hu)
    return vol, "CT", IMAGE_SUFFIXES[image_suffix(paths[0]) or ".nii"]


def read_case(source: CaseSource, allow_non_ct: bool = False, spacing_tolerance: float = 0.1,
              storage_options: dict | None = None, source_checksum: str | None = None,
              spacing_range_mm: tuple[float, float] = DEFAULT_SPACING_RANGE_MM,
              allow_non_hu: bool = False, stream: bool = False) -> tuple[Volume, Volume | None, dict]:
    """Read one case -> (image, label or None, meta), in the input's own geometry.

    The image is refused when its spacing lies outside ``spacing_range_mm`` (any axis) or its values
    do not look like HU (unless ``allow_non_hu``, which ``allow_non_ct`` implies: other modalities
    are not in HU); NaN is always refused. ``allow_non_ct`` also accepts DICOM modalities other than
    CT; ``spacing_tolerance`` is the DICOM slice spacing uniformity (relative).

    image: (z, y, x) HU, int16 when integral else float32; label: uint8 on the same grid.
    meta: ``source_checksum`` (sha256 over all input files, images in order then the label:
    :func:`storage.checksum.sha256_files`; a caller that already computed it passes it as
    ``source_checksum`` and the files are not hashed again), ``original_spacing`` /
    ``original_size`` (x, y, z), ``modality``, ``format``.

    ``stream``: NIfTI image and label files, and local single-frame DICOM series, may come back as
    slice streams (``storage.volume.PlaneSource``, decoded as ``storage.geometry`` resamples
    them, the value checks and the stream's own verification done as they are read: the caller
    must finish them, as the store's writer does, before it takes the case as read). Other inputs,
    and files a stream cannot serve (``storage.readers.nifti_stream``, ``dicom_stream``), are
    read whole.
    """
    uris = list(source.image_uris) + ([source.label_uri] if source.label_uri else [])
    with local_copies(uris, storage_options) as local:
        back = {v: k for k, v in local.items()}
        try:
            # DICOM slices are read from their files as they are needed: only where those stay
            dicom_stream = stream and all(_is_local(u) for u in source.image_uris)
            image, modality, fmt = _read_image(source, [local[u] for u in source.image_uris], allow_non_ct,
                                               spacing_tolerance, dicom_stream if source.kind == "dicom" else stream,
                                               allow_non_hu or allow_non_ct)
            where = source.image_uris[0] if fmt != "dicom" else f"case {source.case_id}"
            check_geometry(image, where, spacing_range_mm)
            if isinstance(image.array, np.ndarray):  # (a stream checks its values as it is read)
                check_ct_values(image.array, where, allow_non_hu or allow_non_ct)
            label = _read_file(local[source.label_uri], True, stream, source.label_uri, False) \
                if source.label_uri else None
        except (RefusedInput, UnreadableInput) as exc:
            raise _renamed(exc, back) from exc
        except (MemoryError, KeyboardInterrupt):
            raise
        except Exception as exc:  # any other decoder failure is an unreadable input, never a crash
            raise UnreadableInput(source.image_uris[0], f"{type(exc).__name__}: {exc}") from exc
        checksum = source_checksum or sha256_files([local[u] for u in uris])
    if label is not None:
        try:
            labels_match_image(image, label)
        except RefusedInput as exc:
            raise RefusedInput(source.label_uri or "", exc.reason) from exc
    size_xyz = list(image.array.shape[::-1])
    meta = {"case_id": source.case_id, "source_checksum": checksum, "original_spacing": list(image.spacing_mm),
            "original_size": size_xyz, "modality": modality or "CT", "format": fmt}
    image.meta, label_meta = dict(meta), {"case_id": source.case_id}
    if label is not None:
        label.meta = label_meta
    return image, label, meta
