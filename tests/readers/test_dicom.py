"""DICOM series: grouping, ordering by position, refusals, rescale, Enhanced CT, compression."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from storage.errors import RefusedInput
from storage.readers import CaseSource, discover_cases, read_case
from tests.readers.synth import hu_slice, write_enhanced, write_series


def _only_case(folder: Path) -> CaseSource:
    cases, problems, info = discover_cases(str(folder))
    assert problems == [] and info["layout"] == "dicom"
    assert len(cases) == 1, cases
    return cases[0]


def _expected(n: int) -> np.ndarray:
    return np.stack([hu_slice(k) for k in range(n)])


def test_orders_by_position_not_name_or_instance_number(tmp_path: Path) -> None:
    write_series(tmp_path / "s", n=5)
    image, label, meta = read_case(_only_case(tmp_path))
    assert label is None
    np.testing.assert_array_equal(image.array, _expected(5))
    assert image.array.dtype == np.int16
    assert image.spacing_mm == pytest.approx((0.7, 0.8, 2.0))
    assert image.origin_mm == pytest.approx((-10.0, 20.0, 30.0))
    assert meta["original_size"] == [5, 6, 5] and meta["format"] == "dicom" and meta["modality"] == "CT"


def test_descending_positions_give_the_same_volume(tmp_path: Path) -> None:
    positions = [[-10.0, 20.0, 30.0 - 2.0 * k] for k in range(4)]  # slice 0 is the highest
    write_series(tmp_path, positions=positions)
    image, _, _ = read_case(_only_case(tmp_path))
    np.testing.assert_array_equal(image.array, _expected(4)[::-1])
    assert image.origin_mm == pytest.approx((-10.0, 20.0, 24.0))
    assert image.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))


def test_oblique_series_direction_has_the_normal_as_third_column(tmp_path: Path) -> None:
    c, s = np.cos(0.3), np.sin(0.3)
    write_series(tmp_path, iop=(1, 0, 0, 0, c, s), n=4, step_mm=1.5)
    image, _, _ = read_case(_only_case(tmp_path))
    d = np.asarray(image.direction).reshape(3, 3)
    np.testing.assert_allclose(d[:, 2], [0, -s, c], atol=1e-9)
    assert image.spacing_mm[2] == pytest.approx(1.5)
    np.testing.assert_array_equal(image.array, _expected(4))


@pytest.mark.parametrize(
    ("zs", "reason"),
    [
        ([0.0, 2.0, 4.0, 10.0, 12.0], "slice gap"),
        ([0.0, 2.0, 4.0, 5.0, 7.0], "non-uniform slice spacing"),
        ([0.0, 2.0, 2.0, 4.0], "duplicate slice position"),
        ([0.0, 2.0], "a volume needs at least 3"),
    ],
)
def test_refuses_bad_slice_positions(tmp_path: Path, zs: list[float], reason: str) -> None:
    write_series(tmp_path, positions=[[0.0, 0.0, z] for z in zs])
    with pytest.raises(RefusedInput, match=reason):
        read_case(_only_case(tmp_path))


def test_spacing_tolerance_is_configurable(tmp_path: Path) -> None:
    write_series(tmp_path, positions=[[0.0, 0.0, z] for z in (0.0, 2.0, 4.0, 6.3, 8.3)])
    case = _only_case(tmp_path)
    with pytest.raises(RefusedInput, match="slice gap"):
        read_case(case, spacing_tolerance=0.1)
    image, _, _ = read_case(case, spacing_tolerance=0.2)
    assert image.array.shape[0] == 5


def test_refuses_gantry_tilt(tmp_path: Path) -> None:
    write_series(tmp_path, positions=[[0.0, 1.5 * k, 2.0 * k] for k in range(4)])
    with pytest.raises(RefusedInput, match="shift in plane"):
        read_case(_only_case(tmp_path))


def test_slightly_mixed_orientations_refused(tmp_path: Path) -> None:
    iops = [(1, 0, 0, 0, 1, 0)] * 3 + [(1, 0, 0, 0, 0.99999, 0.004)]
    write_series(tmp_path, n=4, iops=iops)
    with pytest.raises(RefusedInput, match="mixed orientations"):
        read_case(_only_case(tmp_path))


def test_distinct_orientations_in_one_series_become_separate_cases(tmp_path: Path) -> None:
    uid = "1.2.3.4.5"
    write_series(tmp_path / "ax", n=4, series_uid=uid, names=[f"a{k}" for k in range(4)])
    write_series(tmp_path / "cor", n=2, series_uid=uid, iop=(1, 0, 0, 0, 0, -1), names=["c0", "c1"])
    cases, problems, _ = discover_cases(str(tmp_path))
    assert problems == [] and len(cases) == 2
    outcomes = []
    for case in cases:
        try:
            outcomes.append(read_case(case)[0].array.shape)
        except RefusedInput as exc:
            outcomes.append(exc.reason)
    assert (4, 6, 5) in outcomes
    assert any(isinstance(o, str) and "at least 3" in o for o in outcomes)


def test_rescale_integral_and_fractional(tmp_path: Path) -> None:
    write_series(tmp_path / "a", n=3, slope=2.0, intercept=-1000.0)
    image, _, _ = read_case(_only_case(tmp_path / "a"))
    assert image.array.dtype == np.int16
    np.testing.assert_array_equal(image.array, _expected(3))
    write_series(tmp_path / "b", n=3, slope=0.5, intercept=-1000.5)
    image, _, _ = read_case(_only_case(tmp_path / "b"))
    assert image.array.dtype == np.float32
    np.testing.assert_allclose(image.array, _expected(3), atol=0.5)


def test_missing_series_uid_falls_back_to_study(tmp_path: Path) -> None:
    write_series(tmp_path / "x", n=3, series_uid=None, names=["1", "2", "3"])
    write_series(tmp_path / "y", n=3, series_uid="", names=["4", "5", "6"])
    cases, problems, _ = discover_cases(str(tmp_path))
    assert problems == [] and len(cases) == 2
    for case in cases:
        assert read_case(case)[0].array.shape == (3, 6, 5)


def test_localizer_and_non_ct_refused(tmp_path: Path) -> None:
    write_series(tmp_path / "loc", n=3, image_type=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    with pytest.raises(RefusedInput, match="localizer"):
        read_case(_only_case(tmp_path / "loc"))
    write_series(tmp_path / "mr", n=3, modality="MR", slope=1.0, intercept=0.0)
    case = _only_case(tmp_path / "mr")
    with pytest.raises(RefusedInput, match="modality MR is not CT"):
        read_case(case)
    image, _, meta = read_case(case, allow_non_ct=True)
    assert meta["modality"] == "MR" and image.array.shape == (3, 6, 5)


def test_series_without_pixel_data_is_reported(tmp_path: Path) -> None:
    write_series(tmp_path / "nopix", n=3, with_pixels=False)
    write_series(tmp_path / "ok", n=3)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 7)
    cases, problems, _ = discover_cases(str(tmp_path))
    assert len(cases) == 1 and cases[0].image_uris[0].startswith(str(tmp_path / "ok"))
    reasons = dict(problems)
    assert "without pixel data" in reasons[str(tmp_path / "nopix")]
    assert str(tmp_path / "broken.dcm") in reasons
    assert str(tmp_path / "notes.txt") not in reasons


@pytest.mark.parametrize("compress", ["rle", "deflate"])
def test_compressed_transfer_syntaxes_decode(tmp_path: Path, compress: str) -> None:
    write_series(tmp_path, n=3, compress=compress)
    image, _, _ = read_case(_only_case(tmp_path))
    np.testing.assert_array_equal(image.array, _expected(3))


def test_enhanced_ct_per_frame_rescale_and_positions(tmp_path: Path) -> None:
    write_enhanced(tmp_path / "enh.dcm", z_positions=[4.0, 0.0, 2.0], slopes=[1.0, 2.0, 1.0],
                   intercepts=[-1024.0, -1000.0, -2048.0])
    image, _, meta = read_case(_only_case(tmp_path))
    np.testing.assert_array_equal(image.array, _expected(3))
    assert image.origin_mm == pytest.approx((-10.0, 20.0, 0.0))
    assert image.spacing_mm == pytest.approx((0.7, 0.8, 2.0))


def test_case_id_and_meta_hold_no_patient_fields(tmp_path: Path) -> None:
    write_series(tmp_path, n=3)
    case = _only_case(tmp_path)
    assert case.case_id.startswith("dcm-") and "SECRET" not in case.case_id
    image, _, meta = read_case(case)
    text = json.dumps(meta) + json.dumps(image.meta)
    assert "SECRET" not in text and "Doe" not in text and str(tmp_path) not in text
    assert discover_cases(str(tmp_path))[0][0].case_id == case.case_id  # deterministic


def test_checksum_covers_all_files_in_order(tmp_path: Path) -> None:
    import hashlib

    write_series(tmp_path, n=3)
    case = _only_case(tmp_path)
    _, _, meta = read_case(case)
    expected = hashlib.sha256(b"".join(Path(u).read_bytes() for u in case.image_uris)).hexdigest()
    assert meta["source_checksum"] == expected
