"""Conformance suite of DatasetStore: every test runs on a local directory and on S3 (moto)."""

from __future__ import annotations

import itertools
import json
import pickle

import numpy as np
import pytest
import SimpleITK as sitk
import zarr

from storage import blobs
from storage.errors import StorageError
from storage.layout import FORMAT_VERSION
from storage.store import DatasetStore, plan_hash
from storage.store_root import list_datasets
from storage.uri import join_uri, open_fs
from tests.store.conftest import CHUNK_VOX, PLAN, CountingDatasetStore, case_attrs, ct_volume

LABELS = {0: "background", 1: "organ", 2: "tumour"}


def _ready(backend, **kw):
    store = backend.store(**kw)
    store.ensure(PLAN, LABELS)
    return store


def _chunk_keys_touched(start, size, chunks):
    ranges = [range(max(s, 0) // c, (s + k - 1) // c + 1) for s, k, c in zip(start, size, chunks)]
    return {"image/c/" + "/".join(map(str, idx)) for idx in itertools.product(*ranges)}


def _non_empty_blocks(image, block):
    out = 0
    for idx in itertools.product(*[range(0, n, b) for n, b in zip(image.shape, block)]):
        sl = tuple(slice(i, i + b) for i, b in zip(idx, block))
        out += bool((image[sl] != -1024).any())
    return out


def test_round_trip_exact(backend):
    store = _ready(backend)
    image, label = ct_volume()
    rec = store.write_case("case_001", image, label, case_attrs(), chunk_vox=CHUNK_VOX)
    assert rec["status"] == "done" and rec["shape_zyx"] == list(image.shape)
    np.testing.assert_array_equal(store.read_full("case_001"), image)
    np.testing.assert_array_equal(store.read_full("case_001", "label"), label)
    assert store.read_full("case_001").dtype == np.int16
    assert store.read_full("case_001", "label").dtype == np.uint8
    assert store.shape("case_001") == image.shape


def test_unlabelled_case_has_no_label(backend):
    store = _ready(backend)
    image, _ = ct_volume()
    store.write_case("u1", image, None, case_attrs(), chunk_vox=CHUNK_VOX)
    assert store.case_attrs("u1")["labelled"] is False
    with pytest.raises(StorageError, match="u1"):
        store.read_crop("u1", (0, 0, 0), (4, 4, 4), array="label")


def test_attrs_round_trip(backend):
    store = _ready(backend)
    image, label = ct_volume()
    store.write_case("c1", image, label, case_attrs(checksum="sha256:feed"), chunk_vox=CHUNK_VOX)
    attrs = store.case_attrs("c1")
    assert attrs["format_version"] == FORMAT_VERSION and attrs["case_id"] == "c1"
    assert attrs["spacing"] == [0.8, 0.7, 2.5]
    assert attrs["origin"] == [-100.0, -120.5, 30.0]
    assert attrs["direction"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    assert attrs["shape_zyx"] == list(image.shape)
    assert attrs["original_size"] == [512, 512, 80] and attrs["source_checksum"] == "sha256:feed"
    assert attrs["plan_hash"] == plan_hash(PLAN) and attrs["labelled"] is True
    clipped = np.clip(image.astype(np.float64), -1024, 325)
    assert attrs["stats"]["mean_hu"] == pytest.approx(clipped.mean())
    assert attrs["stats"]["std_hu"] == pytest.approx(clipped.std())
    assert (attrs["stats"]["min_hu"], attrs["stats"]["max_hu"]) == (int(image.min()), int(image.max()))
    counts = np.bincount(label.ravel())
    assert attrs["label_counts"] == {str(i): int(c) for i, c in enumerate(counts) if c}


def test_patient_fields_and_bad_input_refused(backend):
    store = _ready(backend)
    image, label = ct_volume()
    with pytest.raises(ValueError, match="PatientName"):
        store.write_case("c1", image, label, {**case_attrs(), "PatientName": "X"})
    with pytest.raises(ValueError, match="int16"):
        store.write_case("c1", image.astype(np.float32), label, case_attrs())
    with pytest.raises(ValueError, match="shape"):
        store.write_case("c1", image, label[:-1], case_attrs())
    with pytest.raises(ValueError, match="invalid case id"):
        store.write_case("../evil", image, label, case_attrs())
    assert store.case_record("c1") is None


@pytest.mark.parametrize("start", [(5, 10, 20), (0, 0, 0), (24, 38, 58)])
def test_crop_inside_equals_slice(backend, start):
    store = _ready(backend)
    image, label = ct_volume()
    store.write_case("c1", image, label, case_attrs(), chunk_vox=CHUNK_VOX)
    size = (16, 32, 32)
    sl = tuple(slice(s, s + k) for s, k in zip(start, size))
    np.testing.assert_array_equal(store.read_crop("c1", start, size), image[sl])
    np.testing.assert_array_equal(store.read_crop("c1", start, size, array="label"), label[sl])


def test_crop_partly_outside_is_padded(backend):
    store = _ready(backend)
    image, label = ct_volume()
    image[:] = np.maximum(image, -1000)  # no -1024 inside: padding is recognisable
    store.write_case("c1", image, label + 3, case_attrs(), chunk_vox=CHUNK_VOX)
    crop = store.read_crop("c1", (-3, 60, 85), (10, 20, 12))
    assert crop.shape == (10, 20, 12) and crop.dtype == np.int16
    np.testing.assert_array_equal(crop[3:, :10, :5], image[0:7, 60:70, 85:90])
    assert (crop[:3] == -1024).all() and (crop[:, 10:] == -1024).all() and (crop[:, :, 5:] == -1024).all()
    lab = store.read_crop("c1", (-3, 60, 85), (10, 20, 12), array="label")
    assert (lab[:3] == 0).all() and (lab[3:, :10, :5] == label[0:7, 60:70, 85:90] + 3).all()
    outside = store.read_crop("c1", (100, -50, 0), (4, 8, 8))
    assert (outside == -1024).all()
    with pytest.raises(ValueError, match="c1"):
        store.read_crop("c1", (0, 0, 0), (0, 4, 4))


def test_crop_reads_only_touched_chunks(backend):
    image, label = ct_volume()
    image[:] = np.maximum(image, -1000)  # every chunk holds data
    _ready(backend).write_case("c1", image, label, case_attrs(), chunk_vox=CHUNK_VOX, shard_vox=CHUNK_VOX)
    reader = backend.store(create=False, cls=CountingDatasetStore)
    start, size = (10, 20, 50), (8, 20, 20)
    np.testing.assert_array_equal(reader.read_crop("c1", start, size), image[10:18, 20:40, 50:70])
    assert f"{reader.case_path('c1')}/image/zarr.json" in [k for k, _ in reader.zstore.reads]
    chunks = reader._opened("c1", "image")[1]
    assert chunks is not None and chunks.n_requests == 8  # 2 x 2 x 2 chunks touched
    reader.zstore.reads.clear()
    np.testing.assert_array_equal(reader.read_crop("c1", start, size), image[10:18, 20:40, 50:70])
    assert reader.zstore.reads == []  # no metadata re-read per crop
    assert chunks.n_requests == 16
    fs, path = open_fs(join_uri(reader.uri, reader.case_path("c1"), "image"), backend.storage_options)
    touched = _chunk_keys_touched(start, size, CHUNK_VOX)
    assert chunks.n_bytes == 2 * sum(fs.size(f"{path}/{k.removeprefix('image/')}") for k in touched)


def test_sharded_crop_reads_cached_index_and_few_ranges(backend):
    image, label = ct_volume()
    image[:] = np.maximum(image, -1000)
    _ready(backend).write_case("c1", image, label, case_attrs(), chunk_vox=CHUNK_VOX,
                               shard_vox=(32, 64, 64))
    reader = backend.store(create=False)
    np.testing.assert_array_equal(reader.read_crop("c1", (2, 3, 4), (8, 8, 8)), image[2:10, 3:11, 4:12])
    shards = reader._opened("c1", "image")[1]
    assert shards is not None, "sharded array must use the fast shard reader"
    assert shards.n_requests == 2  # one shard index, one chunk range
    n_bytes = shards.n_bytes
    shard_size = shards._sizes[(0, 0, 0)]
    assert n_bytes < shard_size / 4
    # a crop over 2 x 2 x 2 chunks of one shard, index cached: one merged range request
    np.testing.assert_array_equal(reader.read_crop("c1", (10, 20, 20), (10, 20, 20)), image[10:20, 20:40, 20:40])
    assert shards.n_requests == 3
    # across all shards (partly outside): indexes fetched once each, results exact
    crop = reader.read_crop("c1", (-4, 40, 50), (44, 40, 50))
    np.testing.assert_array_equal(crop[4:, :30, :40], image[:, 40:70, 50:90])
    assert (crop[:4] == -1024).all() and (crop[:, 30:] == -1024).all()
    assert len(shards._indexes) == len(shards._sizes) == 8
    np.testing.assert_array_equal(reader.read_crop("c1", (30, 60, 60), (10, 10, 10), "label"),
                                  label[30:40, 60:70, 60:70])


def test_air_chunks_not_written(backend):
    store = _ready(backend)
    image, label = ct_volume()
    store.write_case("c1", image, label, case_attrs(), chunk_vox=CHUNK_VOX, shard_vox=CHUNK_VOX)
    fs, path = open_fs(join_uri(store.uri, store.case_path("c1"), "image", "c"), backend.storage_options)
    fs.invalidate_cache()
    n_objects = len(fs.find(path))
    total = np.prod([-(-n // c) for n, c in zip(image.shape, CHUNK_VOX)])
    expected = _non_empty_blocks(image, CHUNK_VOX)
    assert 0 < expected < total
    assert n_objects == expected
    np.testing.assert_array_equal(store.read_full("c1"), image)


def test_air_shards_not_written(backend):
    store = _ready(backend)
    image, label = ct_volume()
    shard = (32, 64, 64)
    store.write_case("c1", image, label, case_attrs(), chunk_vox=CHUNK_VOX, shard_vox=shard)
    fs, path = open_fs(join_uri(store.uri, store.case_path("c1"), "image", "c"), backend.storage_options)
    fs.invalidate_cache()
    expected = _non_empty_blocks(image, shard)
    assert 0 < expected < 8
    assert len(fs.find(path)) == expected
    np.testing.assert_array_equal(store.read_full("c1"), image)
    np.testing.assert_array_equal(store.read_crop("c1", (30, 50, 60), (10, 20, 30)), image[30:40, 50:70, 60:90])


def test_default_shards_per_backend(backend):
    store = _ready(backend)
    image, label = ct_volume()
    store.write_case("c1", image, label, case_attrs(), chunk_vox=CHUNK_VOX)
    arr = zarr.open_array(store.zstore, path=f"{store.case_path('c1')}/image", mode="r")
    assert arr.chunks == CHUNK_VOX
    if backend.kind == "s3":
        # default (128, 256, 256) clipped to the array rounded up to whole chunks
        assert arr.shards == (48, 96, 96)
        fs, path = open_fs(join_uri(store.uri, store.case_path("c1"), "image", "c"), backend.storage_options)
        assert len(fs.find(path)) == 1
    else:
        # on a filesystem, one shard per chunk row: a chunk deep, the whole (chunk-rounded) plane
        assert arr.shards == (CHUNK_VOX[0], 96, 96)
        fs, path = open_fs(join_uri(store.uri, store.case_path("c1"), "image", "c"), backend.storage_options)
        assert len(fs.find(path)) == -(-image.shape[0] // CHUNK_VOX[0])
    assert arr.metadata.fill_value == -1024
    codecs = json.dumps(arr.metadata.to_dict()["codecs"])
    assert '"blosc"' in codecs and '"cname": "zstd"' in codecs and '"shuffle": "shuffle"' in codecs
    # one Blosc block per (inner) chunk: the chunk's bytes
    assert f'"blocksize": {int(np.prod(CHUNK_VOX)) * 2}' in codecs


def test_crash_before_record_keeps_the_old_case_and_is_rewritable(backend):
    class CrashBeforeRecord(DatasetStore):
        def _put_json(self, uri, obj):
            if "/_cases/" in uri:
                raise RuntimeError("simulated crash")
            super()._put_json(uri, obj)

    store = _ready(backend)
    image, label = ct_volume()
    store.write_case("c1", image, label, case_attrs(), chunk_vox=CHUNK_VOX)
    crashing = backend.store(create=False, cls=CrashBeforeRecord)
    with pytest.raises(RuntimeError):
        crashing.write_case("c1", image + 1, label, case_attrs("sha256:new"), chunk_vox=CHUNK_VOX)
    with pytest.raises(RuntimeError):
        crashing.write_case("c2", image, label, case_attrs(), chunk_vox=CHUNK_VOX)
    # the old record and the arrays it names are untouched; the half-written generation is ignored
    assert store.is_done("c1", "sha256:abc", plan_hash(PLAN)) and store.case_path("c1") == "c1/g1"
    assert not store.is_done("c1", "sha256:new", plan_hash(PLAN))
    np.testing.assert_array_equal(store.read_full("c1"), image)
    assert not store.is_done("c2", "sha256:abc", plan_hash(PLAN))
    with pytest.raises(StorageError, match="c2.*no record"):
        store.read_crop("c2", (0, 0, 0), (2, 2, 2))
    assert store.done_cases() == ["c1"]
    manifest = store.consolidate_manifest()
    assert list(manifest["cases"]) == ["c1"] and store.done_cases() == ["c1"]
    store.write_case("c2", image, label, case_attrs(), chunk_vox=CHUNK_VOX)
    store.write_case("c1", image + 1, label, case_attrs("sha256:new"), chunk_vox=CHUNK_VOX)
    assert store.is_done("c2", "sha256:abc", plan_hash(PLAN)) and store.case_path("c2") == "c2/g2"
    assert store.case_path("c1") == "c1/g3"  # newer than the crashed attempt's g2
    np.testing.assert_array_equal(store.read_full("c2"), image)
    np.testing.assert_array_equal(store.read_full("c1"), image + 1)
    fs, path = open_fs(store.uri, backend.storage_options)
    fs.invalidate_cache()
    for case, gen in (("c1", "g3"), ("c2", "g2")):  # old and crashed generations are gone
        assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{path}/{case}", detail=False)) == [gen, "zarr.json"]


def test_is_done_idempotency(backend):
    store = _ready(backend)
    image, label = ct_volume()
    ph = plan_hash(PLAN)
    assert not store.is_done("c1", "sha256:abc", ph)
    store.write_case("c1", image, label, case_attrs(), chunk_vox=CHUNK_VOX)
    assert store.is_done("c1", "sha256:abc", ph)
    assert not store.is_done("c1", "sha256:other", ph)
    assert not store.is_done("c1", "sha256:abc", plan_hash({**PLAN, "version": 2}))
    store.write_case("c1", image, label, case_attrs(), chunk_vox=CHUNK_VOX)  # rewrite is fine
    assert store.is_done("c1", "sha256:abc", ph)
    store.write_failure("c1", "series has a slice gap", "/data/c1")
    assert not store.is_done("c1", "sha256:abc", ph)


def test_manifest_consolidation_done_and_failed(backend):
    store = _ready(backend)
    image, label = ct_volume()
    store.write_case("a", image, label, case_attrs("sha256:a"), chunk_vox=CHUNK_VOX)
    store.write_case("b", image[:, :40], None, case_attrs("sha256:b"), chunk_vox=CHUNK_VOX)
    store.write_failure("c", "truncated pixel data", "/data/c.dcm")
    assert store.done_cases() == ["a", "b"]  # from the records, before any consolidation
    stale = store.manifest()
    manifest = store.consolidate_manifest()
    assert manifest == store.manifest() and stale["cases"] == manifest["cases"]
    assert stale["stats"] == manifest["stats"]
    assert store.done_cases() == ["a", "b"]
    assert manifest["cases"]["c"] == {"status": "failed", "reason": "truncated pixel data",
                                      "source": "/data/c.dcm"}
    assert manifest["cases"]["b"]["shape_zyx"] == [40, 40, 90] and not manifest["cases"]["b"]["labelled"]
    assert manifest["label_names"] == {"0": "background", "1": "organ", "2": "tumour"}
    assert manifest["plan"] == PLAN and manifest["plan_hash"] == plan_hash(PLAN)
    both = np.clip(np.concatenate([image.ravel(), image[:, :40].ravel()]).astype(np.float64), -1024, 325)
    assert manifest["stats"]["mean_hu"] == pytest.approx(both.mean())
    assert manifest["stats"]["std_hu"] == pytest.approx(both.std())
    plain = json.loads(blobs.get_bytes(join_uri(store.uri, "manifest.json"), backend.storage_options))
    assert plain["cases"] == manifest["cases"]
    assert list_datasets(backend.root_uri, backend.storage_options) == ["ds"]


def test_manifest_hash_tracks_cases_and_plan(backend):
    store = _ready(backend)
    image, label = ct_volume()
    store.write_case("a", image, label, case_attrs("sha256:a"), chunk_vox=CHUNK_VOX)
    store.consolidate_manifest()
    h1 = store.manifest_hash()
    store.write_failure("z", "bad", "/z")
    store.consolidate_manifest()
    assert store.manifest_hash() == h1  # failures and timestamps do not change it
    store.write_case("a", image, label, case_attrs("sha256:a2"), chunk_vox=CHUNK_VOX)
    store.consolidate_manifest()
    h2 = store.manifest_hash()
    assert h2 != h1
    store.ensure({**PLAN, "version": 2}, LABELS)  # new plan: old cases are stale
    assert store.done_cases() == [] and store.manifest_hash() != h2


def test_missing_dataset_and_case(backend):
    with pytest.raises(StorageError, match="nope"):
        backend.store("nope", create=False)
    store = _ready(backend)
    with pytest.raises(StorageError, match="ghost"):
        store.case_attrs("ghost")
    with pytest.raises(StorageError, match="ghost"):
        store.read_crop("ghost", (0, 0, 0), (2, 2, 2))


def test_unknown_format_version_refused(backend):
    store = _ready(backend)
    group = zarr.open_group(store.zstore, mode="r+")
    group.attrs["pgl_dataset"] = {**group.attrs["pgl_dataset"], "format_version": 99}
    with pytest.raises(StorageError, match="format_version 99"):
        store.manifest()


def test_pickled_store_reads_same(backend):
    store = _ready(backend)
    image, label = ct_volume()
    store.write_case("c1", image, label, case_attrs(), chunk_vox=CHUNK_VOX)
    store.read_crop("c1", (0, 0, 0), (4, 4, 4))  # warm caches: they must not be pickled
    blob = pickle.dumps(store)
    assert len(blob) < 2000
    clone = pickle.loads(blob)
    np.testing.assert_array_equal(clone.read_crop("c1", (3, 5, 7), (9, 11, 13)), image[3:12, 5:16, 7:20])
    assert clone.case_attrs("c1") == store.case_attrs("c1")


def test_sitk_rebuild_reproduces_geometry(backend):
    store = _ready(backend)
    image, _ = ct_volume()
    src = sitk.GetImageFromArray(image)
    src.SetSpacing((0.71, 0.69, 2.5))
    src.SetOrigin((-180.2, -95.5, 1204.0))
    c, s = np.cos(0.3), np.sin(0.3)
    src.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    attrs = {**case_attrs(), "spacing": src.GetSpacing(), "origin": src.GetOrigin(),
             "direction": src.GetDirection()}
    store.write_case("geo", image, None, attrs, chunk_vox=CHUNK_VOX)
    a = store.case_attrs("geo")
    out = sitk.GetImageFromArray(store.read_full("geo"))
    out.SetSpacing(a["spacing"])
    out.SetOrigin(a["origin"])
    out.SetDirection(a["direction"])
    assert out.GetSpacing() == src.GetSpacing() and out.GetOrigin() == src.GetOrigin()
    assert out.GetDirection() == src.GetDirection() and out.GetSize() == src.GetSize()
    idx = (17, 33, 21)
    assert out.TransformIndexToPhysicalPoint(idx) == src.TransformIndexToPhysicalPoint(idx)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), image)
