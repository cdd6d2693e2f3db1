"""``predict_file``: the label map comes back with exactly the input's geometry, whatever the
input's orientation (LPS / RAS, oblique, descending slices) or format (NIfTI, NRRD, MHA, DICOM)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from pgl_core.contracts import load_segmenter
from pgl_core.predict import predict_file, predict_volume
from storage.errors import RefusedInput
from phantoms import generate_case
from phantoms.writers import DicomIdentity, write_dicom_series
from storage.volume import Volume

ACQUISITIONS = {
    "lps": {"ras": False, "oblique": False, "descending": False},
    "ras": {"ras": True, "oblique": False, "descending": False},
    "oblique": {"ras": False, "oblique": True, "descending": False},
    "descending_ras_oblique": {"ras": True, "oblique": True, "descending": True},
}


def _assert_same_grid(out_path: str, in_image: sitk.Image, tol: float = 1e-4) -> np.ndarray:
    out = sitk.ReadImage(out_path)
    assert out.GetSize() == in_image.GetSize()
    np.testing.assert_allclose(out.GetSpacing(), in_image.GetSpacing(), rtol=0, atol=tol)
    np.testing.assert_allclose(out.GetOrigin(), in_image.GetOrigin(), rtol=0, atol=tol)
    np.testing.assert_allclose(out.GetDirection(), in_image.GetDirection(), rtol=0, atol=tol)
    labels = sitk.GetArrayFromImage(out)
    assert labels.dtype == np.uint8
    return labels


@pytest.mark.parametrize("name", sorted(ACQUISITIONS))
@pytest.mark.parametrize("suffix", [".nii.gz", pytest.param(".nrrd", marks=pytest.mark.slow)])
def test_output_has_the_input_geometry(trained, tmp_path, name, suffix):
    image, _ = generate_case("kits", 11, (20, 40, 44), **ACQUISITIONS[name])
    src = str(tmp_path / f"in{suffix}")
    sitk.WriteImage(image.to_sitk(), src)
    out = predict_file(trained.model_dir, src, str(tmp_path / f"out_{name}.mha"), device="cpu")
    labels = _assert_same_grid(out, sitk.ReadImage(src))
    assert set(np.unique(labels)) <= {0, 1, 2}


def test_orientation_does_not_change_the_prediction(trained):
    """The same anatomy stored LPS or RAS (same grid otherwise) gives the same labels per voxel position."""
    model, contract = load_segmenter(trained.model_dir)
    lps, _ = generate_case("kits", 5, (20, 40, 44), ras=False, oblique=False, descending=False)
    ras_arr = lps.array[:, ::-1, ::-1].copy()
    d = np.asarray(lps.direction).reshape(3, 3)
    size = np.asarray(lps.array.shape[::-1])
    far = np.asarray(lps.origin_mm) + d @ ((size - 1) * np.asarray(lps.spacing_mm) * [1, 1, 0])
    ras = Volume(ras_arr, lps.spacing_mm, tuple(far), tuple((d @ np.diag([-1, -1, 1])).reshape(-1)))
    a = predict_volume(model, contract, lps, "cpu").array
    b = predict_volume(model, contract, ras, "cpu").array
    assert (a > 0).any() and np.array_equal(a, b[:, ::-1, ::-1])


def test_dicom_series_folder(trained, tmp_path):
    image, _ = generate_case("kits", 3, (12, 32, 32), ras=False, oblique=False, descending=True)
    folder = tmp_path / "series"
    write_dicom_series(image, str(folder), DicomIdentity.synthetic(0, 3, 3, "t"))
    reader = sitk.ImageSeriesReader()
    reference = sitk.ReadImage(reader.GetGDCMSeriesFileNames(str(folder)))
    out = predict_file(trained.model_dir, str(folder), str(tmp_path / "dicom_labels.nii.gz"), device="cpu")
    _assert_same_grid(out, reference, tol=1e-3)


def test_refusals(trained, tmp_path):
    image, _ = generate_case("kits", 3, (12, 32, 32))
    src = str(tmp_path / "ct.nii.gz")
    sitk.WriteImage(image.to_sitk(), src)
    with pytest.raises(RefusedInput, match="must end with"):
        predict_file(trained.model_dir, src, str(tmp_path / "out.mhd"), device="cpu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(RefusedInput, match="exactly one image series"):
        predict_file(trained.model_dir, str(empty), str(tmp_path / "o.nii.gz"), device="cpu")
