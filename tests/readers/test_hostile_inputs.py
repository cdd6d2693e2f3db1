"""Hostile input at ingest: case ids are unique by construction (every shape of two inputs mapping to
one id is resolved to distinct, stable ids or refused, and a rerun never lets another input
overwrite an existing case); labels the dataset does not declare are refused; a header that claims
more than its file can hold is refused before any allocation."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from storage.ingest import ingest_case
from storage.plan import Plan
from storage.readers import discover_cases
from storage.store import DatasetStore


def _nifti(path: Path, value: int, label: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    if label:
        data = np.zeros((12, 12, 6), dtype=np.uint8)
        data[3:9, 3:9, 1:5] = 1
    else:
        data = (rng.normal(40, 10, (12, 12, 6)) + value).astype(np.int16)
        data[:2] = -1000
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), str(path))
    return path


def _ids(root: Path) -> dict[str, str]:
    cases, problems, _ = discover_cases(str(root))
    assert not problems, problems
    ids = [c.case_id for c in cases]
    assert len(ids) == len(set(ids))
    return {c.source: c.case_id for c in cases}


def test_same_stem_in_two_formats_gets_two_ids(tmp_path):
    _nifti(tmp_path / "x.nii", 1)
    _nifti(tmp_path / "x.nii.gz", 2)
    ids = _ids(tmp_path)
    assert set(ids) == {"x.nii", "x.nii.gz"} and len(set(ids.values())) == 2
    assert ids == _ids(tmp_path)  # stable


def test_train_and_test_never_share_an_id_and_the_labelled_case_keeps_its_name(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"labels": {"0": "background", "1": "liver"}}))
    _nifti(tmp_path / "imagesTr" / "x.nii.gz", 1)
    _nifti(tmp_path / "labelsTr" / "x.nii.gz", 1, label=True)
    _nifti(tmp_path / "imagesTs" / "x.nii.gz", 2)
    ids = _ids(tmp_path)
    assert ids["imagesTr/x.nii.gz"] == "x" and ids["imagesTs/x.nii.gz"].startswith("x-")


def test_a_file_named_like_another_files_hashed_id_is_not_overwritten(tmp_path):
    _nifti(tmp_path / "x.nii.gz", 1)
    _nifti(tmp_path / "dup" / "x.nii.gz", 2)
    hashed = _ids(tmp_path)["dup/x.nii.gz"]
    _nifti(tmp_path / f"{hashed}.nii.gz", 3)  # a file literally named like that id
    ids = _ids(tmp_path)
    assert len(ids) == 3 and ids[f"{hashed}.nii.gz"] == hashed
    assert ids["dup/x.nii.gz"] != hashed  # the hashed one moved to a longer hash


def test_a_rerun_with_another_source_for_an_existing_id_is_refused(tmp_path):
    root, store = tmp_path / "in", str(tmp_path / "store")
    _nifti(root / "a" / "x.nii.gz", 1)
    plan = Plan(target_spacing_mm=(2.0, 2.0, 3.0))
    ds = DatasetStore(store, "d", create=True)
    ds.ensure(plan.to_dict(), {})
    [case] = discover_cases(str(root))[0]
    assert ingest_case(case, store, "d", plan).status == "done"
    assert ds.case_record("x")["source"] == "a/x.nii.gz"
    moved = tmp_path / "in2"
    _nifti(moved / "b" / "x.nii.gz", 5)  # another input that maps to the same id
    [other] = discover_cases(str(moved))[0]
    for force in (False, True):
        res = ingest_case(other, store, "d", plan, force=force)
        assert res.status == "failed" and "a/x.nii.gz" in res.reason and "b/x.nii.gz" in res.reason
    assert ds.case_record("x")["status"] == "done" and ds.case_record("x")["source"] == "a/x.nii.gz"
    # the same input again (even from a moved input root) is the same case
    moved_same = tmp_path / "in3"
    _nifti(moved_same / "a" / "x.nii.gz", 1)
    [same] = discover_cases(str(moved_same))[0]
    assert ingest_case(same, store, "d", plan).status == "skipped"


@pytest.mark.parametrize("n", [2, 3])
def test_ids_are_unique_for_many_same_stems(tmp_path, n):
    for i in range(n):
        _nifti(tmp_path / f"f{i}" / "scan.nii.gz", i)
    assert len(set(_ids(tmp_path).values())) == n


def _msd_case(root: Path, labels: dict | None, values: tuple[int, ...]):
    root.mkdir(parents=True, exist_ok=True)
    if labels is not None:
        (root / "dataset.json").write_text(json.dumps({"labels": labels}))
    _nifti(root / "imagesTr" / "c.nii.gz", 1)
    lab = root / "labelsTr" / "c.nii.gz"
    lab.parent.mkdir(parents=True, exist_ok=True)
    data = np.zeros((12, 12, 6), dtype=np.uint8)
    for i, v in enumerate(values):
        data[2 + 2 * i:4 + 2 * i, 3:9, 1:5] = v
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0])), str(lab))
    cases, _, info = discover_cases(str(root))
    return cases[0], info["label_names"]


@pytest.mark.parametrize("labels,values,expect", [
    ({"0": "background", "1": "liver"}, (1, 2, 255), "label values [2, 255] are not declared"),
    (None, (1,), "declares no label names"),
])
def test_labels_the_dataset_does_not_declare_are_refused_at_ingest(tmp_path, labels, values, expect):
    case, names = _msd_case(tmp_path / "in", labels, values)
    store, plan = str(tmp_path / "store"), Plan(target_spacing_mm=(2.0, 2.0, 3.0))
    ds = DatasetStore(store, "d", create=True)
    ds.ensure(plan.to_dict(), names)
    res = ingest_case(case, store, "d", plan)
    assert res.status == "failed" and expect in res.reason and res.source.endswith("labelsTr/c.nii.gz")


def test_declared_labels_are_accepted(tmp_path):
    case, names = _msd_case(tmp_path / "in", {"0": "background", "1": "liver", "2": "tumour"}, (1, 2))
    store, plan = str(tmp_path / "store"), Plan(target_spacing_mm=(2.0, 2.0, 3.0))
    ds = DatasetStore(store, "d", create=True)
    ds.ensure(plan.to_dict(), names)
    assert ingest_case(case, store, "d", plan).status == "done"


def _lying_header(path: Path, dims: tuple[int, int, int], gz: bool) -> Path:
    """A valid tiny NIfTI whose header is then edited to claim ``dims`` voxels."""
    img = nib.Nifti1Image(np.zeros((8, 8, 4), dtype=np.int16), np.eye(4))
    img.header.set_data_shape(dims)
    raw = img.header.binaryblock + b"\0" * 4 + np.zeros(256, dtype=np.int16).tobytes()
    if gz:
        import gzip
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


@pytest.mark.parametrize("name,gz", [("big.nii", False), ("big.nii.gz", True)])
def test_a_header_claiming_more_than_the_file_holds_is_refused_before_allocation(tmp_path, name, gz):
    import resource

    from storage.errors import RefusedInput
    from storage.readers.image_file import read_image_file

    path = _lying_header(tmp_path / name, (1000, 1000, 1000), gz)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(RefusedInput, match="header claims 1000x1000x1000"):
        read_image_file(str(path))
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 200_000  # nowhere near the 2 GB the header claims


def test_the_voxel_limit_is_configurable(tmp_path, monkeypatch):
    from storage.errors import RefusedInput
    from storage.readers.image_file import read_image_file

    path = _nifti(tmp_path / "ok.nii.gz", 1)
    read_image_file(str(path))
    monkeypatch.setenv("PGL_MAX_VOXELS", "100")
    with pytest.raises(RefusedInput, match="more than the limit 100"):
        read_image_file(str(path))
