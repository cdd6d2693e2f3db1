"""DICOM: header sniffing, series grouping keys, validated slice order, pixel decoding.

Headers are read by ``storage.readers.dicom_header`` (a lean parser of ordinary files that gives
pydicom's values) or else with pydicom; pixels are decoded per slice with SimpleITK's bundled
GDCM (every compressed transfer syntax, no plugins), falling back to pydicom for what GDCM rejects.
Enhanced (multi-frame) CT is decoded from stored values with the per-frame rescale.

Choices (documented behaviour):
- Series key: SeriesInstanceUID (else StudyInstanceUID, else the folder) + FrameOfReferenceUID
  + ImageOrientationPatient rounded to 2 decimals. Images of one series with clearly distinct
  orientations become separate candidate volumes, each validated on its own (two single-slice
  localizers are then refused as localizers / too few slices); orientations that differ by more
  than 1e-3 but round alike are refused as "mixed orientations". Nothing is silently stacked.
- Slices are ordered by their position along the slice normal, never by InstanceNumber.
- A volume needs at least ``MIN_SLICES`` (3) slices; gaps, non-uniform steps (relative
  ``spacing_tolerance``), duplicate positions, in-plane shifts (gantry tilt) are refused.
- Fast path: uncompressed little-endian 16-bit MONOCHROME2 slices with an integral rescale are
  decoded straight from the file with numpy (``storage.readers.dicom_pixels``), exactly GDCM's
  values; everything else is decoded by GDCM.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset

from storage.errors import RefusedInput, UnreadableInput
from storage.readers.dicom_header import LeanHeader, lean_header
from storage.readers.dicom_pixels import decode_raw, raw_pixels
from storage.volume import Volume

MIN_SLICES = 3
_CASE_ID_SALT = b"pgl-ct/dicom-case/v1"
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_ORIENT_TOL = 1e-3


@dataclass(frozen=True)
class DicomHeader:
    """What discovery needs from one DICOM file (no patient-identifying fields)."""

    uri: str
    group_key: tuple[str, ...]
    has_pixels: bool
    is_dicomdir: bool


def looks_like_dicom(head: bytes, name: str) -> bool:
    """True for a Part 10 preamble, or a preamble-less stream starting with group 0002/0008."""
    if len(head) >= 132 and head[128:132] == b"DICM":
        return True
    starts = head[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x08")
    return starts or name.lower().endswith((".dcm", ".dicom"))


def _iop_key(ds: Dataset | LeanHeader) -> str:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6:
        return "no-orientation"
    return ",".join(f"{round(float(v), 2) + 0.0:.2f}" for v in iop)


def header_from_dataset(ds: Dataset | LeanHeader, uri: str) -> DicomHeader:
    """Grouping key and flags of one parsed header (read with deferred pixel data)."""
    sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
    is_dicomdir = sop_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds
    has_pixels = any(tag in ds for tag in _PIXEL_TAGS)
    frames = int(ds.get("NumberOfFrames") or 1)
    series = str(ds.get("SeriesInstanceUID") or "").strip()
    if not series:
        study = str(ds.get("StudyInstanceUID") or "").strip()
        series = f"study:{study}" if study else f"folder:{Path(uri).parent}"
    frame_uid = str(ds.get("FrameOfReferenceUID") or "").strip()
    if frames > 1:  # a multi-frame object is a volume of its own
        key: tuple[str, ...] = (series, frame_uid, "multiframe", str(ds.get("SOPInstanceUID") or uri))
    else:
        key = (series, frame_uid, _iop_key(ds))
    return DicomHeader(uri=uri, group_key=key, has_pixels=has_pixels, is_dicomdir=is_dicomdir)


class TruncatedFile(UnreadableInput):
    """A DICOM file that ends inside an element (pydicom warns and drops everything it read)."""


def read_dicom_file(src, uri: str, **kwargs) -> Dataset:
    """``pydicom.dcmread(src, force=True, **kwargs)``; :class:`TruncatedFile` when the file ends
    inside an element (a truncated pixel data element, compressed or not)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = pydicom.dcmread(src, force=True, **kwargs)
    ended = [str(w.message) for w in caught if "End of file reached" in str(w.message)]
    if ended:
        raise TruncatedFile(uri, f"truncated DICOM file ({ended[0].split(' in file')[0].lower()})")
    return ds


def _pydicom_header(fh, uri: str) -> tuple[Dataset, bool]:
    """(dataset, whether its pixel data is truncated) read with pydicom from the file's start."""
    fh.seek(0)
    try:
        return read_dicom_file(fh, uri, defer_size=1024), False
    except TruncatedFile:  # keep it in its series (read up to its pixels), which is then refused naming it
        fh.seek(0)
        return read_dicom_file(fh, uri, stop_before_pixels=True), True


def _parse_header(fh, uri: str) -> DicomHeader:
    lean = lean_header(fh)
    ds, truncated = (lean, False) if lean is not None else _pydicom_header(fh, uri)
    if not ds or not any(k in ds for k in ("SOPClassUID", "Modality", "Rows", "DirectoryRecordSequence")):
        raise UnreadableInput(uri, "not a DICOM dataset (no SOPClassUID, Modality or Rows)")
    header = header_from_dataset(ds, uri)
    return replace(header, has_pixels=True) if truncated and "Rows" in ds else header


def read_header(fh, uri: str) -> DicomHeader:
    """Parse one header from an open binary file; raises UnreadableInput when it is not DICOM.
    A file whose pixel data is truncated still gets its series key (and counts as having pixels), so
    that its series is refused when read instead of being stacked without it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns on malformed values as they are read
            return _parse_header(fh, uri)
    except UnreadableInput:
        raise
    except Exception as exc:  # pydicom raises many types on corrupt input
        raise UnreadableInput(uri, f"unreadable DICOM header: {type(exc).__name__}: {exc}") from exc


def case_id_for(group_key: tuple[str, ...]) -> str:
    """Short salted hash of the series key; never derived from patient fields."""
    digest = hashlib.sha256(_CASE_ID_SALT + "\x1f".join(group_key).encode()).hexdigest()
    return f"dcm-{digest[:16]}"


@dataclass(frozen=True)
class _Slice:
    """One 2D frame to stack: where it comes from and its geometry and rescale."""

    path: str
    frame: int  # -1: whole single-frame file
    ipp: np.ndarray
    iop: np.ndarray
    pixel_spacing: tuple[float, float]
    shape: tuple[int, int]
    slope: float
    intercept: float
    raw: tuple[int, str, int] | None = None  # uncompressed pixels: (byte offset, dtype, bits stored)


def _floats(value, n: int, what: str, path: str) -> np.ndarray:
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise RefusedInput(path, f"missing or malformed {what}") from exc
    if arr.shape != (n,) or not np.all(np.isfinite(arr)):
        raise RefusedInput(path, f"missing or malformed {what}: {value!r}")
    return arr


def _classic_slice(ds: Dataset | LeanHeader, path: str) -> _Slice:
    ps = _floats(ds.get("PixelSpacing"), 2, "PixelSpacing", path)
    shape = (int(ds.get("Rows") or 0), int(ds.get("Columns") or 0))
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return _Slice(
        path=path, frame=-1,
        ipp=_floats(ds.get("ImagePositionPatient"), 3, "ImagePositionPatient", path),
        iop=_floats(ds.get("ImageOrientationPatient"), 6, "ImageOrientationPatient", path),
        pixel_spacing=(float(ps[0]), float(ps[1])),
        shape=shape, slope=slope, intercept=intercept,
        raw=raw_pixels(ds, shape, slope, intercept),
    )


def _group_item(ds: Dataset, frame_item: Dataset | None, seq: str) -> Dataset | None:
    """A functional-group macro: the per-frame one when present, else the shared one."""
    for holder in (frame_item, (ds.get("SharedFunctionalGroupsSequence") or [None])[0]):
        if holder is not None and seq in holder and len(holder[seq].value):
            return holder[seq].value[0]
    return None


def _enhanced_slices(ds: Dataset, path: str) -> list[_Slice]:
    frames = ds.get("PerFrameFunctionalGroupsSequence") or []
    if not frames:
        raise RefusedInput(path, "multi-frame object without per-frame plane positions (PerFrameFunctionalGroupsSequence)")
    out = []
    for i, item in enumerate(frames):
        pos = _group_item(ds, item, "PlanePositionSequence")
        ori = _group_item(ds, item, "PlaneOrientationSequence")
        px = _group_item(ds, item, "PixelMeasuresSequence")
        pvt = _group_item(ds, item, "PixelValueTransformationSequence")
        if pos is None or ori is None or px is None:
            raise RefusedInput(path, f"frame {i}: missing plane position, orientation or pixel measures")
        ps = _floats(px.get("PixelSpacing"), 2, f"frame {i} PixelSpacing", path)
        rescale = pvt if pvt is not None else ds
        out.append(_Slice(
            path=path, frame=i,
            ipp=_floats(pos.get("ImagePositionPatient"), 3, f"frame {i} ImagePositionPatient", path),
            iop=_floats(ori.get("ImageOrientationPatient"), 6, f"frame {i} ImageOrientationPatient", path),
            pixel_spacing=(float(ps[0]), float(ps[1])),
            shape=(int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)),
            slope=float(rescale.get("RescaleSlope", 1.0) or 1.0),
            intercept=float(rescale.get("RescaleIntercept", 0.0) or 0.0),
        ))
    if int(ds.get("NumberOfFrames") or 1) != len(out):
        raise RefusedInput(path, f"NumberOfFrames {ds.get('NumberOfFrames')} but {len(out)} per-frame groups")
    return out


def _check_kind(ds: Dataset | LeanHeader, path: str, allow_non_ct: bool) -> None:
    modality = str(ds.get("Modality") or "").upper()
    if modality != "CT" and not allow_non_ct:
        raise RefusedInput(path, f"modality {modality or 'missing'} is not CT (allow_non_ct accepts it)")
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        raise RefusedInput(path, "localizer (scout) image, not a volume")
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise RefusedInput(path, "no pixel data")
    if int(ds.get("SamplesPerPixel") or 1) != 1:
        raise RefusedInput(path, f"not greyscale (SamplesPerPixel={ds.get('SamplesPerPixel')})")


def read_slices(paths: list[str], allow_non_ct: bool) -> tuple[list[_Slice], str]:
    """The slices of one series with their headers (pixels decoded later) and its modality."""
    slices, modality = [], ""
    for path in paths:
        ds: Dataset | LeanHeader | None = lean_header(path)
        if ds is None:  # not plainly ordinary: pydicom reads it
            try:
                ds = read_dicom_file(path, path, defer_size=1024)
            except UnreadableInput:
                raise
            except Exception as exc:
                raise UnreadableInput(path, f"unreadable DICOM header: {type(exc).__name__}: {exc}") from exc
        _check_kind(ds, path, allow_non_ct)
        modality = str(ds.get("Modality") or "")
        if int(ds.get("NumberOfFrames") or 1) > 1:
            if len(paths) != 1:
                raise RefusedInput(path, "multi-frame object mixed with other files in one series")
            return _enhanced_slices(ds, path), modality
        slices.append(_classic_slice(ds, path))
    return slices, modality


def _normal(iop: np.ndarray) -> np.ndarray:
    n = np.cross(iop[:3], iop[3:])
    norm = np.linalg.norm(n)
    if norm < 0.5:
        raise ValueError("degenerate ImageOrientationPatient")
    return n / norm


def _order(slices: list[_Slice], where: str) -> tuple[list[_Slice], np.ndarray]:
    """Sort by position along the normal; refuse mixed orientations or grids."""
    ref = slices[0]
    for s in slices[1:]:
        if np.max(np.abs(s.iop - ref.iop)) > _ORIENT_TOL:
            raise RefusedInput(where, f"mixed orientations in one series: {ref.iop.round(4).tolist()} "
                                      f"vs {s.iop.round(4).tolist()} ({s.path})")
        if s.shape != ref.shape or np.max(np.abs(np.subtract(s.pixel_spacing, ref.pixel_spacing))) > 1e-4:
            raise RefusedInput(where, f"slices differ in size or pixel spacing ({s.path})")
    try:
        normal = _normal(ref.iop)
    except ValueError as exc:
        raise RefusedInput(where, f"{exc}: {ref.iop.tolist()}") from exc
    order = sorted(range(len(slices)), key=lambda i: float(slices[i].ipp @ normal))
    return [slices[i] for i in order], normal


def _direction(iop: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """Row-major 3x3 ITK direction with columns (row, col, normal), orthonormalised."""
    row = iop[:3] / np.linalg.norm(iop[:3])
    col = iop[3:] - (iop[3:] @ row) * row
    col = col / np.linalg.norm(col)
    return np.stack([row, col, normal], axis=1).reshape(-1)


def _check_positions(ordered: list[_Slice], normal: np.ndarray, tol: float, where: str, min_slices: int) -> float:
    """Return the uniform slice step in mm, or refuse gaps / duplicates / shear."""
    if len(ordered) < min_slices:
        raise RefusedInput(where, f"{len(ordered)} slice(s): a volume needs at least {min_slices}")
    if len(ordered) == 1:  # only with min_slices=1: no step to measure, 1 mm by convention
        return 1.0
    pos = np.array([s.ipp @ normal for s in ordered])
    steps = np.diff(pos)
    if np.min(steps) < 1e-3:
        i = int(np.argmin(steps))
        raise RefusedInput(where, f"duplicate slice position {pos[i]:.3f} mm "
                                  f"({ordered[i].path}, {ordered[i + 1].path})")
    step = float(np.median(steps))
    worst = int(np.argmax(np.abs(steps - step)))
    if abs(steps[worst] - step) > tol * step:
        kind = "slice gap" if steps[worst] > step else "non-uniform slice spacing"
        raise RefusedInput(where, f"{kind}: step {steps[worst]:.3f} mm at {pos[worst]:.3f} mm, "
                                  f"median step {step:.3f} mm (tolerance {tol:.0%})")
    shift = np.array([s.ipp - ordered[0].ipp for s in ordered]) - np.outer(pos - pos[0], normal)
    if np.max(np.linalg.norm(shift, axis=1)) > tol * min(ordered[0].pixel_spacing) + 1e-3:
        raise RefusedInput(where, "slices shift in plane along the stack (gantry tilt or sheared series)")
    return step


def _value_dtype(slices: list[_Slice]) -> np.dtype:
    """int16 when every rescale is integral (HU beyond the int16 range are clipped), else float32."""
    integral = all(s.slope == round(s.slope) and s.intercept == round(s.intercept) for s in slices)
    return np.dtype(np.int16 if integral else np.float32)


def to_dtype(hu: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype != np.int16:
        return hu.astype(dtype)
    rounded = hu if np.issubdtype(hu.dtype, np.integer) else np.rint(hu)
    return np.clip(rounded, -32768, 32767).astype(dtype)


def decode_classic(s: _Slice) -> np.ndarray:
    """One single-frame file -> (rows, cols) HU (GDCM applies the file's rescale; float, or int32
    from the numpy fast path)."""
    if s.raw is not None:
        return decode_raw(s)
    try:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(s.path, sitk.sitkFloat32, imageIO="GDCMImageIO"))
    except RuntimeError:
        arr = _decode_pydicom(s.path) * s.slope + s.intercept
    return arr.reshape(arr.shape[-2:]) if arr.ndim == 3 and arr.shape[0] == 1 else arr


def _decode_pydicom(path: str) -> np.ndarray:
    try:
        return np.asarray(pydicom.dcmread(path, force=True).pixel_array, dtype=np.float64)
    except Exception as exc:  # decoder errors vary by transfer syntax
        raise UnreadableInput(path, f"pixel data cannot be decoded: {exc}") from exc


def _decode_enhanced(ordered: list[_Slice]) -> np.ndarray:
    """(frames, rows, cols) in HU, frames in ``ordered`` order, per-frame rescale applied."""
    path = ordered[0].path
    try:
        stored = np.asarray(pydicom.dcmread(path, force=True).pixel_array, dtype=np.float64)
        stored = stored.reshape((-1,) + ordered[0].shape)
        return np.stack([stored[s.frame] * s.slope + s.intercept for s in ordered])
    except (RefusedInput, UnreadableInput):
        raise
    except Exception as exc:
        if len({(s.slope, s.intercept) for s in ordered}) != 1:
            raise UnreadableInput(path, f"compressed frames with per-frame rescale not decodable: {exc}") from exc
    try:  # uniform rescale: GDCM's applied rescale is the same for every frame
        hu = sitk.GetArrayFromImage(sitk.ReadImage(path, sitk.sitkFloat32, imageIO="GDCMImageIO"))
    except RuntimeError as exc:
        raise UnreadableInput(path, f"pixel data cannot be decoded: {exc}") from exc
    return hu[[s.frame for s in ordered]]


def _stack(ordered: list[_Slice], dtype: np.dtype) -> np.ndarray:
    """Decode every slice into one preallocated (z, y, x) array (peak: one volume + one slice)."""
    rows, cols = ordered[0].shape
    if ordered[0].frame >= 0:
        return to_dtype(_decode_enhanced(ordered), dtype)
    out = np.empty((len(ordered), rows, cols), dtype=dtype)
    for z, s in enumerate(ordered):
        if s.raw is not None and dtype == np.int16:
            decode_raw(s, out[z])
            continue
        hu = decode_classic(s)
        if hu.shape != (rows, cols):
            raise UnreadableInput(s.path, f"decoded slice shape {hu.shape} != header Rows/Columns {(rows, cols)}")
        out[z] = to_dtype(hu, dtype)
    return out


@dataclass(frozen=True)
class Series:
    """A validated series before its pixels are decoded: slices in order along the normal, the
    value dtype, geometry (ITK convention) and modality."""

    ordered: list[_Slice]
    dtype: np.dtype
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, ...]
    direction: tuple[float, ...]
    modality: str


def read_series_headers(paths: list[str], allow_non_ct: bool = False, spacing_tolerance: float = 0.1,
                        where: str | None = None, min_slices: int = MIN_SLICES) -> Series:
    """Read and validate one series' headers (local files); see :func:`read_dicom_series`."""
    where = where or str(Path(paths[0]).parent)
    slices, modality = read_slices(paths, allow_non_ct)
    ordered, normal = _order(slices, where)
    step = _check_positions(ordered, normal, spacing_tolerance, where, min_slices)
    ps = ordered[0].pixel_spacing
    return Series(ordered, _value_dtype(ordered), (ps[1], ps[0], step), tuple(ordered[0].ipp),
                  tuple(_direction(ordered[0].iop, normal)), modality)


def read_dicom_series(paths: list[str], allow_non_ct: bool = False, spacing_tolerance: float = 0.1,
                      where: str | None = None, min_slices: int = MIN_SLICES) -> tuple[Volume, str]:
    """Validate and stack one series (local files) -> (Volume in HU, modality).

    ``where`` names the series in errors (default: the first file's folder); ``min_slices``
    (default ``MIN_SLICES``) is the fewest slices accepted. The Volume's array is (z, y, x),
    int16 when every rescale is integral, else float32; z runs along the slice
    normal ``cross(row, col)``, so direction columns are (row, col, normal).
    ``storage.readers.dicom_stream`` decodes the same series a slice at a time instead.
    """
    series = read_series_headers(paths, allow_non_ct, spacing_tolerance, where, min_slices)
    return stack_series(series), series.modality


def stack_series(series: Series) -> Volume:
    """Every slice of ``series`` decoded into one (z, y, x) Volume (peak: one volume + one slice)."""
    return Volume(_stack(series.ordered, series.dtype), series.spacing_mm, series.origin_mm, series.direction)
