"""The preprocess flow end to end: phantoms -> Zarr store, through Prefect and Dask."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from flows.cli import main
from flows.stages.preprocess import preprocess
from storage.plan import PlanRequest
from storage.store import DatasetStore

pytestmark = pytest.mark.flows

SPACING = (2.5, 2.5, 4.0)


def _cfg() -> PlanRequest:
    return PlanRequest(target_spacing_mm=SPACING)


def _stored_image(ds: DatasetStore, case: str, array: str = "image") -> sitk.Image:
    attrs = ds.case_attrs(case)
    img = sitk.GetImageFromArray(ds.read_full(case, array))
    img.SetSpacing(attrs["spacing"])
    img.SetOrigin(attrs["origin"])
    img.SetDirection(attrs["direction"])
    return img


def test_msd_nifti_ingest_round_trips_in_physical_space(phantom_root: Path, tmp_path: Path):
    store = str(tmp_path / "store")
    summary = preprocess(str(phantom_root / "PhantomSpleen"), "spleen", store, _cfg(), n_workers=2)
    assert summary.ok and len(summary.done) == 3 and not summary.skipped
    ds = DatasetStore(store, "spleen")
    assert ds.done_cases() == sorted(summary.done)
    assert ds.manifest()["label_names"] == {"0": "background", "1": "spleen"}
    for case in ds.done_cases():
        assert ds.read_full(case).dtype == np.int16 and ds.read_full(case, "label").dtype == np.uint8
        assert np.allclose(ds.case_attrs(case)["spacing"], SPACING)
        src_label = sitk.ReadImage(str(phantom_root / "PhantomSpleen" / "labelsTr" / f"{case}.nii.gz"))
        # The stored label, rebuilt from its attributes and sampled on the source grid, is the source label.
        back = sitk.Resample(_stored_image(ds, case, "label"), src_label, sitk.Transform(),
                             sitk.sitkNearestNeighbor, 0)
        a, b = sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(src_label)
        both = (a > 0) | (b > 0)
        assert both.sum() > 50
        assert ((a > 0) & (b > 0)).sum() / both.sum() > 0.7  # overlap despite 2.5x4 mm resampling
        # centroids agree in physical space to within a voxel of the coarser grid
        def centroid(img):
            idx = np.argwhere(sitk.GetArrayFromImage(img) > 0).mean(0)[::-1]
            return np.array(img.TransformContinuousIndexToPhysicalPoint(idx.tolist()))
        assert np.linalg.norm(centroid(_stored_image(ds, case, "label")) - centroid(src_label)) < 4.0


def test_rerun_skips_adding_a_case_processes_only_it_and_force_redoes(phantom_root: Path, tmp_path: Path):
    src = tmp_path / "in"
    shutil.copytree(phantom_root / "PhantomPool", src)
    extra = sorted((src / "imagesTr").glob("*.nii.gz"))[-1]
    held_back = tmp_path / extra.name
    shutil.move(extra, held_back)
    store = str(tmp_path / "store")
    first = preprocess(str(src), "pool", store, _cfg(), n_workers=1)
    assert len(first.done) == 1
    shutil.move(held_back, src / "imagesTr" / extra.name)
    second = preprocess(str(src), "pool", store, _cfg(), n_workers=1)
    assert second.skipped == first.done and len(second.done) == 1
    third = preprocess(str(src), "pool", store, _cfg(), force=True, n_workers=1)
    assert sorted(third.done) == sorted(first.done + second.done) and not third.skipped
    assert DatasetStore(store, "pool").done_cases() == sorted(third.done)


def test_dicom_series_ingest_equals_nifti_and_stores_no_patient_data(phantom_root: Path, tmp_path: Path):
    store = tmp_path / "store"
    dicom = preprocess(str(phantom_root / "PhantomSpleen_dicom"), "spleen_dicom", str(store), _cfg())
    nifti = preprocess(str(phantom_root / "PhantomSpleen"), "spleen_nifti", str(store), _cfg())
    assert len(dicom.done) == 3 and dicom.ok
    ds_d, ds_n = DatasetStore(str(store), "spleen_dicom"), DatasetStore(str(store), "spleen_nifti")
    # same phantoms, two encodings: identical geometry and near-identical voxels once canonical
    by_shape = {tuple(ds_n.shape(c)): c for c in ds_n.done_cases()}
    for case in ds_d.done_cases():
        twin = by_shape[tuple(ds_d.shape(case))]
        assert np.allclose(ds_d.case_attrs(case)["origin"], ds_n.case_attrs(twin)["origin"], atol=1e-3)
        diff = np.abs(ds_d.read_full(case).astype(int) - ds_n.read_full(twin).astype(int))
        assert np.median(diff) <= 1 and diff.mean() < 2
    # de-identification: no byte of the store holds the phantoms' patient name or id
    raw = b"".join(p.read_bytes() for p in store.rglob("*") if p.is_file())
    assert b"PHANTOM^CASE" not in raw and b"PHX-" not in raw and b"PHANTOM" not in raw.upper()


def test_bad_cases_are_reported_and_the_rest_complete(phantom_root: Path, tmp_path: Path, capsys):
    src = tmp_path / "mixed"
    src.mkdir()
    for f in sorted((phantom_root / "PhantomPool" / "imagesTr").glob("*.nii.gz")):
        shutil.copy(f, src / f.name)
    good = sorted(src.glob("*.nii.gz"))[0].read_bytes()
    (src / "truncated.nii.gz").write_bytes(good[: len(good) // 3])
    (src / "garbage.nii").write_bytes(b"not a nifti file at all" * 20)
    rc = main(["preprocess", "--input", str(src), "--dataset", "mixed", "--store", str(tmp_path / "s"),
               "--target-spacing", "2.5,2.5,4", "--workers", "1"])
    out = capsys.readouterr().out
    assert rc == 1
    assert "2 done" in out and "2 failed" in out
    assert "truncated" in out and "garbage" in out
    manifest = DatasetStore(str(tmp_path / "s"), "mixed").manifest()
    failed = {k: v for k, v in manifest["cases"].items() if v["status"] == "failed"}
    assert set(failed) == {"truncated", "garbage"} and all(v.get("reason") for v in failed.values())


def test_cli_usage_errors_exit_2(tmp_path: Path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["preprocess", "--input", str(tmp_path)])
    assert exc.value.code == 2
    rc = main(["preprocess", "--input", str(tmp_path), "--dataset", "d", "--store", str(tmp_path / "s"),
               "--set", "preprocess.no_such_key=1"])
    assert rc == 2
    assert "no_such_key" in capsys.readouterr().err


@pytest.mark.s3
def test_s3_input_and_store(phantom_root: Path, s3_server, s3_env):
    bucket = s3_server.make_bucket()
    client = s3_server.client()
    for f in (phantom_root / "PhantomSpleen").rglob("*"):
        if f.is_file():
            key = "raw/" + str(f.relative_to(phantom_root))
            client.upload_file(str(f), bucket.removeprefix("s3://"), key)
    store = f"{bucket}/store"
    summary = preprocess(f"{bucket}/raw/PhantomSpleen", "spleen", store, _cfg(), n_workers=2)
    assert summary.ok and len(summary.done) == 3
    ds = DatasetStore(store, "spleen", s3_server.storage_options)
    case = ds.done_cases()[0]
    assert ds.read_full(case, "label").max() == 1
    assert ds.manifest()["plan"]["shard_vox"] == [128, 256, 256]
    again = preprocess(f"{bucket}/raw/PhantomSpleen", "spleen", store, _cfg(), n_workers=2)
    assert len(again.skipped) == 3
