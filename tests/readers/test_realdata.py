"""Real public CT / DICOM / NIfTI files (pip-fetched, sha256-pinned): ingest or refuse, never crash."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from storage.errors import RefusedInput, UnreadableInput
from storage.geometry import canonicalize
from storage.readers import discover_cases, read_case
from storage.readers.dicom import read_dicom_series


def _outcomes(root: Path) -> tuple[dict[tuple[str, ...], object], list[tuple[str, str]]]:
    """{image file names: Volume or the refusal} for every discovered case, plus the problems."""
    cases, problems, _ = discover_cases(str(root))
    out: dict[tuple[str, ...], object] = {}
    for case in cases:
        key = tuple(Path(u).name for u in case.image_uris)
        try:
            out[key] = read_case(case)[0]
        except (RefusedInput, UnreadableInput) as exc:  # anything else fails the test
            out[key] = exc
    return out, problems


def _find(outcomes: dict, name: str):
    hits = [v for k, v in outcomes.items() if name in k]
    assert len(hits) == 1, (name, list(outcomes))
    return hits[0]


def test_pydicom_dicomdir_series(pydicom_test_files: Path) -> None:
    root = pydicom_test_files / "dicomdirtests"
    outcomes, problems = _outcomes(root)
    assert any("TINY_ALPHA" in where and "without pixel data" in why for where, why in problems)
    gap = _find(outcomes, "17106")  # 77654033/CT2: 1.25 mm slices then a 202 mm jump
    assert isinstance(gap, RefusedInput) and "slice gap" in gap.reason
    for name in ("6293", "6924"):  # 98892001/CT2N: two localizers with different orientations
        assert isinstance(_find(outcomes, name), RefusedInput)
    assert all(isinstance(v, RefusedInput) for k, v in outcomes.items() if "6293" in k or "6924" in k)
    vol = _find(outcomes, "2062")  # 98892001/CT5N: five slices stored with descending z
    files = sorted((root / "98892001" / "CT5N").iterdir())
    by_z = sorted((pydicom.dcmread(f) for f in files), key=lambda d: float(d.ImagePositionPatient[2]))
    expect = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in by_z])
    np.testing.assert_array_equal(vol.array, expect)
    assert vol.origin_mm[2] == pytest.approx(-1.2375) and vol.spacing_mm[2] == pytest.approx(2.5)


def test_pydicom_test_files_never_crash(pydicom_test_files: Path) -> None:
    outcomes, problems = _outcomes(pydicom_test_files)
    assert len(outcomes) > 30 and problems
    small = _find(outcomes, "CT_small.dcm")
    assert isinstance(small, RefusedInput) and "at least 3" in small.reason


def test_pydicom_data_never_crash_and_refuse_non_ct(pydicom_data_files: Path) -> None:
    outcomes, _ = _outcomes(pydicom_data_files)
    mr = _find(outcomes, "MR2_UNCR.dcm")
    assert isinstance(mr, RefusedInput) and "not CT" in mr.reason
    enhanced = _find(outcomes, "eCT_Supplemental.dcm")
    assert isinstance(enhanced, RefusedInput) and "at least 3" in enhanced.reason


def test_enhanced_ct_rescale_from_functional_groups(pydicom_data_files: Path) -> None:
    path = pydicom_data_files / "eCT_Supplemental.dcm"
    vol, modality = read_dicom_series([str(path)], min_slices=2)
    ds = pydicom.dcmread(path)
    pvt = ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    hu = ds.pixel_array * float(pvt.RescaleSlope) + float(pvt.RescaleIntercept)
    # IOP row (-1, 0, 0), col (0, 1, 0): the normal is -z, so the frame at z=-149 comes first
    np.testing.assert_array_equal(vol.array, hu[::-1])
    assert modality == "CT" and vol.origin_mm == pytest.approx((99.5, -301.5, -149.0))
    assert vol.direction == pytest.approx((-1, 0, 0, 0, 1, 0, 0, 0, -1))


def test_jpeg2000_ct_decodes_like_uncompressed(pydicom_data_files: Path) -> None:
    ds = pydicom.dcmread(pydicom_data_files / "693_UNCR.dcm")  # 14-bit signed CT
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    ref, _ = read_dicom_series([str(pydicom_data_files / "693_UNCR.dcm")], min_slices=1)
    vol, _ = read_dicom_series([str(pydicom_data_files / "693_J2KR.dcm")], min_slices=1)
    np.testing.assert_array_equal(ref.array[0], hu)
    np.testing.assert_array_equal(vol.array, ref.array)
    assert ref.array.min() < -1000 and ref.array.max() > 1000


def test_jpeg_lossless_ct_decodes(pydicom_data_files: Path) -> None:
    vol, _ = read_dicom_series([str(pydicom_data_files / "bad_sequence.dcm")], min_slices=1)
    assert vol.array.shape == (1, 512, 512) and vol.array.max() > vol.array.min()


def test_slicerio_chest_ct_ingests(slicerio_data: Path) -> None:
    outcomes, problems = _outcomes(slicerio_data)
    vol = _find(outcomes, "CTChest4.nrrd")
    assert vol.array.shape == (34, 128, 128) and vol.array.dtype == np.int16
    assert vol.direction == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert vol.array.min() < -900 and vol.array.max() > 500
    canon = canonicalize(vol)
    assert canon.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    np.testing.assert_array_equal(canon.array, vol.array[:, ::-1, ::-1])


def test_nibabel_files_ingest_or_refuse(nibabel_test_data: Path) -> None:
    outcomes, _ = _outcomes(nibabel_test_data)
    for name in ("example4d.nii.gz", "example_nifti2.nii.gz", "functional.nii"):
        got = _find(outcomes, name)
        assert isinstance(got, RefusedInput) and "4D" in got.reason, (name, got)
    nan = _find(outcomes, "resampled_anat_moved.nii")
    assert isinstance(nan, RefusedInput) and "NaN" in nan.reason
    for name in ("standard.nii.gz", "reoriented_anat_moved.nii"):  # [0, 1]-scaled MR templates
        assert "Hounsfield" in _find(outcomes, name).reason
