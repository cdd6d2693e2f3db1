"""The lean DICOM header reader gives the readers exactly what pydicom gives them, or steps aside.

Differential: for every file, what the readers compute from a header (``_check_kind``,
``_classic_slice``, ``raw_pixels``, ``header_from_dataset``, the frame count and modality) is the
same from :func:`lean_header` as from pydicom's Dataset, or the lean reader returned None; and
``read_slices`` / ``read_header`` give the same result or the same error with and without it.
Files are crafted byte by byte (``tests.readers.dicom_bytes``: both VR encodings, sequences of
defined and undefined length, private tags, padded / empty / multi-valued / invalid values,
encapsulated pixel data, trailing padding), written by pydicom and by the phantoms, truncated at
every offset and corrupted at random. The ordinary ones must take the lean path, so that the comparison cannot pass vacuously.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pydicom
import pytest
from pydicom.datadict import dictionary_VR

import storage.readers.dicom as dicom
from storage.readers.dicom import (_check_kind, _classic_slice, header_from_dataset, read_dicom_file,
                                   read_header, read_series_headers, read_slices)
from storage.readers.dicom_header import lean_header
from storage.readers.dicom_pixels import raw_pixels
from tests.readers.dicom_bytes import (BIG, DEFLATE, EXPLICIT, IMPLICIT, ITEM, ITEM_END, RLE, SEQ_END, UNDEF,
                                       Encoder, delimiter, dicom_file, element, encapsulated,
                                       modality_lut, nested, padding, private, sequence, twice)
from tests.readers.synth import write_enhanced, write_series

# name -> (changes, extra) of files the lean reader must take, in both encodings
ORDINARY: dict[str, tuple[dict, Encoder | None]] = {
    "base": ({}, None),
    "nested-defined": ({"ReferencedImageSequence": nested(False, False)}, None),
    "nested-undefined": ({"ReferencedImageSequence": nested(True, True)}, None),
    "nested-mixed": ({"ReferencedImageSequence": nested(True, False)}, None),
    "nested-mixed-2": ({"ReferencedImageSequence": nested(False, True)}, None),
    "private": ({0x00090010: private}, None),
    "trailing-padding": ({}, padding),
    "modality-lut-undefined": ({"ModalityLUTSequence": modality_lut(True)}, None),
    "modality-lut-defined": ({"ModalityLUTSequence": modality_lut(False)}, None),
    "no-optional": ({"RescaleSlope": None, "RescaleIntercept": None, "ImageType": None, "BitsStored": None,
                     "SeriesInstanceUID": None, "FrameOfReferenceUID": None, "SamplesPerPixel": None}, None),
    "empty-values": ({"RescaleSlope": ("DS", b""), "RescaleIntercept": ("DS", b"  "), "ImageType": ("CS", b""),
                      "SeriesInstanceUID": ("UI", b""), "PixelSpacing": ("DS", b""), "Modality": ("CS", b""),
                      "Rows": ("US", b""), "NumberOfFrames": ("IS", b"")}, None),
    "odd-lengths": ({"Modality": ("CS", b"C"), "SeriesInstanceUID": ("UI", b"1.2.3"), "RescaleSlope": ("DS", b"2"),
                     "ImagePositionPatient": ("DS", b"1\\2\\3"), "PixelData": ("OB", bytes(33))}, None),
    "not-raw-pixels": ({"BitsAllocated": ("US", b"\x08\0"), "RescaleSlope": ("DS", b"0.5")}, None),
    "single-frame": ({"NumberOfFrames": ("IS", b"1 "), "PerFrameFunctionalGroupsSequence": modality_lut(False)}, None),
    "no-series": ({"SeriesInstanceUID": None, "StudyInstanceUID": None, "Modality": ("CS", b"MR")}, None),
    "float-pixels": ({"PixelData": None, "FloatPixelData": ("OF", bytes(64))}, None),
    "no-pixels": ({"PixelData": None}, None),
    "localizer": ({"ImageType": ("CS", b"ORIGINAL\\PRIMARY\\LOCALIZER ")}, None),
    "colour": ({"SamplesPerPixel": ("US", b"\3\0")}, None),
    "group-length": ({0x00080000: ("UL", b"\0\0\0\0")}, None),
}

# one value changed: (keyword, VR, raw) -> does the lean reader take it (None: either is fine)?
VALUES: list[tuple[str, str, bytes, bool | None]] = [
    ("Modality", "CS", b"CT ", True), ("Modality", "CS", b"ct", True), ("Modality", "CS", b" CT", True),
    ("Modality", "CS", b"CT\0", True), ("Modality", "CS", b"  ", True), ("Modality", "CS", b"CT\\MR", False),
    ("Modality", "CS", b"C\xc9", False), ("Modality", "CS", b"C\x01", False), ("Modality", "CS", b"C\0T", False),
    ("Modality", "LO", b"CT", False), ("Modality", "UN", b"CT", False),
    ("ImageType", "CS", b"LOCALIZER", True), ("ImageType", "CS", b"A\\\\B", True), ("ImageType", "CS", b"\\", True),
    ("ImageType", "CS", b"ORIGINAL \\ LOCALIZER", True), ("ImageType", "CS", b"DERIVED\\SECONDARY\0", True),
    ("PixelSpacing", "DS", b"0.5\\0.5", True), ("PixelSpacing", "DS", b" 0.5\\0.5 ", True),
    ("PixelSpacing", "DS", b"0.5 \\ 0.5", True), ("PixelSpacing", "DS", b"0.5\\0.5\0", True),
    ("PixelSpacing", "DS", b".5\\+1.", True), ("PixelSpacing", "DS", b"1e-3\\2E2", True),
    ("PixelSpacing", "DS", b"00.5\\1", True), ("PixelSpacing", "DS", b" ", True),
    ("PixelSpacing", "DS", b"0.12345678901234567\\1", True), ("PixelSpacing", "DS", b"0.5", False),
    ("PixelSpacing", "DS", b"0.5\\0.5\\0.5", False), ("PixelSpacing", "DS", b"0.5\\", False),
    ("PixelSpacing", "DS", b"\\0.5", False), ("PixelSpacing", "DS", b"abc\\1", False),
    ("PixelSpacing", "DS", b"1e400\\1", False), ("PixelSpacing", "DS", b"nan\\1", False),
    ("PixelSpacing", "DS", b"inf\\1", False), ("PixelSpacing", "DS", b"1_0\\1", False),
    ("PixelSpacing", "DS", b"1,5\\1", False), ("PixelSpacing", "DS", b"\xa00.5\\1", False),
    ("PixelSpacing", "UN", b"0.5\\0.5", False), ("PixelSpacing", "FD", bytes(16), False),
    ("ImagePositionPatient", "DS", b"1\\2", False), ("ImagePositionPatient", "DS", b"1\\2\\3\\4", False),
    ("ImagePositionPatient", "DS", b"", True), ("ImageOrientationPatient", "DS", b"1\\0\\0\\0\\1", False),
    ("ImageOrientationPatient", "DS", b"0\\1\\0\\0\\0\\-1", True), ("ImageOrientationPatient", "DS", b"", True),
    ("ImageOrientationPatient", "DS", b"1\\0\\0\\0\\1\\0\\", False),
    ("RescaleSlope", "DS", b"0", True), ("RescaleSlope", "DS", b"2.5", True), ("RescaleSlope", "DS", b"-1", True),
    ("RescaleSlope", "DS", b"1\\2", False), ("RescaleSlope", "DS", b"inf", False),
    ("RescaleSlope", "DS", b"1e400", False), ("RescaleIntercept", "DS", b"-1024.5", True),
    ("RescaleIntercept", "DS", b"+0", True), ("RescaleIntercept", "DS", b"-", False),
    ("Rows", "US", b"\0\2", True), ("Rows", "US", b"\4\0\4\0", False), ("Rows", "US", b"\4", False),
    ("Rows", "SS", b"\4\0", False), ("Columns", "US", b"\0\0", True), ("SamplesPerPixel", "US", b"", True),
    ("BitsStored", "US", b"\0\0", True), ("BitsStored", "US", b"\x10\0", True), ("BitsAllocated", "US", b"", True),
    ("PixelRepresentation", "US", b"\0\0", True), ("PixelRepresentation", "US", b"", True),
    ("PhotometricInterpretation", "CS", b"MONOCHROME1", True), ("PhotometricInterpretation", "CS", b"", True),
    ("PhotometricInterpretation", "CS", b"MONOCHROME2\\RGB", False),
    ("NumberOfFrames", "IS", b"1", True), ("NumberOfFrames", "IS", b" 1 ", True), ("NumberOfFrames", "IS", b"0", True),
    ("NumberOfFrames", "IS", b"-1", True), ("NumberOfFrames", "IS", b"+1", True),
    ("NumberOfFrames", "IS", b"0001", True), ("NumberOfFrames", "IS", b"  ", True),
    ("NumberOfFrames", "IS", b"2", False), ("NumberOfFrames", "IS", b"1.0", False),
    ("NumberOfFrames", "IS", b"1\\1", False), ("NumberOfFrames", "IS", b"1234567890123", False),
    ("SeriesInstanceUID", "UI", b"1.2.3 ", True), ("SeriesInstanceUID", "UI", b"\0", True),
    ("SeriesInstanceUID", "UI", b"1.2.3\0\0", True), ("SeriesInstanceUID", "UI", b"1." + b"2" * 62, True),
    ("SeriesInstanceUID", "UI", b"1." + b"2" * 63, False), ("SeriesInstanceUID", "UI", b" 1.2.3", False),
    ("SeriesInstanceUID", "UI", b"1.02.3", False), ("SeriesInstanceUID", "UI", b"1.2\\1.3", False),
    ("SeriesInstanceUID", "UI", b"1.2.x", False), ("SeriesInstanceUID", "LO", b"1.2.3", False),
    ("StudyInstanceUID", "UI", b"", True), ("FrameOfReferenceUID", "UI", b"", True),
    ("SOPInstanceUID", "UI", b"1.2\0", True), ("SOPClassUID", "UI", b"1.2.840.10008.1.3.10", True),
    ("PixelData", "OB", bytes(32), True), ("PixelData", "OW", bytes(30), True), ("PixelData", "UN", bytes(32), False),
    ("PixelData", "OW", bytes(2000), True), ("ModalityLUTSequence", "SQ", b"", True),
    ("DirectoryRecordSequence", "SQ", b"", True), ("SharedFunctionalGroupsSequence", "SQ", b"", True),
]

# structural oddities: changes, syntax, meta, extra -> does the lean reader take it?
ODD: dict[str, tuple[dict, str, dict | None, Encoder | None, bool | None]] = {
    "encapsulated": ({"PixelData": None}, RLE, None, encapsulated, True),
    "encapsulated-implicit": ({"PixelData": None}, IMPLICIT, None, encapsulated, True),
    "unknown-syntax": ({}, "1.2.3.4", None, None, True),
    "rle-syntax-raw-pixels": ({}, RLE, None, None, True),
    "big-endian": ({}, BIG, None, None, False),
    "deflate": ({}, DEFLATE, None, None, False),
    "no-syntax": ({}, EXPLICIT, {"TransferSyntaxUID": None}, None, False),
    "empty-syntax": ({}, EXPLICIT, {"TransferSyntaxUID": b""}, None, False),
    "padded-syntax": ({}, EXPLICIT, {"TransferSyntaxUID": EXPLICIT.encode() + b" "}, None, True),
    "invalid-syntax": ({}, EXPLICIT, {"TransferSyntaxUID": b" " + EXPLICIT.encode()}, None, False),
    "dicomdir-class": ({}, EXPLICIT, {"MediaStorageSOPClassUID": b"1.2.840.10008.1.3.10"}, None, True),
    "no-media-class": ({}, EXPLICIT, {"MediaStorageSOPClassUID": None}, None, True),
    "multi-frame": ({"NumberOfFrames": ("IS", b"3 ")}, EXPLICIT, None, None, False),
    "duplicate": ({"Modality": twice("Modality")}, EXPLICIT, None, None, False),
    "out-of-order": ({"Rows": lambda i: element("Columns", "US", b"\4\0", i) + element("Rows", "US", b"\4\0", i),
                      "Columns": None}, EXPLICIT, None, None, False),
    "command-set": ({0x00000000: ("UL", b"\0\0\0\0")}, EXPLICIT, None, None, False),
    "value-over-1024": ({"ImageType": ("CS", b"A\\" * 600)}, EXPLICIT, None, None, False),
    "unknown-vr": ({0x00091001: ("XX", b"ab")}, EXPLICIT, None, None, False),
    "item-at-top-level": ({0x00091001: lambda i: delimiter(ITEM, 0)}, EXPLICIT, None, None, False),
    "item-delimiter-at-top-level": ({0x00091001: lambda i: delimiter(ITEM_END)}, EXPLICIT, None, None, False),
    "short-tail": ({}, EXPLICIT, None, lambda i: b"\0\0\0", False),
    "sequence-overruns": ({"ReferencedImageSequence": lambda i: element("ReferencedImageSequence", "SQ", b"", i, 9999)},
                          EXPLICIT, None, None, False),
    "element-overruns-item": ({"ReferencedImageSequence": lambda i: element("ReferencedImageSequence", "SQ", delimiter(
        ITEM, 4) + element("CodeValue", "SH", b"ab", i) + delimiter(SEQ_END), i, UNDEF)}, EXPLICIT, None, None, False),
    "item-overruns-sequence": ({"ReferencedImageSequence": lambda i: element("ReferencedImageSequence", "SQ", delimiter(
        ITEM, 10) + element("CodeValue", "SH", b"ab", i), i, 12)}, EXPLICIT, None, None, None),
    "explicit-item-in-implicit": ({"ReferencedImageSequence": lambda i: sequence(
        "ReferencedImageSequence", [element("CodeValue", "SH", b"ab", False)], True, True, True)},
        IMPLICIT, None, None, None),
    "dictionary-un-with-items": ({0x0072006D: lambda i: sequence(0x0072006D, [nested(True, True)(i)], i, True, True)},
                                 IMPLICIT, None, None, False),
    "unknown-undefined-value": ({0x00091001: lambda i: element(0x00091001, "UN", b"ab", i, UNDEF)}, IMPLICIT, None,
                                None, False),
}


# ---- the differential -------------------------------------------------------------------------

def _try(fn: Callable[[], Any]) -> tuple:
    try:
        return ("ok", fn())
    except Exception as exc:  # the outcome compared is the error's type and message
        return ("raised", type(exc).__name__, str(exc))


_DICOM_KEYS = ("SOPClassUID", "Modality", "Rows", "DirectoryRecordSequence")  # discovery's "is it DICOM"


def _view(ds: Any, path: str) -> tuple:
    """Everything the readers compute from one header."""
    def slice_fields() -> tuple:
        s = _classic_slice(ds, path)
        return (s.path, s.frame, s.ipp.tolist(), s.iop.tolist(), s.pixel_spacing, s.shape, s.slope, s.intercept, s.raw)

    def raw() -> Any:
        return raw_pixels(ds, (int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)), 1.0, 0.0)

    return (_try(lambda: _check_kind(ds, path, False)), _try(lambda: _check_kind(ds, path, True)),
            _try(lambda: int(ds.get("NumberOfFrames") or 1)), _try(lambda: str(ds.get("Modality") or "")),
            _try(slice_fields), _try(raw), _try(lambda: header_from_dataset(ds, path)),
            _try(lambda: bool(ds) and any(k in ds for k in _DICOM_KEYS)))


def _compare(path: Path) -> bool:
    """Whether the lean reader took the file; when it did, the readers see what pydicom gives them
    (and pydicom warns about nothing there, so no warning is lost)."""
    lean = lean_header(str(path))
    with open(path, "rb") as fh:
        assert (lean_header(fh) is None) == (lean is None)
    if lean is None:
        return False
    ds = read_dicom_file(str(path), str(path), defer_size=1024)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        want = _view(ds, str(path))
    assert not [str(w.message) for w in caught]
    got = _view(lean, str(path))
    assert got == want and repr(got) == repr(want)
    return True


def _slices_view(result: tuple) -> tuple:
    slices, modality = result
    return modality, [(s.path, s.frame, s.ipp.tolist(), s.iop.tolist(), s.pixel_spacing, s.shape, s.slope,
                       s.intercept, s.raw) for s in slices]


def _readers(path: Path) -> tuple:
    def header() -> Any:
        with open(path, "rb") as fh:
            return read_header(fh, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return (_try(lambda: _slices_view(read_slices([str(path)], False))),
                _try(lambda: _slices_view(read_slices([str(path)], True))), _try(header))


def _same_as_before(path: Path, monkeypatch: pytest.MonkeyPatch) -> bool:
    """The differential, and read_slices / read_header give what they gave without the lean reader."""
    taken = _compare(path)
    now = _readers(path)
    with monkeypatch.context() as m:
        m.setattr(dicom, "lean_header", lambda src: None)
        before = _readers(path)
    assert now == before
    return taken


def _write(tmp_path: Path, data: bytes, name: str = "slice.dcm") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# ---- tests ------------------------------------------------------------------------------------

@pytest.mark.parametrize("syntax", [EXPLICIT, IMPLICIT])
@pytest.mark.parametrize("name", ORDINARY)
def test_ordinary_files_take_the_lean_path_and_agree(tmp_path, monkeypatch, name, syntax):
    changes, extra = ORDINARY[name]
    assert _same_as_before(_write(tmp_path, dicom_file(changes, syntax, extra=extra)), monkeypatch)


@pytest.mark.parametrize("syntax", [EXPLICIT, IMPLICIT])
@pytest.mark.parametrize("keyword,vr,raw,taken", VALUES)
def test_values_convert_as_pydicom_converts_them(tmp_path, monkeypatch, keyword, vr, raw, taken, syntax):
    got = _same_as_before(_write(tmp_path, dicom_file({keyword: (vr, raw)}, syntax)), monkeypatch)
    if syntax == EXPLICIT or vr == dictionary_VR(keyword):  # implicit VR: the dictionary's VR
        assert taken is None or got == taken


@pytest.mark.parametrize("name", ODD)
def test_structural_oddities_fall_back_or_agree(tmp_path, monkeypatch, name):
    changes, syntax, meta, extra, taken = ODD[name]
    got = _same_as_before(_write(tmp_path, dicom_file(changes, syntax, meta, extra)), monkeypatch)
    assert taken is None or got == taken


def test_no_preamble_falls_back(tmp_path, monkeypatch):
    assert not _same_as_before(_write(tmp_path, dicom_file()[132:]), monkeypatch)
    assert not _same_as_before(_write(tmp_path, b"\0" * 128 + b"DICX" + dicom_file()[132:]), monkeypatch)


def test_files_written_by_pydicom(tmp_path, monkeypatch):
    explicit = write_series(tmp_path / "explicit", n=1)[0]
    rle = write_series(tmp_path / "rle", n=1, compress="rle")[0]
    deflated = write_series(tmp_path / "deflate", n=1, compress="deflate")[0]
    enhanced = write_enhanced(tmp_path / "enhanced.dcm", [0.0, 2.0, 4.0], [1.0] * 3, [-1024.0] * 3)
    ds = pydicom.dcmread(explicit)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    ds.save_as(tmp_path / "implicit.dcm", enforce_file_format=True)
    ds = pydicom.dcmread(explicit)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRBigEndian
    pydicom.dcmwrite(tmp_path / "big.dcm", ds, implicit_vr=False, little_endian=False, enforce_file_format=True)
    for path, taken in [(explicit, True), (rle, True), (tmp_path / "implicit.dcm", True), (deflated, False),
                        (tmp_path / "big.dcm", False), (enhanced, False)]:
        assert _same_as_before(path, monkeypatch) == taken, path


def test_phantom_series_take_the_lean_path(tmp_path, monkeypatch):
    from phantoms.writers import DicomIdentity, write_dicom_series
    from storage.volume import Volume

    image = Volume(np.full((3, 8, 10), -100, np.int16), (0.7, 0.8, 2.5), (1.0, 2.0, 3.0),
                   (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    paths = write_dicom_series(image, str(tmp_path), DicomIdentity.synthetic(0, 0, 0, "test"))
    assert all(_same_as_before(Path(p), monkeypatch) for p in paths)


def _bases(tmp_path: Path) -> list[bytes]:
    return [dicom_file({0x00090010: private, "ReferencedImageSequence": nested(True, False)}, extra=padding),
            dicom_file({"ReferencedImageSequence": nested(False, True), "ModalityLUTSequence": modality_lut(True)},
                       IMPLICIT),
            dicom_file({"PixelData": None}, RLE, extra=encapsulated),
            write_series(tmp_path / "pydicom", n=1)[0].read_bytes()]


def test_truncated_at_every_offset(tmp_path, monkeypatch):
    for data in _bases(tmp_path):
        assert _same_as_before(_write(tmp_path, data), monkeypatch)
        for end in range(len(data)):
            _same_as_before(_write(tmp_path, data[:end]), monkeypatch)


def test_random_corruption_of_the_header(tmp_path, monkeypatch):
    rng = np.random.default_rng(20240601)
    taken = 0
    for data in _bases(tmp_path):
        header_end = data.rfind(b"\xe0\x7f\x10\x00") + 4
        for _ in range(80):
            corrupt = bytearray(data)
            for at in rng.integers(0, header_end, rng.integers(1, 4)):
                corrupt[at] = int(rng.integers(0, 256))
            taken += _same_as_before(_write(tmp_path, bytes(corrupt)), monkeypatch)
    assert taken > 0  # some corruptions (in values the readers skip) still read as ordinary


def test_read_slices_and_discovery_take_the_lean_path(tmp_path, monkeypatch):
    from storage.readers import discover_cases

    write_series(tmp_path, n=4)
    paths = sorted(str(p) for p in tmp_path.iterdir())
    with monkeypatch.context() as m:
        m.setattr(dicom, "lean_header", lambda src: None)
        before = read_series_headers(paths), discover_cases(str(tmp_path))
    monkeypatch.setattr(dicom, "read_dicom_file", lambda *a, **k: pytest.fail("pydicom read a plain file"))
    after = read_series_headers(paths), discover_cases(str(tmp_path))
    assert repr(after) == repr(before)


@pytest.mark.s3
def test_remote_discovery_takes_the_lean_path(tmp_path, monkeypatch, s3_server, s3_bucket):
    import fsspec

    from storage.readers import discover_cases

    opts = s3_server.storage_options
    fs, root = fsspec.core.url_to_fs(s3_bucket, **opts)
    for path in write_series(tmp_path, n=3):
        fs.put_file(str(path), f"{root}/series/{path.name}")
    uri = f"{s3_bucket}/series"
    with fs.open(f"{root}/series/{path.name}", "rb") as fh:
        assert lean_header(fh) is not None
    with monkeypatch.context() as m:
        m.setattr(dicom, "lean_header", lambda src: None)
        before = discover_cases(uri, storage_options=opts)
    monkeypatch.setattr(dicom, "read_dicom_file", lambda *a, **k: pytest.fail("pydicom read a plain file"))
    assert repr(discover_cases(uri, storage_options=opts)) == repr(before)
