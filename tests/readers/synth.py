"""Small synthetic DICOM CT series written with pydicom for the reader tests.

``write_series`` writes one single-frame CT file per slice; ``write_enhanced`` one Enhanced
(multi-frame) CT file. Stored values are ``(hu - intercept) / slope``; every voxel of slice k
holds a distinct HU pattern so ordering errors show.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
ROWS, COLS = 6, 5
PIXEL_SPACING = (0.8, 0.7)  # (row spacing = y, column spacing = x)


def hu_slice(k: int) -> np.ndarray:
    """(ROWS, COLS) HU values of slice k in anatomical order: unique per slice and voxel."""
    base = np.arange(ROWS * COLS, dtype=np.float64).reshape(ROWS, COLS)
    return -1000.0 + 40.0 * k + 10.0 * base


def _base(study: str, series: str | None, frame: str, modality: str = "CT") -> Dataset:
    ds = Dataset()
    ds.PatientName, ds.PatientID = "Doe^Jane", "SECRET-ID-123"
    ds.Modality, ds.StudyInstanceUID, ds.FrameOfReferenceUID = modality, study, frame
    if series is not None:
        ds.SeriesInstanceUID = series
    ds.Rows, ds.Columns = ROWS, COLS
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.PixelSpacing = list(PIXEL_SPACING)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    return ds


def _save(ds: Dataset, path: Path, sop_class: str, syntax=ExplicitVRLittleEndian) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    ds.SOPClassUID, ds.file_meta = sop_class, meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def write_series(folder: Path, positions: list[list[float]] | None = None, n: int = 4, step_mm: float = 2.0,
                 iop: tuple[float, ...] = (1, 0, 0, 0, 1, 0), slope: float = 1.0, intercept: float = -1024.0,
                 series_uid: str | None = "auto", modality: str = "CT", names: list[str] | None = None,
                 iops: list[tuple[float, ...]] | None = None, image_type: list[str] | None = None,
                 study_uid: str | None = None, compress: str | None = None, with_pixels: bool = True,
                 ) -> list[Path]:
    """Write one series; slice k (anatomical order, along the normal) sits at ``positions[k]``.

    Files get names in reverse anatomical order and InstanceNumbers that disagree with the
    position, so a reader that sorts by either produces a wrong volume.
    """
    iop = tuple(float(v) for v in iop)
    normal = np.cross(iop[:3], iop[3:])
    if positions is None:
        positions = [list(np.array([-10.0, 20.0, 30.0]) + k * step_mm * normal) for k in range(n)]
    study, frame = study_uid or generate_uid(), generate_uid()
    series = generate_uid() if series_uid == "auto" else series_uid
    paths = []
    for k, pos in enumerate(positions):
        ds = _base(study, series, frame, modality)
        ds.SOPInstanceUID = generate_uid()
        ds.InstanceNumber = (7 * k) % len(positions) + 1
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.ImageOrientationPatient = list((iops or [iop] * len(positions))[k])
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        if image_type:
            ds.ImageType = image_type
        if with_pixels:
            ds.PixelData = np.rint((hu_slice(k) - intercept) / slope).astype(np.int16).tobytes()
        path = folder / (names[k] if names else f"IMG{len(positions) - k:04d}")
        _save(ds, path, CTImageStorage, _syntax(compress))
        if compress == "rle":
            _rle(path)
        paths.append(path)
    return paths


def _syntax(compress: str | None):
    return pydicom.uid.DeflatedExplicitVRLittleEndian if compress == "deflate" else ExplicitVRLittleEndian


def _rle(path: Path) -> None:
    ds = pydicom.dcmread(path)
    ds.compress(pydicom.uid.RLELossless)
    ds.save_as(path, enforce_file_format=True)


def write_enhanced(path: Path, z_positions: list[float], slopes: list[float], intercepts: list[float]) -> Path:
    """One Enhanced CT file; frame f at z = z_positions[f] holds hu_slice(rank of that z)."""
    rank = np.argsort(np.argsort(z_positions))
    ds = _base(generate_uid(), generate_uid(), generate_uid())
    ds.SOPInstanceUID, ds.NumberOfFrames = generate_uid(), len(z_positions)
    shared = Dataset()
    ori, px = Dataset(), Dataset()
    ori.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    px.PixelSpacing, px.SliceThickness = list(PIXEL_SPACING), 2.0
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = Sequence([ori]), Sequence([px])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames, stored = [], []
    for f, z in enumerate(z_positions):
        item, pos, pvt = Dataset(), Dataset(), Dataset()
        pos.ImagePositionPatient = [-10.0, 20.0, float(z)]
        pvt.RescaleSlope, pvt.RescaleIntercept, pvt.RescaleType = slopes[f], intercepts[f], "HU"
        item.PlanePositionSequence, item.PixelValueTransformationSequence = Sequence([pos]), Sequence([pvt])
        frames.append(item)
        stored.append(np.rint((hu_slice(int(rank[f])) - intercepts[f]) / slopes[f]).astype(np.int16))
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = np.stack(stored).tobytes()
    _save(ds, path, ENHANCED_CT)
    return path
