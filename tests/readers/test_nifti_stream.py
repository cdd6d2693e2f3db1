"""Streamed NIfTI ingest (``storage.readers.nifti_stream``) gives exactly what the whole-file read
gives, never holds the whole input, and refuses broken files with nothing stored.

The reference is the whole-file path (``read_case(stream=False)``: SimpleITK + nibabel geometry,
value checks on the whole array), canonicalised and resampled in one piece. Files are written byte
by byte here (header, then voxels in NIfTI order, x fastest), so that scaling, byte order and
orientation are exactly the ones under test.
"""

from __future__ import annotations

import gzip
import os
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from storage.errors import RefusedInput, UnreadableInput
from storage.geometry import Resampled, canonicalize
from storage.ingest import ingest_case
from storage.plan import Plan
from storage.readers import discover_cases, read_case
from storage.readers.nifti_stream import NiftiSlices, open_slices
from storage.store import DatasetStore
from storage.uri import open_fs

SHAPE_XYZ = (48, 40, 30)
TARGET = (0.9, 1.1, 1.7)


def _write_nifti(path: Path, data_xyz: np.ndarray, affine: np.ndarray, slope: float = float("nan"),
                 inter: float = float("nan"), endian: str = "<", vox_offset: int = 352) -> Path:
    """``data_xyz`` stored as is (its dtype, ``endian``), with that affine (sform and qform) and
    scaling; ``vox_offset`` is only claimed (the voxels follow the 352-byte header)."""
    hdr = nib.Nifti1Header(endianness=endian)
    hdr.set_data_shape(data_xyz.shape)
    hdr.set_data_dtype(data_xyz.dtype)
    hdr.set_sform(affine, code=1)
    hdr.set_qform(affine, code=1)
    hdr["scl_slope"], hdr["scl_inter"] = slope, inter
    hdr["vox_offset"] = vox_offset
    raw = hdr.binaryblock + b"\0\0\0\0" + np.asarray(data_xyz, dtype=data_xyz.dtype.newbyteorder(endian)) \
        .tobytes(order="F")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw, compresslevel=1) if path.name.endswith(".gz") else raw)
    return path


def _ct_xyz(rng: np.random.Generator, dtype=np.int16, offset: float = 0.0) -> np.ndarray:
    """A CT-like volume (air around a body of soft tissue and noise), (x, y, z)."""
    hu = np.full(SHAPE_XYZ, -1000.0)
    hu[6:-6, 5:-5, :] = rng.normal(40, 200, (SHAPE_XYZ[0] - 12, SHAPE_XYZ[1] - 10, SHAPE_XYZ[2]))
    return np.round(hu - offset).astype(dtype)


# (name, 3x3 voxel-axis matrix in RAS): identity RAS (LPS flips x, y), LPS-like, z stored downwards,
# x and y swapped in plane, everything flipped
ORIENTATIONS = {
    "ras": np.diag([1.0, 1.0, 1.0]),
    "lps": np.diag([-1.0, -1.0, 1.0]),
    "z-down": np.diag([-1.0, -1.0, -1.0]),
    "swapped": np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]),
    "swapped-z-down": np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]]),
}


def _affine(orientation: str, spacing=(0.8, 0.7, 2.5)) -> np.ndarray:
    affine = np.eye(4)
    affine[:3, :3] = ORIENTATIONS[orientation] * np.asarray(spacing)
    affine[:3, 3] = (-20.0, 10.0, -35.0)
    return affine


def _case(folder: Path):
    (case,), problems, _ = discover_cases(str(folder))
    assert not problems
    return case


def _resampled(vol, is_label: bool) -> np.ndarray:
    """The whole resampled output, slabs asked for in the order the source reads, then finished."""
    res = Resampled(canonicalize(vol, is_label=is_label), TARGET, is_label=is_label, to_int16=not is_label)
    bounds = [(z0, min(z0 + 7, res.shape[0])) for z0 in range(0, res.shape[0], 7)]
    slabs = {b: res.slab(*b) for b in (reversed(bounds) if res.order == "descending" else bounds)}
    res.finish()
    return np.concatenate([slabs[b] for b in bounds])


def _both(case) -> tuple[tuple, tuple]:
    """(whole, streamed): (image, label or None, meta) of each read."""
    return read_case(case), read_case(case, stream=True)


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_streamed_equals_whole_read(tmp_path, orientation, suffix) -> None:
    rng = np.random.default_rng(len(orientation))
    _write_nifti(tmp_path / "imagesTr" / f"c_0{suffix}", _ct_xyz(rng), _affine(orientation))
    label_xyz = (rng.random(SHAPE_XYZ) < 0.3).astype(np.uint8) * rng.integers(1, 3, SHAPE_XYZ).astype(np.uint8)
    _write_nifti(tmp_path / "labelsTr" / f"c_0{suffix}", label_xyz, _affine(orientation))
    whole, streamed = _both(_case(tmp_path))
    assert isinstance(streamed[0].array, NiftiSlices) and isinstance(streamed[1].array, NiftiSlices)
    assert canonicalize(streamed[0]).array.descending == orientation.endswith("z-down")
    assert streamed[2] == whole[2]  # meta: checksum, original spacing and size, format
    for i, is_label in ((0, False), (1, True)):
        a, b = whole[i], streamed[i]
        assert (a.spacing_mm, a.origin_mm, a.direction, a.shape_zyx) == (b.spacing_mm, b.origin_mm, b.direction,
                                                                          b.shape_zyx)
        ref, got = _resampled(a, is_label), _resampled(b, is_label)
        assert got.dtype == ref.dtype and np.array_equal(got, ref)


@pytest.mark.parametrize("kind", ["uint16+intercept", "float32*slope", "big-endian", "int32", "int32-large*slope",
                                  "slope 0", "slope nan", "slope 1e-30", "intercept nan", "intercept inf"])
def test_stored_types_and_scaling(tmp_path, kind) -> None:
    """The stored type, byte order and scl_slope / scl_inter (as SimpleITK applies them, odd values
    included) change nothing: the stream gives what the whole-file read gives."""
    rng = np.random.default_rng(7)
    path = tmp_path / "a.nii.gz"
    odd = {"slope 0": (0.0, -1024.0), "slope nan": (float("nan"), -1024.0), "slope 1e-30": (1e-30, -1024.0),
           "intercept nan": (2.0, float("nan")), "intercept inf": (1.0, float("inf"))}
    if kind == "uint16+intercept":
        _write_nifti(path, _ct_xyz(rng, np.uint16, offset=-1024), _affine("lps"), 1.0, -1024.0)
    elif kind == "float32*slope":
        _write_nifti(path, (_ct_xyz(rng) / 0.5).astype(np.float32), _affine("lps"), 0.5, 0.0)
    elif kind == "big-endian":
        _write_nifti(path, _ct_xyz(rng), _affine("z-down"), endian=">")
    elif kind == "int32":
        _write_nifti(path, _ct_xyz(rng, np.int32), _affine("ras"))
    elif kind == "int32-large*slope":  # beyond float32's integers: ITK rounds them to float32 first, which
        hu = _ct_xyz(rng).astype(np.int64)  # moves these half-HU values across their rounding ties
        raw = 2**25 + (hu + 1024) * 2**13 + 2**12 + rng.integers(-3, 4, hu.shape)
        _write_nifti(path, raw.astype(np.int32), _affine("lps"), 2.0**-13, -(2.0**12 + 1024))
    else:
        _write_nifti(path, _ct_xyz(rng), _affine("lps"), *odd[kind])
    if kind.startswith("intercept"):  # nibabel, whose header the geometry comes from, refuses it: both do
        for stream in (False, True):
            with pytest.raises(UnreadableInput, match="invalid intercept"):
                read_case(_case(tmp_path), stream=stream)
        return
    whole, streamed = _both(_case(tmp_path))
    assert isinstance(streamed[0].array, NiftiSlices)
    assert np.array_equal(_resampled(streamed[0], False), _resampled(whole[0], False))


def test_data_offset_inside_the_header_is_refused(tmp_path) -> None:
    """vox_offset 0 in a .nii.gz: the voxels would be read shifted by the header; both reads refuse."""
    _write_nifti(tmp_path / "a.nii.gz", _ct_xyz(np.random.default_rng(1)), _affine("lps"), vox_offset=0)
    case = _case(tmp_path)
    for stream in (False, True):
        with pytest.raises(RefusedInput, match="vox_offset 0 lies inside the 352-byte header"):
            read_case(case, stream=stream)


def test_stacks_a_stream_cannot_serve_are_read_whole(tmp_path) -> None:
    """A sagittal stack (canonical z is not the stored k axis) and an oblique one: the whole-file read."""
    rng = np.random.default_rng(2)
    sagittal = np.array([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]]) * 0.8
    affine = np.eye(4)
    affine[:3, :3] = sagittal
    path = _write_nifti(tmp_path / "s" / "a.nii.gz", _ct_xyz(rng), affine)
    assert open_slices(str(path), False) is None
    image, _, _ = read_case(_case(tmp_path / "s"), stream=True)
    assert isinstance(image.array, np.ndarray)
    theta = np.deg2rad(30)
    affine[:3, :3] = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    assert open_slices(str(_write_nifti(tmp_path / "o" / "a.nii.gz", _ct_xyz(rng), affine)), False) is None


def _labelled_dataset(tmp_path: Path, image_xyz: np.ndarray, label_xyz: np.ndarray, orientation: str = "z-down",
                      vox_offset: int = 352):
    src = tmp_path / "raw"
    _write_nifti(src / "imagesTr" / "c_0.nii.gz", image_xyz, _affine(orientation), vox_offset=vox_offset)
    _write_nifti(src / "labelsTr" / "c_0.nii.gz", label_xyz, _affine(orientation))
    (src / "dataset.json").write_text('{"labels": {"0": "background", "1": "organ", "2": "lesion"}}')
    (case,), problems, info = discover_cases(str(src))
    assert not problems
    return case, info


def _ingest(tmp_path: Path, case, info, stream: bool, name: str, monkeypatch, shards=None):
    import storage.ingest as ingest
    import storage.readers as readers

    def read(*args, **kwargs):
        out = readers.read_case(*args, **{**kwargs, "stream": stream})
        assert isinstance(out[0].array, np.ndarray) != stream  # the path under test is the one taken
        return out
    monkeypatch.setattr(ingest, "read_case", read)
    plan = Plan(target_spacing_mm=TARGET, chunk_vox=(8, 16, 16), shard_vox=shards)
    store = DatasetStore(str(tmp_path / name), "ds", create=True)
    store.ensure(plan.to_dict(), info["label_names"])
    return ingest_case(case, str(tmp_path / name), "ds", plan), store


@pytest.mark.parametrize("shards", [None, (16, 32, 32)], ids=["chunks", "shards"])
def test_ingest_writes_the_same_objects(tmp_path, monkeypatch, shards) -> None:
    """Streamed (chunk rows written from the last: the stack is stored z-down) and whole-file
    ingest store byte-identical objects and equal records."""
    rng = np.random.default_rng(5)
    label = (rng.random(SHAPE_XYZ) < 0.2).astype(np.uint8)
    case, info = _labelled_dataset(tmp_path, _ct_xyz(rng), label)
    objects, records = {}, {}
    for stream in (False, True):
        result, store = _ingest(tmp_path, case, info, stream, f"s{stream}", monkeypatch, shards)
        assert result.status == "done", result.reason
        fs, base = open_fs(store.uri)
        objects[stream] = {p[len(base):]: fs.cat(p) for p in fs.find(f"{base}/{case.case_id}")}
        records[stream] = {k: v for k, v in store.case_record(case.case_id).items() if k != "written"}
    assert len(objects[True]) > 10 and objects[True] == objects[False]
    assert records[True] == records[False]


def _truncated(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _flipped_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, reason", [
    ("truncated-image", "truncated"),
    ("corrupt-image", "corrupt compressed data"),
    ("truncated-label", "truncated"),
    ("not-hu", "do not look like Hounsfield units"),
    ("label-values", "outside 0..255"),
    ("nan-image", "NaN"),
    ("huge-offset", "fewer than the header's data offset"),
])
def test_broken_inputs_fail_with_nothing_stored(tmp_path, monkeypatch, damage, reason) -> None:
    """A fault that shows only while (or after) streaming fails the case with its reason, naming the
    file; no array of it is kept, and a case written before stays readable until then."""
    rng = np.random.default_rng(11)
    image = _ct_xyz(rng) if damage not in ("not-hu", "nan-image") else None
    if damage == "not-hu":
        image = rng.integers(0, 255, SHAPE_XYZ).astype(np.int16)
    if damage == "nan-image":
        image = _ct_xyz(rng).astype(np.float32)
        image[5, 5, -1] = np.nan  # in the last stored slice
    label = (rng.random(SHAPE_XYZ) < 0.2).astype(np.int16)
    if damage == "label-values":
        label[3, 3, -2] = 300
    offset = 2**30 if damage == "huge-offset" else 352  # claimed: 1 GiB of "extensions" (kept: nothing)
    case, info = _labelled_dataset(tmp_path, image, label, orientation="lps", vox_offset=offset)
    which = case.label_uri if damage.endswith("label") else case.image_uris[0]
    if damage.startswith("truncated"):
        _truncated(Path(which))
    elif damage == "corrupt-image":
        _flipped_byte(Path(which))
    result, store = _ingest(tmp_path, case, info, True, "out", monkeypatch)
    assert result.status == "failed" and reason in result.reason, result.reason
    if damage not in ("not-hu", "nan-image", "huge-offset"):
        assert os.path.basename(which) in result.source + result.reason
    assert store.case_record(case.case_id)["status"] == "failed"
    fs, base = open_fs(store.uri)
    assert not [p for p in fs.find(f"{base}/{case.case_id}") if "/image/" in p or "/label/" in p]


def test_streamed_ingest_never_holds_the_input(tmp_path, monkeypatch) -> None:
    """Peak traced memory of a streamed ingest (image and label) stays well below one input volume:
    a few decoded slices, decoder blocks and chunk rows, whatever the volume's size. (The whole-file
    read holds the volume in SimpleITK's buffers, which tracemalloc does not see.)"""
    rng = np.random.default_rng(3)
    shape = (256, 256, 320)
    image = np.full(shape, -1000, np.int16)
    image[20:-20, 20:-20] = rng.normal(40, 200, (216, 216, 320)).astype(np.int16)
    label = (image > 200).astype(np.uint8)
    case, info = _labelled_dataset(tmp_path, image, label, orientation="z-down")
    tracemalloc.start()
    try:
        result, _ = _ingest(tmp_path, case, info, True, "m", monkeypatch)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.status == "done", result.reason
    assert peak < image.nbytes / 2, f"peak {peak / 1e6:.1f} MB for a {image.nbytes / 1e6:.1f} MB input"


@pytest.mark.s3
def test_streams_inputs_from_s3(tmp_path, monkeypatch, s3_server, s3_bucket) -> None:
    """A case in object storage streams from its temporary local copy (removed once read began)."""
    rng = np.random.default_rng(4)
    case, info = _labelled_dataset(tmp_path, _ct_xyz(rng), (rng.random(SHAPE_XYZ) < 0.2).astype(np.uint8))
    fs, _ = open_fs(s3_bucket, s3_server.storage_options)
    fs.put(str(tmp_path / "raw"), s3_bucket.removeprefix("s3://") + "/raw", recursive=True)
    (remote,), problems, _ = discover_cases(f"{s3_bucket}/raw", s3_server.storage_options)
    assert not problems
    image, label, _ = read_case(remote, storage_options=s3_server.storage_options, stream=True)
    assert isinstance(image.array, NiftiSlices)  # its temporary copy is gone: it reads from the open file
    local_image, local_label, _ = read_case(case)
    assert np.array_equal(_resampled(image, False), _resampled(local_image, False))
    assert np.array_equal(_resampled(label, True), _resampled(local_label, True))
