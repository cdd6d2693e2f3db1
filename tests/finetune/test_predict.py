"""``predict_file``: the label map comes back with exactly the input's geometry, whatever the
input's orientation (LPS / RAS, oblique, descending slices) or format (NIfTI, NRRD, MHA, DICOM)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from pgl_core.contracts import load_segmenter
from pgl_core.predict import predict_file, predict_volume
from storage.errors import RefusedInput, UnreadableInput
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


def _truncated_ct(tmp_path) -> str:
    image, _ = generate_case("kits", 3, (12, 32, 32))
    src = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image.to_sitk(), str(src))
    data = src.read_bytes()
    src.write_bytes(data[: len(data) * 6 // 10])  # SimpleITK alone would zero-fill the missing slices
    return str(src)


def test_a_truncated_input_is_refused_by_predict_and_the_cli(trained, tmp_path, capsys):
    from flows.cli import main as pgl

    src, out = _truncated_ct(tmp_path), tmp_path / "labels.nii.gz"
    with pytest.raises(UnreadableInput, match="truncated"):
        predict_file(trained.model_dir, src, str(out), device="cpu")
    assert pgl(["predict", "--model", trained.model_dir, "--input", src, "--output", str(out), "--device", "cpu"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and src in err[0] and "truncated" in err[0]
    assert not out.exists()


def test_predict_applies_the_training_plans_reader_settings(trained, tmp_path):
    """The contract carries the dataset's plan; a contract without one (older) gets the defaults."""
    model = tmp_path / "model"
    shutil.copytree(trained.model_dir, model)
    contract = json.loads((model / "contract.json").read_text())
    assert contract["plan"]["target_spacing_mm"] == contract["spacing_mm"]
    image, _ = generate_case("kits", 3, (12, 32, 32))
    src = str(tmp_path / "ct.mha")
    sitk.WriteImage(image.to_sitk(), src)
    (model / "contract.json").write_text(json.dumps({**contract, "plan": {"spacing_range_mm": [0.1, 0.5]}}))
    with pytest.raises(RefusedInput, match="outside the plausible CT range 0.1-0.5 mm"):
        predict_file(str(model), src, str(tmp_path / "o.mha"), device="cpu")
    photo = sitk.GetImageFromArray(np.random.default_rng(0).integers(0, 256, (12, 32, 32)).astype(np.uint8))
    sitk.WriteImage(photo, src)
    (model / "contract.json").write_text(json.dumps({k: v for k, v in contract.items() if k != "plan"}))
    with pytest.raises(RefusedInput, match="Hounsfield"):
        predict_file(str(model), src, str(tmp_path / "o.mha"), device="cpu")


def test_a_dicom_folder_with_an_unreadable_slice_is_refused(tmp_path):
    from pgl_core.predict import input_source
    from tests.readers.synth import write_series

    paths = write_series(tmp_path / "series", n=4, compress="deflate")
    data = paths[0].read_bytes()
    paths[0].write_bytes(data[: len(data) - 20])  # its header cannot be read: its series is unknown
    with pytest.raises(RefusedInput, match="IMG0004"):
        input_source(str(tmp_path / "series"))
