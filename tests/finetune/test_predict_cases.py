"""``pgl predict`` on folders and lists: one output set per case (label map, ITK-SNAP and Slicer label
files, DICOM SEG for DICOM series), complete cases skipped, a bad case reported while the others
finish; the single-file mode writes the same files beside its output."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from flows.cli import main as pgl
from phantoms import generate_case
from phantoms.writers import DicomIdentity, write_dicom_series
from tests.readers.seg_check import check_seg

IDENTITY = DicomIdentity.synthetic(0, 7, 7, "predict")


def _inputs(tmp_path):
    """A folder with two NIfTI volumes and one DICOM series, and a truncated NIfTI elsewhere."""
    folder = tmp_path / "in"
    folder.mkdir()
    for i, name in enumerate(("a", "b")):
        image, _ = generate_case("kits", 20 + i, (16, 32, 32))
        sitk.WriteImage(image.to_sitk(), str(folder / f"{name}.nii.gz"))
    image, _ = generate_case("kits", 22, (16, 32, 32), ras=False, oblique=True, descending=True)
    write_dicom_series(image, str(folder / "series"), IDENTITY)
    bad = tmp_path / "bad.nii.gz"
    sitk.WriteImage(image.to_sitk(), str(bad))
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    return folder, bad


def _names(trained_dir) -> dict[int, str]:
    contract = json.loads((trained_dir / "contract.json").read_text())
    return {int(k): v for k, v in contract["label_names"].items()}


def _predict(capsys, *args):
    code = pgl(["predict", *args, "--device", "cpu"])
    return code, capsys.readouterr()


def test_a_folder_and_a_list_of_inputs(trained, tmp_path, capsys):
    model, out = Path(trained.model_dir), tmp_path / "out"
    folder, bad = _inputs(tmp_path)
    code, printed = _predict(capsys, "--model", str(model), "--input", str(folder), str(bad), "--output", str(out),
                             "--dicom-seg")
    assert code == 1, printed
    assert "3 done, 0 skipped" in printed.out and "1 failed" in printed.out
    failed = [line for line in printed.out.splitlines() if "FAILED" in line]
    assert len(failed) == 1 and "FAILED bad:" in failed[0] and "truncated" in failed[0] and str(bad) in failed[0]
    assert "DICOM SEG: 1 written, none for 2 non-DICOM" in printed.out
    dicom_id = next(p.name.split(".")[0] for p in out.glob("dcm-*.nii.gz"))
    for case in ("a", "b", dicom_id):
        for suffix in (".nii.gz", ".label_descriptions.txt", ".ctbl", ".prediction.json"):
            assert (out / f"{case}{suffix}").is_file(), (case, suffix)
    assert not (out / "bad.nii.gz").exists() and not (out / "a.seg.dcm").exists()

    names = _names(model)
    itksnap = [shlex.split(line) for line in (out / "a.label_descriptions.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert {int(row[0]): row[7] for row in itksnap if row[0] != "0"} == {v: n for v, n in names.items() if v}
    ctbl = [line.split() for line in (out / "a.ctbl").read_text().splitlines() if not line.startswith("#")]
    assert {int(row[0]): row[1] for row in ctbl} == names

    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{dicom_id}.nii.gz")))
    assert (labels > 0).any()
    check_seg(out / f"{dicom_id}.seg.dcm", folder / "series", labels, names)
    record = (out / f"{dicom_id}.prediction.json").read_text()
    for private in (IDENTITY.patient_name, IDENTITY.patient_id, IDENTITY.birth_date):
        assert private not in record and private not in printed.out + printed.err

    code, printed = _predict(capsys, "--model", str(model), "--input", str(folder), "--output", str(out),
                             "--dicom-seg")
    assert code == 0 and "0 done, 3 skipped" in printed.out, printed
    (out / "b.ctbl").unlink()  # an incomplete case is predicted again, the complete ones are not
    code, printed = _predict(capsys, "--model", str(model), "--input", str(folder), "--output", str(out))
    assert code == 0 and "1 done, 2 skipped" in printed.out and (out / "b.ctbl").is_file(), printed
    code, printed = _predict(capsys, "--model", str(model), "--input", str(folder), "--output", str(out), "--force")
    assert code == 0 and "3 done, 0 skipped" in printed.out, printed
    assert not (out / f"{dicom_id}.seg.dcm").exists()  # redone without --dicom-seg: no stale SEG beside it



def test_a_complete_case_asked_for_a_seg_again_is_redone(trained, tmp_path, capsys):
    image, _ = generate_case("kits", 23, (16, 32, 32))
    series = tmp_path / "series"
    write_dicom_series(image, str(series), IDENTITY)
    args = ["--model", trained.model_dir, "--input", str(series), "--output", str(tmp_path / "out")]
    assert _predict(capsys, *args)[0] == 0
    assert not list((tmp_path / "out").glob("*.seg.dcm"))
    code, printed = _predict(capsys, *args, "--dicom-seg")
    assert code == 0 and "1 done, 0 skipped" in printed.out and len(list((tmp_path / "out").glob("*.seg.dcm"))) == 1


def test_single_file_mode_writes_the_label_files_beside_its_output(trained, tmp_path, capsys):
    image, _ = generate_case("kits", 24, (16, 32, 32))
    src = tmp_path / "ct.mha"
    sitk.WriteImage(image.to_sitk(), str(src))
    out = tmp_path / "res" / "labels.nrrd"
    args = ["--model", trained.model_dir, "--input", str(src), "--output", str(out)]
    code, printed = _predict(capsys, *args, "--dicom-seg")
    assert code == 0 and f"wrote {out}" in printed.out and "no DICOM SEG" in printed.out, printed
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "labels.ctbl", "labels.label_descriptions.txt", "labels.nrrd", "labels.prediction.json"]
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))).shape, image.array.shape)
    code, printed = _predict(capsys, *args)
    assert code == 0 and "skipped" in printed.out


def test_usage_errors_of_the_new_modes(trained, tmp_path, capsys):
    image, _ = generate_case("kits", 25, (16, 32, 32))
    src = tmp_path / "ct.nii.gz"
    sitk.WriteImage(image.to_sitk(), str(src))
    code, printed = _predict(capsys, "--model", trained.model_dir, "--input", str(src), str(src), "--output",
                             str(tmp_path / "one.nii.gz"))
    assert code == 2 and "output folder" in printed.err
    empty = tmp_path / "empty"
    empty.mkdir()
    code, printed = _predict(capsys, "--model", trained.model_dir, "--input", str(empty), "--output",
                             str(tmp_path / "o"))
    assert code == 2 and "no CT volume" in printed.err and str(empty) in printed.err
    code, printed = _predict(capsys, "--model", trained.model_dir, "--input", str(tmp_path), "--output",
                             str(tmp_path / "preds"))
    assert code == 2 and "lies inside --input" in printed.err
