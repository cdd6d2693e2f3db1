"""Corrupt volumes are refused, never stored as complete: a truncated or corrupted compressed
payload (every compressed format read here). Each case reproduces an observed failure with a small
synthetic file and checks the refusal at ingest (a failure record; the other cases complete)."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from storage.errors import RefusedInput, UnreadableInput
from storage.ingest import ingest_case
from storage.plan import Plan, PlanRequest
from storage.readers import CaseSource
from storage.readers.image_file import read_image_file
from storage.store import DatasetStore

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
