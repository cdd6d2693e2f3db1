"""Discovery and reading from a real (local moto) S3 endpoint give what the local copy gives."""

from __future__ import annotations

from pathlib import Path

import fsspec
import nibabel as nib
import numpy as np
import pytest

from storage.checksum import sha256_files
from storage.errors import RefusedInput
from storage.readers import discover_cases, read_case
from tests.readers.synth import write_series

pytestmark = pytest.mark.s3


def _upload(local: Path, uri: str, storage_options: dict) -> None:
    fs, root = fsspec.core.url_to_fs(uri, **storage_options)
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.put_file(str(path), f"{root}/{path.relative_to(local).as_posix()}")


def test_s3_dicom_and_files_match_local(tmp_path: Path, s3_server, s3_bucket: str) -> None:
    opts = s3_server.storage_options
    write_series(tmp_path / "series", n=4)
    write_series(tmp_path / "gap", positions=[[0, 0, 0], [0, 0, 2], [0, 0, 9]])
    rng = np.random.default_rng(0)
    nib.save(nib.Nifti1Image(rng.integers(-1000, 1000, (5, 6, 7)).astype(np.int16), np.eye(4)), tmp_path / "v.nii.gz")
    uri = f"{s3_bucket}/raw"
    _upload(tmp_path, uri, opts)
    local_cases, _, _ = discover_cases(str(tmp_path))
    remote_cases, problems, info = discover_cases(uri, storage_options=opts)
    assert problems == [] and info["layout"] == "folder"
    assert [c.case_id for c in remote_cases] == [c.case_id for c in local_cases]
    assert all(u.startswith("s3://") for c in remote_cases for u in c.image_uris)
    for local, remote in zip(local_cases, remote_cases):
        try:
            img_l, _, meta_l = read_case(local)
        except RefusedInput as exc:
            assert "spacing" in exc.reason or "gap" in exc.reason
            with pytest.raises(RefusedInput) as remote_exc:
                read_case(remote, storage_options=opts)
            assert remote_exc.value.reason == exc.reason and remote_exc.value.source == exc.source
            continue
        img_r, _, meta_r = read_case(remote, storage_options=opts)
        np.testing.assert_array_equal(img_r.array, img_l.array)
        assert meta_r == meta_l
        assert meta_r["source_checksum"] == sha256_files(remote.image_uris, opts)
