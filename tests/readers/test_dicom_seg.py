"""``storage.dicom_seg``: a label map on a DICOM series' grid becomes a SEG whose frames lie on the
source slices (oblique, descending series included); a label map on another grid is refused."""

from __future__ import annotations

import numpy as np
import pytest

from phantoms import generate_case
from phantoms.writers import DicomIdentity, write_dicom_series
from storage.dicom_seg import write_dicom_seg
from storage.errors import RefusedInput
from storage.readers import discover_cases, read_case
from storage.seg_terms import LOCAL_SCHEME, property_codes
from storage.volume import Volume
from tests.readers.seg_check import check_seg

NAMES = {0: "background", 1: "kidney", 2: "kidney_tumour", 3: "phantom_organ_left"}


def _series(tmp_path, **acquisition):
    image, label = generate_case("kits", 4, (16, 24, 28), **acquisition)
    folder = tmp_path / "series"
    write_dicom_series(image, str(folder), DicomIdentity.synthetic(0, 4, 4, "seg"))
    cases, _, _ = discover_cases(str(folder))
    volume, _, _ = read_case(cases[0])
    return folder, cases[0], volume


@pytest.mark.parametrize("acquisition", [{"oblique": False, "descending": False},
                                         {"oblique": True, "descending": True}], ids=["axial", "oblique-descending"])
def test_seg_frames_lie_on_the_source_slices(tmp_path, acquisition):
    folder, source, volume = _series(tmp_path, ras=False, **acquisition)
    labels = np.zeros(volume.shape_zyx, np.uint8)
    labels[2:6, 5:15, 6:20] = 1
    labels[3:5, 8:12, 9:13] = 2
    labels[7, 1:3, 1:3] = 3
    on_grid = Volume(labels, volume.spacing_mm, volume.origin_mm, volume.direction)
    out = tmp_path / "case.seg.dcm"
    info = write_dicom_seg(on_grid, source, NAMES, str(out), "test 1.0")
    ds = check_seg(out, folder, labels, NAMES)
    assert info["frames"] == int(ds.NumberOfFrames) and info["segments"] == 3
    assert info["referenced_series_uid"] == ds.ReferencedSeriesSequence[0].SeriesInstanceUID
    codes = [str(s.SegmentedPropertyTypeCodeSequence[0].CodeMeaning) for s in ds.SegmentSequence]
    assert codes == ["Kidney", "Neoplasm", "phantom_organ_left"]  # SNOMED CT where pydicom knows the organ


def test_a_label_map_on_another_grid_is_refused(tmp_path):
    folder, source, volume = _series(tmp_path, ras=False, oblique=False, descending=False)
    shifted = Volume(np.zeros(volume.shape_zyx, np.uint8), volume.spacing_mm,
                     tuple(np.asarray(volume.origin_mm) + [0, 0, 1.5]), volume.direction)
    with pytest.raises(RefusedInput, match="slice position"):
        write_dicom_seg(shifted, source, NAMES, str(tmp_path / "x.seg.dcm"), "test")
    fewer = Volume(np.zeros((4, *volume.shape_zyx[1:]), np.uint8), volume.spacing_mm, volume.origin_mm,
                   volume.direction)
    with pytest.raises(RefusedInput, match="4 slices"):
        write_dicom_seg(fewer, source, NAMES, str(tmp_path / "x.seg.dcm"), "test")
    assert not (tmp_path / "x.seg.dcm").exists()


def test_property_codes():
    category, kind = property_codes("inferior_vena_cava", 8)
    assert (category.meaning, kind.value) == ("Anatomical Structure", "64131007")
    category, kind = property_codes("liver_tumour", 2)
    assert (category.value, kind.value) == ("49755003", "108369006")
    _, local = property_codes("my organ", 5)
    assert (local.scheme_designator, local.value, local.meaning) == (LOCAL_SCHEME, "PGL5", "my organ")


def test_an_enhanced_multiframe_source_is_refused_before_any_work(tmp_path):
    from storage.dicom_seg import source_headers
    from tests.readers.synth import write_enhanced

    write_enhanced(tmp_path / "enh" / "enh.dcm", z_positions=[4.0, 0.0, 2.0], slopes=[1.0] * 3,
                   intercepts=[-1024.0] * 3)
    (source,), _, _ = discover_cases(str(tmp_path / "enh"))
    with pytest.raises(RefusedInput, match="enhanced"):
        source_headers(source)
