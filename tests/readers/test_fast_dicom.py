"""The numpy fast path for uncompressed DICOM pixels decodes exactly what GDCM decodes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from storage.errors import UnreadableInput
from storage.readers.dicom import decode_classic, read_slices, read_dicom_series
from storage.readers.dicom_pixels import decode_raw
from tests.readers.synth import COLS, ROWS, write_series


def _garbage_high_bits(paths: list[Path], signed: bool, bits: int, slope: float, intercept: float) -> None:
    """Rewrite each slice with random 16-bit words (high bits set) and ``bits`` stored bits."""
    rng = np.random.default_rng(len(paths) + bits)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.PixelData = rng.integers(0, 1 << 16, (ROWS, COLS), dtype=np.uint16).tobytes()
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, int(signed)
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.save_as(path, enforce_file_format=True)


def _gdcm_slices(paths: list[Path]) -> list[np.ndarray]:
    slices, _ = read_slices([str(p) for p in paths], allow_non_ct=False)
    return [decode_classic(dataclasses.replace(s, raw=None)) for s in slices]


@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits,slope,intercept", [(12, 1.0, -1024.0), (16, 1.0, -1024.0), (12, 2.0, -2048.0),
                                                  (14, 1.0, 0.0)])
def test_raw_pixels_equal_gdcm(tmp_path: Path, signed: bool, bits: int, slope: float, intercept: float) -> None:
    paths = write_series(tmp_path, n=3)
    _garbage_high_bits(paths, signed, bits, slope, intercept)
    slices, _ = read_slices([str(p) for p in paths], allow_non_ct=False)
    assert all(s.raw is not None for s in slices)
    for s, slow in zip(slices, _gdcm_slices(paths)):
        np.testing.assert_array_equal(decode_classic(s), slow)
        into = decode_raw(s, np.empty((ROWS, COLS), np.int16))  # the stacking path, int16 HU
        np.testing.assert_array_equal(into, np.clip(np.rint(slow), -32768, 32767))


def test_series_equals_simpleitk_series_reader(tmp_path: Path) -> None:
    paths = write_series(tmp_path, n=5, intercept=-1024.0)
    vol, modality = read_dicom_series([str(p) for p in paths])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(tmp_path)))
    ref = reader.Execute()
    assert modality == "CT" and vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, sitk.GetArrayViewFromImage(ref))
    np.testing.assert_allclose(vol.spacing_mm, ref.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(vol.origin_mm, ref.GetOrigin(), atol=1e-6)


def test_non_integral_rescale_and_compressed_use_gdcm(tmp_path: Path) -> None:
    float_paths = write_series(tmp_path / "float", n=3, slope=0.5, intercept=-1024.0)
    rle_paths = write_series(tmp_path / "rle", n=3, compress="rle")
    for paths in (float_paths, rle_paths):
        slices, _ = read_slices([str(p) for p in paths], allow_non_ct=False)
        assert all(s.raw is None for s in slices)
    vol, _ = read_dicom_series([str(p) for p in float_paths])
    assert vol.array.dtype == np.float32


def test_truncated_pixel_data_is_unreadable(tmp_path: Path) -> None:
    paths = write_series(tmp_path, n=3)
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[:-20])
    slices, _ = read_slices([str(p) for p in paths], allow_non_ct=False)
    broken = [s for s in slices if s.path == str(paths[1])]
    if broken[0].raw is None:  # the header parser already noticed: GDCM path, also refused
        pytest.skip("header parser rejected the truncated element")
    with pytest.raises(UnreadableInput, match="truncated"):
        read_dicom_series([str(p) for p in paths])


def test_read_case_uses_a_given_checksum(tmp_path: Path) -> None:
    """ingest_case hashes the inputs once (for its skip check) and hands the digest on."""
    from storage.checksum import sha256_files
    from storage.readers import discover_cases, read_case

    write_series(tmp_path / "series", n=3)
    cases, problems, _ = discover_cases(str(tmp_path))
    assert len(cases) == 1 and not problems
    _, _, meta = read_case(cases[0])
    assert meta["source_checksum"] == sha256_files(list(cases[0].image_uris))
    _, _, given = read_case(cases[0], source_checksum="0" * 64)
    assert given["source_checksum"] == "0" * 64
