"""Phantom writers: MSD NIfTI layout and DICOM series read back with SimpleITK / pydicom."""

from __future__ import annotations

import json
import os

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from phantoms import KINDS, case_seed, generate_case, render_case, write_dataset
from phantoms.writers import DicomIdentity, write_dicom_series, write_nifti

SMALL = (12, 40, 48)


def assert_same_geometry(img: sitk.Image, vol) -> None:
    np.testing.assert_allclose(img.GetSpacing(), vol.spacing_mm, rtol=1e-6)
    np.testing.assert_allclose(img.GetOrigin(), vol.origin_mm, atol=1e-3)
    np.testing.assert_allclose(img.GetDirection(), vol.direction, atol=1e-5)


def read_series(folder: str) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
    return reader.Execute()


@pytest.mark.parametrize("kw", [dict(ras=False, descending=False, oblique=False),
                                dict(ras=True, descending=True, oblique=True)])
def test_nifti_round_trip_equals_the_volume(tmp_path, kw):
    image, label = generate_case("lits", 9, SMALL, **kw)
    for vol, dtype in ((image, np.int16), (label, np.uint8)):
        path = write_nifti(vol, str(tmp_path / f"{dtype.__name__}.nii.gz"))
        back = sitk.ReadImage(path)
        array = sitk.GetArrayFromImage(back)
        assert array.dtype == dtype
        np.testing.assert_array_equal(array, vol.array)
        assert_same_geometry(back, vol)


@pytest.mark.parametrize("kw", [dict(ras=False, descending=False, oblique=False),
                                dict(ras=True, descending=True, oblique=True),
                                dict(ras=False, descending=True, oblique=False)])
def test_dicom_series_equals_the_image_in_physical_space(tmp_path, kw):
    image, _ = generate_case("btcv", 5, SMALL, spacing_mm=(7.5, 9.0, 12.0), **kw)
    who = DicomIdentity.synthetic(0, 3, 5, "PhantomBTCV")
    files = write_dicom_series(image, str(tmp_path / "series"), who)
    assert len(files) == SMALL[0]
    back = read_series(str(tmp_path / "series"))
    # The reader sorts slices along the normal: same in-plane axes, slices possibly reversed.
    direction = np.asarray(back.GetDirection()).reshape(3, 3)
    stored = np.asarray(image.direction).reshape(3, 3)
    np.testing.assert_allclose(direction[:, :2], stored[:, :2], atol=1e-6)
    np.testing.assert_allclose(back.GetSpacing(), image.spacing_mm, rtol=1e-6)
    on_grid = sitk.Resample(back, image.to_sitk(), sitk.Transform(), sitk.sitkNearestNeighbor, -5000.0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(on_grid), image.array)


def test_dicom_headers(tmp_path):
    image, _ = generate_case("kits", 2, SMALL, spacing_mm=(0.8, 0.6, 3.0), descending=True)
    who = DicomIdentity.synthetic(42, 3, 2, "PhantomKiTS")
    files = write_dicom_series(image, str(tmp_path / "s"), who)
    slices = [pydicom.dcmread(f) for f in files]
    first = slices[0]
    assert first.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert first.SOPClassUID == pydicom.uid.CTImageStorage and first.Modality == "CT"
    assert str(first.PatientName) == "PHANTOM^CASE0003" and first.PatientID == "PHX-42-3"
    assert len(first.PatientBirthDate) == 8
    assert [float(v) for v in first.PixelSpacing] == [0.6, 0.8]  # (between rows = y, between columns = x)
    assert float(first.SliceThickness) == 3.0
    assert float(first.RescaleSlope) == 1 and float(first.RescaleIntercept) == -1024
    np.testing.assert_array_equal(first.pixel_array.astype(int) - 1024, image.array[0])
    assert len({s.SOPInstanceUID for s in slices}) == len(slices)
    assert len({(s.StudyInstanceUID, s.SeriesInstanceUID, s.FrameOfReferenceUID) for s in slices}) == 1
    z = [float(s.ImagePositionPatient[2]) for s in slices]
    assert np.all(np.diff(z) < 0), "descending storage keeps stored order, positions step along -z"
    np.testing.assert_allclose(np.diff(z), -3.0, atol=1e-6)
    again = write_dicom_series(image, str(tmp_path / "t"), who)
    assert pydicom.dcmread(again[0]).SOPInstanceUID == first.SOPInstanceUID, "UIDs are deterministic"


def test_write_dataset_msd_nifti_and_dicom(tmp_path):
    seen = []
    summary = write_dataset(str(tmp_path), "btcv", 2, seed=3, shape_zyx=SMALL, formats=("nifti", "dicom"),
                            progress=seen.append)
    assert seen == [1, 2]
    root = summary["folders"]["nifti"]
    assert root == str(tmp_path / "PhantomBTCV") and summary["folders"]["dicom"] == str(tmp_path / "PhantomBTCV_dicom")
    assert summary["labels"] == KINDS["btcv"] and summary["cases"] == ["btcv_0000", "btcv_0001"]
    doc = json.load(open(os.path.join(root, "dataset.json")))
    assert doc["labels"] == {str(k): v for k, v in KINDS["btcv"].items()} and doc["modality"] == {"0": "CT"}
    assert doc["numTraining"] == 2 and len(doc["training"]) == 2
    for entry, case in zip(doc["training"], summary["cases"]):
        assert entry == {"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"}
        image, label = generate_case("btcv", case_seed(3, "btcv", int(case[-4:])), SMALL)
        back = sitk.ReadImage(os.path.join(root, entry["image"]))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(back), image.array)
        label_back = sitk.ReadImage(os.path.join(root, entry["label"]))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(label_back), label.array)
        series = read_series(os.path.join(summary["folders"]["dicom"], case))
        assert series.GetSize() == image.to_sitk().GetSize()
    names = {str(pydicom.dcmread(os.path.join(summary["folders"]["dicom"], c, "IM0001.dcm")).PatientName)
             for c in summary["cases"]}
    assert names == {"PHANTOM^CASE0000", "PHANTOM^CASE0001"}


def test_pool_dataset_has_images_only(tmp_path):
    summary = write_dataset(str(tmp_path), "pool", 2, seed=1, shape_zyx=SMALL, name="MyPool")
    root = summary["folders"]["nifti"]
    assert root.endswith("MyPool") and not os.path.exists(os.path.join(root, "labelsTr"))
    doc = json.load(open(os.path.join(root, "dataset.json")))
    assert doc["labels"] == {} and all(set(e) == {"image"} for e in doc["training"])
    assert len(os.listdir(os.path.join(root, "imagesTr"))) == 2


def test_kinds_get_different_bodies_from_one_dataset_seed():
    assert case_seed(0, "btcv", 0) != case_seed(0, "lits", 0) != case_seed(0, "btcv", 1)


@pytest.mark.parametrize(("args", "message"), [
    (dict(kind="ct"), "unknown phantom kind"), (dict(formats=("nrrd",)), "formats"),
    (dict(n_cases=-1), "n_cases"),
])
def test_bad_requests_are_refused(tmp_path, args, message):
    kw = dict(out_dir=str(tmp_path), kind="btcv", n_cases=1, formats=("nifti",)) | args
    with pytest.raises(ValueError, match=message):
        write_dataset(**kw)


def test_render_case_refuses_bad_shapes():
    with pytest.raises(ValueError, match="shape_zyx"):
        render_case("btcv", 0, (0, 10, 10))
