"""Streamed DICOM ingest (``storage.readers.dicom_stream``) gives exactly what the whole-series read
gives, never holds the whole series, and fails a series with an undecodable slice with nothing
stored."""

from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

import numpy as np
import pydicom
import pytest

from phantoms import write_dataset
from storage.geometry import Resampled, canonicalize
from storage.ingest import ingest_case
from storage.plan import Plan
from storage.readers import discover_cases, read_case
from storage.readers.dicom_stream import DicomSlices
from storage.store import DatasetStore
from storage.uri import open_fs
from tests.readers.synth import write_series

TARGET = (0.5, 0.45, 1.3)


def _resampled(vol, order: str = "ascending") -> np.ndarray:
    res = Resampled(canonicalize(vol), TARGET, to_int16=True)
    bounds = [(z0, min(z0 + 3, res.shape[0])) for z0 in range(0, res.shape[0], 3)]
    slabs = {b: res.slab(*b) for b in (reversed(bounds) if order == "descending" else bounds)}
    res.finish()
    return np.concatenate([slabs[b] for b in bounds])


def _case(folder: Path):
    (case,), problems, _ = discover_cases(str(folder))
    assert not problems
    return case


@pytest.mark.parametrize("iop, slope, compress", [
    ((1, 0, 0, 0, 1, 0), 1.0, None),          # axial, canonical already
    ((-1, 0, 0, 0, -1, 0), 1.0, None),        # rows and columns flipped
    ((0, 1, 0, 1, 0, 0), 1.0, None),          # rows and columns swapped (the normal points down)
    ((1, 0, 0, 0, 1, 0), 0.5, None),          # float rescale: decoded by GDCM, float32 HU
    ((1, 0, 0, 0, 1, 0), 1.0, "rle"),         # compressed: GDCM
], ids=["axial", "flipped", "swapped", "float-rescale", "rle"])
@pytest.mark.parametrize("order", ["ascending", "descending"])
def test_streamed_equals_whole_read(tmp_path, iop, slope, compress, order) -> None:
    write_series(tmp_path, n=7, iop=iop, slope=slope, compress=compress)
    case = _case(tmp_path)
    whole, streamed = read_case(case), read_case(case, stream=True)
    assert isinstance(streamed[0].array, DicomSlices) and streamed[2] == whole[2]
    a, b = whole[0], streamed[0]
    assert (a.spacing_mm, a.origin_mm, a.direction, a.shape_zyx, a.array.dtype) == \
        (b.spacing_mm, b.origin_mm, b.direction, b.shape_zyx, b.array.dtype)
    assert np.array_equal(_resampled(b, order), _resampled(a))


def test_sagittal_series_is_read_whole(tmp_path) -> None:
    write_series(tmp_path, n=5, iop=(0, 1, 0, 0, 0, -1))  # slice normal along x
    image, _, _ = read_case(_case(tmp_path), stream=True)
    assert isinstance(image.array, np.ndarray)


def _ingest(tmp_path: Path, case, stream: bool, name: str, monkeypatch, spacing=(0.9, 0.9, 1.7)):
    import storage.ingest as ingest
    import storage.readers as readers

    def read(*args, **kwargs):
        out = readers.read_case(*args, **{**kwargs, "stream": stream})
        assert isinstance(out[0].array, np.ndarray) != stream  # the path under test is the one taken
        return out
    monkeypatch.setattr(ingest, "read_case", read)
    plan = Plan(target_spacing_mm=spacing, chunk_vox=(8, 32, 32))
    store = DatasetStore(str(tmp_path / name), "ds", create=True)
    store.ensure(plan.to_dict(), {})
    return ingest_case(case, str(tmp_path / name), "ds", plan), store


@pytest.fixture(scope="module")
def series(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("dicom")
    return write_dataset(str(root), "pool", 1, seed=2, shape_zyx=(64, 256, 256), formats=("dicom",))["folders"]["dicom"]


def test_ingest_writes_the_same_objects(tmp_path, monkeypatch, series) -> None:
    (case,), _, _ = discover_cases(series)
    objects = {}
    for stream in (False, True):
        result, store = _ingest(tmp_path, case, stream, f"s{stream}", monkeypatch)
        assert result.status == "done", result.reason
        fs, base = open_fs(store.uri)
        objects[stream] = {p[len(base):]: fs.cat(p) for p in fs.find(f"{base}/{case.case_id}")}
    assert len(objects[True]) > 10 and objects[True] == objects[False]


def test_streamed_ingest_never_holds_the_series(tmp_path, monkeypatch, series) -> None:
    """Streaming saves at least 3/4 of one volume of the series (64 x 256 x 256 int16) in peak
    traced memory against the whole-series read (whose stacked volume numpy allocates, traced); the
    output is about as large (the phantom's 1.77 x 1.77 x 4.08 mm resampled to 1.8 x 1.8 x 4 mm)."""
    (case,), _, _ = discover_cases(series)
    volume_bytes = 64 * 256 * 256 * 2
    peaks = {}
    for stream in (True, False):
        tracemalloc.start()
        try:
            result, _ = _ingest(tmp_path, case, stream, f"m{stream}", monkeypatch, spacing=(1.8, 1.8, 4.0))
            _, peaks[stream] = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert result.status == "done", result.reason
    assert peaks[True] < peaks[False] - 0.75 * volume_bytes, (peaks, volume_bytes)


@pytest.mark.parametrize("damage", ["truncated-slice", "not-hu"])
def test_broken_series_fails_with_nothing_stored(tmp_path, monkeypatch, damage) -> None:
    """A slice whose pixels cannot be read (found while streaming), or a series that is not HU
    (known after the last slice): the case fails with the reason; nothing of it is stored."""
    if damage == "not-hu":  # the rescale intercept dropped: air reads +24, not -1000
        for path in write_series(tmp_path / "raw", n=6, intercept=-1024.0):
            ds = pydicom.dcmread(path)
            ds.RescaleIntercept = 0
            ds.save_as(path, enforce_file_format=True)
    else:
        paths = write_series(tmp_path / "raw", n=6)
        victim = sorted(paths)[2]
        data = victim.read_bytes()
        victim.write_bytes(data[: len(data) - 20])  # the pixel data stops short
    case = _case(tmp_path / "raw")
    result, store = _ingest(tmp_path, case, True, "out", monkeypatch)
    expected = "truncated pixel data" if damage == "truncated-slice" else "do not look like Hounsfield units"
    assert result.status == "failed" and expected in result.reason, result.reason
    if damage == "truncated-slice":
        assert os.path.basename(str(victim)) in result.source + result.reason
    assert store.case_record(case.case_id)["status"] == "failed"
    fs, base = open_fs(store.uri)
    assert not [p for p in fs.find(f"{base}/{case.case_id}") if "/image/" in p]


def test_checksum_beside_the_write_is_stored_and_its_failure_fails_the_case(tmp_path, monkeypatch) -> None:
    """A new case's checksum, computed while the case is read and written, is the one stored; when
    computing it fails (a file unreadable by then), the case fails and nothing of it is done."""
    import storage.ingest as ingest
    from storage.checksum import sha256_files
    from storage.errors import UnreadableInput

    write_series(tmp_path / "raw", n=6)
    case = _case(tmp_path / "raw")
    result, store = _ingest(tmp_path, case, True, "ok", monkeypatch)
    assert result.status == "done", result.reason
    assert store.case_record(case.case_id)["source_checksum"] == sha256_files(list(case.image_uris))
    assert store.case_attrs(case.case_id)["source_checksum"] == sha256_files(list(case.image_uris))

    def unreadable(uris, storage_options=None):
        raise UnreadableInput(uris[0], "input vanished while it was hashed")

    monkeypatch.setattr(ingest, "sha256_files", unreadable)
    result, store = _ingest(tmp_path, case, True, "bad", monkeypatch)
    assert result.status == "failed" and "vanished while it was hashed" in result.reason, result.reason
    assert store.case_record(case.case_id)["status"] == "failed"
