"""A label map as a DICOM Segmentation (SEG) object that references its source CT series (highdicom).

:func:`write_dicom_seg` takes the label map on the source series' own grid (what ``pgl predict``
writes: ``storage.readers.read_case``'s geometry, slices along the normal of the image plane) and
the series' :class:`~storage.readers.CaseSource`. It reads the source headers (never their pixels),
orders the slices along the normal as the reader does, checks that slice ``k`` of the label map lies
exactly on source slice ``k`` (position, orientation, rows and columns; a mismatch is refused
naming the file), and writes a BINARY SEG:

- one segment per class of ``label_names`` but the background, numbered 1..N in label-value order,
  labelled with the class name, coded as :mod:`storage.seg_terms` says, with the class colour of
  :mod:`storage.palette` as recommended display colour, algorithm type AUTOMATIC;
- frames only where a class is present (highdicom's ``omit_empty_frames``); each frame carries the
  position, orientation and pixel spacing of its source slice and references that slice's SOP
  instance; the SEG references the source series (ReferencedSeriesSequence) in the source study and
  frame of reference.

Patient and study modules are copied from the source by highdicom, as the standard requires for a
derived object of the same study; nothing of them is logged or returned. Enhanced (multi-frame)
CT sources are refused. The file is written atomically (local or any fsspec URI).
"""

from __future__ import annotations

import io
from collections.abc import Mapping

import numpy as np
from pydicom.dataset import Dataset

from storage import blobs
from storage.errors import RefusedInput
from storage.palette import colour_of
from storage.readers import CaseSource
from storage.readers import local_copies
from storage.readers.dicom import read_dicom_file
from storage.seg_terms import property_codes
from storage.volume import Volume

SEG_SUFFIX = ".seg.dcm"
_POSITION_TOL_MM = 0.01


def source_headers(source: CaseSource, storage_options: dict | None = None) -> list[Dataset]:
    """The series' headers (no pixels), one per ``source.image_uris`` in that order; RefusedInput
    when a SEG cannot be made from it (not DICOM, enhanced multi-frame): call it before the work to
    fail early, and pass the result to :func:`write_dicom_seg`."""
    if source.kind != "dicom":
        raise RefusedInput(source.image_uris[0], "a DICOM SEG needs a DICOM source series")
    with local_copies(list(source.image_uris), storage_options) as local:
        headers = [read_dicom_file(local[u], u, stop_before_pixels=True) for u in source.image_uris]
    for uri, ds in zip(source.image_uris, headers):
        if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
            raise RefusedInput(uri, "DICOM SEG output for enhanced (multi-frame) CT is not supported")
    return headers


def _ordered(headers: list[Dataset], uris: tuple[str, ...]) -> tuple[list[Dataset], list[str]]:
    """Headers and URIs ordered by position along the normal of the first slice's image plane."""
    iop = np.asarray([float(v) for v in headers[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    along = [float(np.asarray([float(v) for v in ds.ImagePositionPatient]) @ normal) for ds in headers]
    order = np.argsort(along, kind="stable")
    return [headers[i] for i in order], [uris[i] for i in order]


def _check_grid(labels: Volume, headers: list[Dataset], uris: list[str]) -> None:
    """Slice k of ``labels`` must lie on ``headers[k]`` (same rows, columns, orientation, position)."""
    nz, ny, nx = labels.shape_zyx
    if len(headers) != nz:
        raise RefusedInput(uris[0], f"the label map has {nz} slices, the source series {len(headers)}")
    d = np.asarray(labels.direction).reshape(3, 3)
    origin, sz = np.asarray(labels.origin_mm), labels.spacing_mm[2]
    for k, (ds, uri) in enumerate(zip(headers, uris)):
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient])
        expected = origin + d[:, 2] * sz * k
        if (int(ds.Rows), int(ds.Columns)) != (ny, nx):
            raise RefusedInput(uri, f"slice is {ds.Rows}x{ds.Columns}, the label map {ny}x{nx}")
        if not np.allclose(iop, np.concatenate([d[:, 0], d[:, 1]]), atol=1e-4):
            raise RefusedInput(uri, f"slice orientation {list(iop)} differs from the label map's")
        if np.abs(ipp - expected).max() > _POSITION_TOL_MM + 1e-3 * sz:
            raise RefusedInput(uri, f"slice position {list(ipp)} is not the label map's slice {k} "
                               f"({[round(v, 3) for v in expected]})")


def _segments(label_names: Mapping[int, str], algorithm: object) -> tuple[dict[int, int], list]:
    """({label value: segment number}, segment descriptions) for the classes but the background."""
    import highdicom as hd

    numbers, descriptions = {}, []
    for number, (value, name) in enumerate(sorted((v, n) for v, n in label_names.items() if v != 0), start=1):
        category, kind = property_codes(name, value)
        numbers[value] = number
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=name[:64], segmented_property_category=category,
            segmented_property_type=kind, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, display_color=hd.color.CIELabColor.from_rgb(*colour_of(value))))
    return numbers, descriptions


def segment_numbers_array(labels: np.ndarray, numbers: Mapping[int, int]) -> np.ndarray:
    """uint8/uint16 array of segment numbers (0 background) for a label array; a value without a
    class name is an error naming it."""
    unknown = sorted(set(np.unique(labels).tolist()) - set(numbers) - {0})
    if unknown:
        raise ValueError(f"label values {unknown} have no class name (known: {sorted(numbers)})")
    lut = np.zeros(int(labels.max(initial=0)) + 1, dtype=np.uint16 if len(numbers) > 255 else np.uint8)
    for value, number in numbers.items():
        if value < lut.size:
            lut[value] = number
    return lut[labels]


def write_dicom_seg(labels: Volume, source: CaseSource, label_names: Mapping[int | str, str], out_uri: str,
                    software_version: str, storage_options: dict | None = None,
                    series_description: str = "pgl-ct segmentation", headers: list[Dataset] | None = None) -> dict:
    """Write ``labels`` ((z, y, x) label values on the source grid) as a DICOM SEG referencing the
    series of ``source`` (``headers``: its :func:`source_headers`, read here when None); returns
    {"uri", "frames", "segments", "referenced_series_uid"}."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    names = {int(k): str(v) for k, v in label_names.items()}
    headers, uris = _ordered(headers or source_headers(source, storage_options), source.image_uris)
    _check_grid(labels, headers, uris)
    algorithm = hd.AlgorithmIdentificationSequence(name="pgl-ct segmenter", version=software_version[:64],
                                                   family=codes.cid7162.ArtificialIntelligence)
    numbers, descriptions = _segments(names, algorithm)
    pixels = segment_numbers_array(np.asarray(labels.array), numbers)
    seg = hd.seg.Segmentation(
        source_images=headers, pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions, series_instance_uid=hd.UID(), series_number=9001,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="pgl-ct", manufacturer_model_name="pgl-ct",
        software_versions=software_version[:64], device_serial_number="pgl-ct",
        series_description=series_description, content_label="PGLCT", omit_empty_frames=True)
    buffer = io.BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    blobs.put_bytes_atomic(out_uri, buffer.getvalue(), storage_options)
    return {"uri": out_uri, "frames": int(seg.NumberOfFrames), "segments": len(descriptions),
            "referenced_series_uid": str(headers[0].SeriesInstanceUID)}
