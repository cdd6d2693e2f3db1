"""Header-only spacing probes agree with what the readers will read."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from storage.probe import probe_spacing
from storage.readers import CaseSource, read_case


def _source(path: Path) -> CaseSource:
    return CaseSource(case_id=path.stem, kind="image", image_uris=(str(path),), label_uri=None, split="unlabelled")


def test_nifti_probe_follows_the_sform_like_the_reader(tmp_path: Path):
    data = np.full((20, 16, 12), -1000, dtype=np.int16)
    data[5:15, 4:12, 3:9] = 40
    img = nib.Nifti1Image(data, np.diag([0.7, 0.8, 2.5, 1.0]))
    img.set_qform(None, code=0)
    img.set_sform(np.diag([0.7, 0.8, 2.5, 1.0]), code=2)
    img.header["pixdim"][1:4] = [1.0, 1.0, 1.0]  # disagrees with the sform, which the standard prefers
    path = tmp_path / "ct.nii.gz"
    nib.save(img, path)
    probed = probe_spacing(_source(path))
    image, _, _ = read_case(_source(path))
    assert np.allclose(probed, (0.7, 0.8, 2.5))
    assert np.allclose(probed, image.spacing_mm)


def test_probe_reports_canonical_axis_order_for_a_permuted_nrrd(tmp_path: Path):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.full((10, 12, 14), -500, dtype=np.int16))
    img.SetSpacing((0.5, 0.9, 3.0))
    img.SetDirection((0, 0, 1, 1, 0, 0, 0, 1, 0))  # image x -> patient y, y -> z, z -> x
    path = tmp_path / "ct.nrrd"
    sitk.WriteImage(img, str(path))
    assert np.allclose(probe_spacing(_source(path)), (3.0, 0.5, 0.9))
