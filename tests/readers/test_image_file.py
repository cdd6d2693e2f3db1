"""NIfTI / NRRD / MHA reading, CT value checks, MSD and plain-folder discovery."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from storage.errors import RefusedInput, UnreadableInput
from storage.readers import CaseSource, discover_cases, read_case


def _ct(shape=(6, 7, 8), seed: int = 0) -> np.ndarray:
    """(x, y, z)-ordered nibabel array with air and tissue values."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(-1000, 1500, size=shape).astype(np.int16)
    return arr


def _case(path: Path, label: Path | None = None) -> CaseSource:
    return CaseSource(path.name, "image", (str(path),), str(label) if label else None, "train")


def _lps_point(vol, ijk) -> np.ndarray:
    d = np.asarray(vol.direction).reshape(3, 3)
    return np.asarray(vol.origin_mm) + d @ (np.asarray(ijk, float) * np.asarray(vol.spacing_mm))


@pytest.mark.parametrize(("sform_code", "qform_code"), [(1, 1), (2, 1), (0, 1), (1, 0)])
def test_nifti_geometry_follows_the_standard(tmp_path: Path, sform_code: int, qform_code: int) -> None:
    qform = np.diag([1.0, 2.0, 3.0, 1.0])
    qform[:3, 3] = [10, 20, 30]
    sform = np.array([[0, -1.5, 0, 5], [2.5, 0, 0, 6], [0, 0, 1, 7], [0, 0, 0, 1.0]])
    img = nib.Nifti1Image(_ct(), None)
    img.set_qform(qform, code=qform_code)
    img.set_sform(sform, code=sform_code)
    path = tmp_path / "ct.nii.gz"
    nib.save(img, path)
    vol, _, meta = read_case(_case(path))
    best = sform if sform_code > 0 else qform
    for ijk in [(0, 0, 0), (5, 6, 7), (2, 3, 1)]:
        ras = best @ np.array([*ijk, 1.0])
        np.testing.assert_allclose(_lps_point(vol, ijk), [-ras[0], -ras[1], ras[2]], atol=1e-5)
    assert meta["format"] == "nifti" and meta["original_size"] == [6, 7, 8]
    np.testing.assert_array_equal(vol.array, _ct().transpose(2, 1, 0))


def test_nifti_scaling_is_applied(tmp_path: Path) -> None:
    raw = (np.arange(6 * 7 * 8).reshape(6, 7, 8) % 300).astype(np.int16)
    img = nib.Nifti1Image(raw, np.eye(4))
    img.header.set_slope_inter(10.0, -1024.0)
    nib.save(img, tmp_path / "s.nii")
    vol, _, _ = read_case(_case(tmp_path / "s.nii"))
    np.testing.assert_allclose(vol.array, (raw * 10.0 - 1024.0).transpose(2, 1, 0))


@pytest.mark.parametrize(
    ("array", "reason"),
    [
        (np.zeros((4, 5, 6, 2), np.int16), "4D image"),
        (np.where(_ct() > 0, np.nan, -1000.0).astype(np.float32), "NaN"),
        (np.random.default_rng(1).random((6, 7, 8)).astype(np.float32), "Hounsfield"),
        (np.full((6, 7, 8), 40, np.int16), "Hounsfield"),
        (_ct(shape=(6, 7, 2)), "at least 3"),
    ],
)
def test_refuses_non_ct_like_images(tmp_path: Path, array: np.ndarray, reason: str) -> None:
    nib.save(nib.Nifti1Image(array, np.eye(4)), tmp_path / "x.nii.gz")
    with pytest.raises(RefusedInput, match=reason):
        read_case(_case(tmp_path / "x.nii.gz"))


def test_int32_and_float_are_accepted(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(_ct().astype(np.int32), np.eye(4)), tmp_path / "i.nii.gz")
    nib.save(nib.Nifti1Image(_ct().astype(np.float32) + 0.25, np.eye(4)), tmp_path / "f.nii.gz")
    assert read_case(_case(tmp_path / "i.nii.gz"))[0].array.dtype == np.int16
    assert read_case(_case(tmp_path / "f.nii.gz"))[0].array.dtype == np.float32


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".mhd"])
def test_sitk_formats_round_trip(tmp_path: Path, suffix: str) -> None:
    arr = _ct().transpose(2, 1, 0)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.6, 2.0))
    img.SetOrigin((1.0, 2.0, 3.0))
    img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
    sitk.WriteImage(img, str(tmp_path / f"c{suffix}"))
    vol, _, meta = read_case(_case(tmp_path / f"c{suffix}"))
    np.testing.assert_array_equal(vol.array, arr)
    assert vol.spacing_mm == pytest.approx((0.5, 0.6, 2.0)) and vol.direction == (-1, 0, 0, 0, -1, 0, 0, 0, 1)
    assert meta["format"] in ("nrrd", "metaimage")


def test_corrupt_file_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "bad.nii.gz").write_bytes(b"not really gzip")
    with pytest.raises(UnreadableInput):
        read_case(_case(tmp_path / "bad.nii.gz"))


def _write_msd(root: Path) -> None:
    for name, seed in (("liver_0", 0), ("liver_1", 1)):
        nib.save(nib.Nifti1Image(_ct(seed=seed), np.diag([0.8, 0.8, 2.0, 1.0])), root / "imagesTr" / f"{name}.nii.gz")
        lab = (_ct(seed=seed) > 500).astype(np.uint8)
        nib.save(nib.Nifti1Image(lab, np.diag([0.8, 0.8, 2.0, 1.0])), root / "labelsTr" / f"{name}.nii.gz")
    nib.save(nib.Nifti1Image(_ct(seed=2), np.eye(4)), root / "imagesTs" / "liver_9.nii.gz")
    (root / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"\0\5\26\7 AppleDouble")
    (root / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "liver"}}))


def test_msd_layout(tmp_path: Path) -> None:
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (tmp_path / sub).mkdir()
    _write_msd(tmp_path)
    cases, problems, info = discover_cases(str(tmp_path))
    assert info == {"layout": "msd", "label_names": {0: "background", 1: "liver"},
                    "ignored": ["imagesTr/._liver_0.nii.gz"]} and problems == []  # the macOS sidecar
    assert [(c.case_id, c.split, c.label_uri is not None) for c in cases] == [
        ("liver_0", "train", True), ("liver_1", "train", True), ("liver_9", "test", False)]
    image, label, _ = read_case(cases[1])
    assert label is not None and label.array.dtype == np.uint8
    np.testing.assert_array_equal(label.array, (image.array > 500).astype(np.uint8))


def test_label_on_another_grid_is_refused(tmp_path: Path) -> None:
    nib.save(nib.Nifti1Image(_ct(), np.eye(4)), tmp_path / "i.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((6, 7, 8), np.uint8), np.diag([1, 1, 2.0, 1])), tmp_path / "l.nii.gz")
    with pytest.raises(RefusedInput, match="spacing"):
        read_case(_case(tmp_path / "i.nii.gz", tmp_path / "l.nii.gz"))


def test_plain_folder_with_duplicate_stems_and_junk(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    nib.save(nib.Nifti1Image(_ct(), np.eye(4)), tmp_path / "ct1.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(_ct()), str(tmp_path / "a" / "ct1.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(_ct()), str(tmp_path / "b.mha"))
    (tmp_path / "readme.md").write_text("hello")
    cases, problems, info = discover_cases(str(tmp_path))
    assert info["layout"] == "folder" and problems == []
    ids = [c.case_id for c in cases]
    assert ids == sorted(ids) and len(set(ids)) == 3 and "b" in ids
    assert sum(i.startswith("ct1-") for i in ids) == 2
    assert discover_cases(str(tmp_path))[0] == cases
