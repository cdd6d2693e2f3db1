"""Reading a DICOM SEG back against its source series: one checker for every SEG test."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom


def source_slices(series_folder: str | Path) -> list[pydicom.Dataset]:
    """The series' headers ordered along the slice normal (the reader's z order)."""
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(Path(series_folder).glob("*.dcm"))]
    iop = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(headers, key=lambda ds: float(np.asarray(ds.ImagePositionPatient, dtype=float) @ normal))


def check_seg(seg_path: str | Path, series_folder: str | Path, labels_zyx: np.ndarray,
              names: dict[int, str]) -> pydicom.Dataset:
    """Assert that the SEG at ``seg_path`` encodes ``labels_zyx`` (label values on the source grid,
    slices in the reader's order) with one segment per named class, frames on the source slices and
    references to the source series; returns the SEG dataset."""
    ds = pydicom.dcmread(seg_path)
    seg = hd.seg.Segmentation.from_dataset(ds)
    slices = source_slices(series_folder)
    src = slices[0]
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    assert ds.StudyInstanceUID == src.StudyInstanceUID and ds.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert ds.SeriesInstanceUID != src.SeriesInstanceUID
    classes = sorted((v, n) for v, n in names.items() if v != 0)
    assert [s.SegmentLabel for s in ds.SegmentSequence] == [n for _, n in classes]
    assert [int(s.SegmentNumber) for s in ds.SegmentSequence] == list(range(1, len(classes) + 1))
    shared = ds.SharedFunctionalGroupsSequence[0]
    np.testing.assert_allclose(np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float),
                               np.asarray(src.ImageOrientationPatient, float), atol=1e-6)
    np.testing.assert_allclose(np.asarray(shared.PixelMeasuresSequence[0].PixelSpacing, float),
                               np.asarray(src.PixelSpacing, float), atol=1e-6)
    by_uid = {str(s.SOPInstanceUID): (k, s) for k, s in enumerate(slices)}
    frames = np.asarray(seg.pixel_array)
    if frames.ndim == 2:
        frames = frames[None]
    present = {(k, number) for k in range(labels_zyx.shape[0]) for number, (value, _) in enumerate(classes, 1)
               if (labels_zyx[k] == value).any()}
    assert int(ds.NumberOfFrames) == len(present) == frames.shape[0]
    seen = set()
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        k, source = by_uid[uid]
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        np.testing.assert_allclose(np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, float),
                                   np.asarray(source.ImagePositionPatient, float), atol=1e-4)
        assert np.array_equal(frames[i] > 0, labels_zyx[k] == classes[number - 1][0]), (i, k, number)
        seen.add((k, number))
    assert seen == present
    return ds
