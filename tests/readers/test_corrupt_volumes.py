"""Corrupt or implausible volumes are refused, never stored as complete: a truncated or corrupted
compressed payload (every compressed format read here), a zero / negative / NaN or implausible voxel
spacing, and values that are not Hounsfield units. Each case reproduces an observed failure with a
small synthetic file and checks the refusal at ingest (a failure record; the other cases complete)."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from pydantic import ValidationError

from storage.errors import RefusedInput, UnreadableInput
from storage.ingest import ingest_case
from storage.plan import Plan, PlanRequest, read_options
from storage.readers import CaseSource, discover_cases, read_case
from storage.readers.image_file import read_image_file
from storage.store import DatasetStore
from tests.readers.synth import write_series

SPACING = (0.8, 0.8, 2.5)


def _ct(shape=(8, 24, 24), seed: int = 0) -> np.ndarray:
    """(z, y, x) int16 HU: air around a noisy soft-tissue block with a bone core."""
    rng = np.random.default_rng(seed)
    arr = np.full(shape, -1000, np.int16)
    arr[:, 4:-4, 4:-4] = rng.normal(40, 30, (shape[0], shape[1] - 8, shape[2] - 8))
    arr[:, 10:14, 10:14] = 700
    return arr


def _sitk(path: Path, arr: np.ndarray, spacing=SPACING, compress: bool = True) -> Path:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path), useCompression=compress)
    return path


def _data_file(path: Path) -> Path:
    """The file holding the compressed pixels (the header itself unless detached)."""
    detached = {".mhd": ".zraw", ".nhdr": ".raw.gz"}
    return path.with_name(path.name[: -len(path.suffix)] + detached[path.suffix]) if path.suffix in detached else path


def _truncate(path: Path, keep: float = 0.6) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip(path: Path, at: float = 0.6) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * at)] ^= 0x24
    path.write_bytes(bytes(data))


def _ingest(tmp_path: Path, files: dict[str, Path], plan: Plan | None = None) -> dict[str, object]:
    """Ingest each file as one case -> {name: CaseResult}; every failure is in the store too."""
    plan = plan or Plan.from_request(PlanRequest(), (1.6, 1.6, 2.5), False)
    store = str(tmp_path / "store")
    ds = DatasetStore(store, "d", create=True)
    ds.ensure(plan.to_dict(), {})
    out = {}
    for name, path in files.items():
        res = ingest_case(CaseSource(name, "image", (str(path),), None, "unlabelled"), store, "d", plan)
        if res.status == "failed":
            assert ds.case_record(name)["status"] == "failed" and ds.case_record(name)["reason"] == res.reason
        out[name] = res
    return out


# -- compressed payloads ---------------------------------------------------------------------------


def test_a_truncated_nii_gz_is_refused_where_simpleitk_zero_fills_it(tmp_path):
    good, bad = _sitk(tmp_path / "good.nii.gz", _ct()), _sitk(tmp_path / "bad.nii.gz", _ct(seed=1))
    _truncate(bad)
    zero_filled = sitk.GetArrayFromImage(sitk.ReadImage(str(bad)))  # the observed failure
    assert zero_filled.shape == _ct().shape and (zero_filled == 0).mean() > 0.2
    with pytest.raises(EOFError):
        np.asanyarray(nib.load(str(bad)).dataobj)
    results = _ingest(tmp_path, {"good": good, "bad": bad})
    assert results["good"].status == "done"
    assert results["bad"].status == "failed" and "truncated" in results["bad"].reason
    assert results["bad"].source == str(bad)


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd"])
@pytest.mark.parametrize("damage", [_truncate, _flip], ids=["truncated", "flipped"])
def test_a_damaged_compressed_payload_is_unreadable(tmp_path, suffix, damage):
    path = _sitk(tmp_path / f"ct{suffix}", _ct())
    damage(_data_file(path))
    with pytest.raises(UnreadableInput) as err:
        read_image_file(str(path))
    assert err.value.source in (str(path), str(_data_file(path)))


@pytest.mark.parametrize("at", np.linspace(0.05, 0.97, 12).round(3).tolist())
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_a_flipped_byte_anywhere_in_the_stream_never_reads_as_a_volume(tmp_path, suffix, at):
    """SimpleITK returns wrong pixels for many of these (NRRD, MetaImage; nibabel for .nii.gz)."""
    path = _sitk(tmp_path / f"ct{suffix}", _ct())
    _flip(path, at)
    with pytest.raises((UnreadableInput, RefusedInput)):
        read_image_file(str(path))


def _nifti_bytes(arr: np.ndarray, nifti2: bool = False) -> bytes:
    cls = nib.Nifti2Image if nifti2 else nib.Nifti1Image
    return cls(arr.transpose(2, 1, 0), np.diag([*SPACING, 1.0])).to_bytes()


@pytest.mark.parametrize("shape", ["two-members", "trailing-zeros", "nifti2"])
def test_complete_gzip_streams_of_other_shapes_are_read(tmp_path, shape):
    arr = _ct()
    raw = _nifti_bytes(arr, nifti2=shape == "nifti2")  # NIfTI-2: read by nibabel, not SimpleITK
    data = {"two-members": gzip.compress(raw[:1000]) + gzip.compress(raw[1000:]),
            "trailing-zeros": gzip.compress(raw) + b"\0" * 512, "nifti2": gzip.compress(raw)}[shape]
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(data)
    np.testing.assert_array_equal(read_image_file(str(path)).array, arr)
    if shape == "nifti2":
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(UnreadableInput, match="truncated"):
            read_image_file(str(path))


def _metaimage(path: Path, arr: np.ndarray, payload: bytes, msb: bool, size_field: bool) -> Path:
    lines = ["ObjectType = Image", "NDims = 3", "BinaryData = True", f"BinaryDataByteOrderMSB = {msb}",
             "CompressedData = True", *([f"CompressedDataSize = {len(payload)}"] if size_field else []),
             "ElementSpacing = 0.8 0.8 2.5", f"DimSize = {arr.shape[2]} {arr.shape[1]} {arr.shape[0]}",
             "ElementType = MET_SHORT", "ElementDataFile = LOCAL"]
    path.write_bytes(("\n".join(lines) + "\n").encode() + payload)
    return path


def _nrrd(path: Path, arr: np.ndarray, payload: bytes, endian: str) -> Path:
    lines = ["NRRD0004", "type: short", "dimension: 3", f"sizes: {arr.shape[2]} {arr.shape[1]} {arr.shape[0]}",
             "spacings: 0.8 0.8 2.5", f"endian: {endian}", "encoding: gzip"]
    path.write_bytes(("\n".join(lines) + "\n\n").encode() + payload)
    return path


def test_big_endian_compressed_payloads_are_verified_and_read(tmp_path):
    arr = _ct()
    big = arr.astype(">i2").tobytes()
    mha = _metaimage(tmp_path / "be.mha", arr, zlib.compress(big), msb=True, size_field=True)
    nrrd = _nrrd(tmp_path / "be.nrrd", arr, gzip.compress(big), "big")
    for path in (mha, nrrd):
        np.testing.assert_array_equal(read_image_file(str(path)).array, arr)


def test_a_truncated_metaimage_without_compressed_size_is_unreadable(tmp_path):
    arr = _ct()
    payload = zlib.compress(arr.tobytes())
    path = _metaimage(tmp_path / "t.mha", arr, payload[: len(payload) // 2], msb=False, size_field=False)
    with pytest.raises(UnreadableInput, match=str(path)):
        read_image_file(str(path))


def test_nrrd_bzip2_is_unreadable_not_misread(tmp_path):
    import bz2

    arr = _ct()
    path = _nrrd(tmp_path / "b.nrrd", arr, bz2.compress(arr.tobytes()), "little")
    path.write_bytes(path.read_bytes().replace(b"encoding: gzip", b"encoding: bzip2"))
    with pytest.raises(UnreadableInput, match="bzip2"):
        read_image_file(str(path))


@pytest.mark.parametrize("compress", ["rle", None])
def test_a_truncated_dicom_slice_fails_its_series_at_ingest(tmp_path, compress):
    """pydicom drops a whole RLE file that ends inside its pixel data (it looked like 'modality
    missing'); the file must stay in its series and fail it, naming the file."""
    paths = write_series(tmp_path / "in", n=4, compress=compress)
    _truncate(paths[0], keep=0.97)
    [case], _, _ = discover_cases(str(tmp_path / "in"))
    assert len(case.image_uris) == 4
    store = str(tmp_path / "store")
    plan = Plan(target_spacing_mm=(1.0, 1.0, 2.0))
    DatasetStore(store, "d", create=True).ensure(plan.to_dict(), {})
    res = ingest_case(case, store, "d", plan)
    assert res.status == "failed" and res.source == str(paths[0]) and "truncated" in res.reason


# -- spacing ---------------------------------------------------------------------------------------


def _zero_pixdim(path: Path, sform: bool) -> Path:
    """A .nii.gz whose pixdim[3] is 0 in the file (nibabel's writer would fix it)."""
    img = nib.Nifti1Image(_ct().transpose(2, 1, 0), None)
    img.set_qform(np.diag([*SPACING, 1.0]), code=1)
    img.set_sform(np.diag([*SPACING, 1.0]), code=1 if sform else 0)
    raw = bytearray(img.to_bytes())
    raw[88:92] = struct.pack("<f", 0.0)  # pixdim[3]
    path.write_bytes(gzip.compress(bytes(raw)))
    return path


def test_a_zero_pixdim_is_refused_not_made_1_mm(tmp_path):
    bad = _zero_pixdim(tmp_path / "bad.nii.gz", sform=False)
    assert float(nib.load(str(bad)).header.get_zooms()[2]) == 1.0  # the observed failure: 0 became 1 mm
    results = _ingest(tmp_path, {"bad": bad, "good": _sitk(tmp_path / "good.nii.gz", _ct())})
    assert results["good"].status == "done"
    assert results["bad"].status == "failed" and "pixdim of axis z is 0" in results["bad"].reason
    with_sform = _zero_pixdim(tmp_path / "sform.nii.gz", sform=True)  # the sform gives the spacing
    assert read_image_file(str(with_sform)).spacing_mm == pytest.approx(SPACING)


def _mha_spacing(path: Path, spacing: str) -> Path:
    """An .mha whose header states ``spacing`` (SimpleITK refuses to write a zero or negative one)."""
    _sitk(path, _ct(), compress=False)
    head, sep, data = path.read_bytes().partition(b"ElementDataFile = LOCAL\n")
    lines = [f"ElementSpacing = {spacing}" if ln.startswith("ElementSpacing") else ln
             for ln in head.decode().splitlines()]
    path.write_bytes(("\n".join(lines) + "\n").encode() + sep + data)
    return path


@pytest.mark.parametrize(("spacing", "reason"), [
    ("0.8 0.8 1e-6", "axis z is 1e-06 mm, outside the plausible CT range 0.1-20 mm"),
    ("25 0.8 2.5", "axis x is 25 mm, outside"),
    ("0.8 0.8 0", "axis z is 0 mm: not a voxel size"),
    ("0.8 0.8 nan", "axis z is 0 mm: not a voxel size"),  # SimpleITK reads NaN as 0
])
def test_implausible_spacing_is_refused_at_ingest(tmp_path, spacing, reason):
    bad = _mha_spacing(tmp_path / "bad.mha", spacing)
    results = _ingest(tmp_path, {"bad": bad, "good": _sitk(tmp_path / "good.mha", _ct())})
    assert results["good"].status == "done"
    assert results["bad"].status == "failed" and reason in results["bad"].reason
    assert results["bad"].source == str(bad)


def test_a_negative_metaimage_spacing_is_a_flip(tmp_path):
    """SimpleITK reads it as a positive spacing along a flipped axis: a consistent geometry."""
    vol = read_image_file(str(_mha_spacing(tmp_path / "flip.mha", "0.8 -0.8 2.5")))
    assert vol.spacing_mm == pytest.approx(SPACING) and vol.direction[4] == -1.0


def test_the_spacing_range_is_the_plans(tmp_path):
    path = _sitk(tmp_path / "thick.nrrd", _ct(), spacing=(0.8, 0.8, 25.0))
    case = CaseSource("thick", "image", (str(path),), None, "unlabelled")
    with pytest.raises(RefusedInput, match="25 mm"):
        read_case(case)
    plan = Plan.from_request(PlanRequest(spacing_range_mm=(0.1, 30.0)), (1.0, 1.0, 25.0), False)
    assert read_case(case, **plan.read_options())[0].spacing_mm[2] == pytest.approx(25.0)
    with pytest.raises(ValidationError, match="0 < min < max"):
        PlanRequest(spacing_range_mm=(5.0, 1.0))


# -- Hounsfield units ------------------------------------------------------------------------------

_RNG = np.random.default_rng(3)
NOT_HU = {
    "uint8 photo": _RNG.integers(0, 256, (8, 24, 24)).astype(np.uint8),
    "MR-like": _RNG.integers(0, 4000, (8, 24, 24)).astype(np.int16),
    "label map": (np.arange(8 * 24 * 24).reshape(8, 24, 24) % 4).astype(np.uint8),
    "z-scored": _RNG.normal(0, 1, (8, 24, 24)).astype(np.float32),
    "no rescale intercept": (_ct() + 1024).astype(np.int16),
}


@pytest.mark.parametrize("name", sorted(NOT_HU))
def test_values_that_are_not_hu_are_refused_unless_allowed(tmp_path, name):
    arr = NOT_HU[name]
    bad = _sitk(tmp_path / "bad.mha", arr)
    results = _ingest(tmp_path, {"bad": bad, "good": _sitk(tmp_path / "good.mha", _ct())})
    assert results["good"].status == "done"
    reason = results["bad"].reason
    assert results["bad"].status == "failed" and "do not look like Hounsfield units" in reason
    assert f"range {float(arr.min()):g}..{float(arr.max()):g}" in reason
    assert "0.00% of voxels at or below -100" in reason
    allowed = Plan.from_request(PlanRequest(allow_non_hu=True), (1.6, 1.6, 2.5), False)
    assert _ingest(tmp_path / "allowed", {"bad": bad}, allowed)["bad"].status == "done"


def test_a_cropped_ct_with_fat_but_no_air_is_hu(tmp_path):
    arr = np.random.default_rng(4).normal(40, 20, (8, 24, 24)).astype(np.int16)
    arr[:, :3] = np.random.default_rng(5).normal(-100, 15, (8, 3, 24))  # a rim of fat
    path = _sitk(tmp_path / "crop.nii.gz", arr)
    np.testing.assert_array_equal(read_case(CaseSource("c", "image", (str(path),), None, "x"))[0].array, arr)


def test_nan_is_refused_even_when_non_hu_is_allowed(tmp_path):
    arr = _ct().astype(np.float32)
    arr[2, 3, 4] = np.nan
    path = _sitk(tmp_path / "nan.mha", arr)
    with pytest.raises(RefusedInput, match="NaN"):
        read_case(CaseSource("n", "image", (str(path),), None, "x"), allow_non_hu=True)


# -- the plan --------------------------------------------------------------------------------------


def test_plans_recorded_before_the_checks_keep_their_hash_and_get_the_defaults():
    old = {"target_spacing_mm": [1.0, 1.0, 2.0], "orientation": "LPS", "image_interpolation": "linear",
           "label_interpolation": "nearest", "dtype": "int16", "chunk_vox": [32, 64, 64], "shard_vox": None,
           "zstd_level": 1, "allow_non_ct": False, "spacing_tolerance": 0.1, "format_version": 1, "extra": {}}
    plan = Plan.from_dict(old)
    assert plan.to_dict() == old
    assert plan.read_options() == read_options({}) == {"allow_non_ct": False, "spacing_tolerance": 0.1,
                                                        "spacing_range_mm": (0.1, 20.0), "allow_non_hu": False}
    new = Plan.from_request(PlanRequest(allow_non_hu=True), (1.0, 1.0, 2.0), False)
    assert new.to_dict()["spacing_range_mm"] == [0.1, 20.0] and new.to_dict()["allow_non_hu"] is True
    assert Plan.from_dict(new.to_dict()) == new and new.hash != plan.hash
