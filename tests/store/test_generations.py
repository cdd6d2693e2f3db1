"""Case generations and the manifest derived from the records (format version 2), on local disk
and S3: version 1 stores stay readable and migrate case by case, readers follow a rewrite, the
manifest never lists what the records do not say is done, and its hash only moves with the data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from storage import blobs, layout
from storage.case_arrays import write_array
from storage.errors import StorageError
from storage.manifest import done_record
from storage.uri import join_uri, open_fs
from tests.store.conftest import CHUNK_VOX, PLAN, case_attrs, ct_volume

LABELS = {0: "background", 1: "organ", 2: "tumour"}


def _ready(backend):
    store = backend.store()
    store.ensure(PLAN, LABELS)
    return store


def _entries(store, case_id: str) -> list[str]:
    fs, path = open_fs(store.uri, store.storage_options)
    fs.invalidate_cache()
    try:
        found = fs.ls(f"{path}/{case_id}", detail=False)
    except FileNotFoundError:
        return []
    return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in found)


def _write_v1_case(store, case_id: str, image, label, checksum: str) -> None:
    """A case as format version 1 wrote it: group and arrays in <case>/, a record without generation."""
    attrs = layout.case_attributes(case_id, case_attrs(checksum), image.shape, layout.image_stats(image),
                                   layout.label_counts(label))
    attrs["format_version"] = 1
    group = zarr.open_group(store.zstore, path=case_id, mode="w", zarr_format=3, attributes={"pgl_case": attrs})
    for name, data in (("image", image), ("label", label)):
        write_array(group, name, data, CHUNK_VOX, None, 1)
    record = {k: v for k, v in done_record(attrs, "g1").items() if k != "generation"}
    record["format_version"] = 1
    blobs.put_bytes_atomic(join_uri(store.uri, "_cases", f"{case_id}.json"), json.dumps(record).encode(),
                           store.storage_options)


def _as_v1_manifest(store) -> None:
    group = zarr.open_group(store.zstore, mode="r+")
    group.attrs["pgl_dataset"] = {**store.consolidate_manifest(), "format_version": 1}


def test_version_1_store_reads_and_migrates(backend):
    store = _ready(backend)
    image, label = ct_volume()
    _write_v1_case(store, "old", image, label, "sha256:a")
    _as_v1_manifest(store)
    reader = backend.store(create=False)
    assert reader.manifest()["format_version"] == 1  # the consolidated copy agrees with the records
    assert reader.done_cases() == ["old"] and reader.case_path("old") == "old"
    np.testing.assert_array_equal(reader.read_full("old", "label"), label)
    assert reader.case_attrs("old")["format_version"] == 1
    v2 = backend.store("v2")
    v2.ensure(PLAN, LABELS)
    v2.write_case("old", image, label, case_attrs("sha256:a"), chunk_vox=CHUNK_VOX)
    assert v2.manifest_hash() == reader.manifest_hash()  # same data, same hash, whatever the version
    store.write_case("old", image + 1, label, case_attrs("sha256:b"), chunk_vox=CHUNK_VOX)
    assert store.case_path("old") == "old/g1" and _entries(store, "old") == ["g1", "zarr.json"]
    assert "pgl_case" not in zarr.open_group(store.zstore, path="old", mode="r").attrs
    np.testing.assert_array_equal(backend.store(create=False).read_full("old"), image + 1)


def test_sweep_keeps_what_the_record_names(backend):
    store = _ready(backend)
    image, label = ct_volume(shape=(20, 30, 40))
    _write_v1_case(store, "old", image, label, "sha256:a")
    zarr.open_group(store.zstore, path="old/g1", mode="w", zarr_format=3)  # a crashed write's leftovers
    store.write_case("new", image, label, case_attrs(), chunk_vox=CHUNK_VOX)
    zarr.open_group(store.zstore, path="new/g7", mode="w", zarr_format=3)
    for case in ("old", "new", "ghost"):
        store.sweep_case(case)
    assert _entries(store, "old") == ["image", "label", "zarr.json"]
    assert _entries(store, "new") == ["g1", "zarr.json"]
    store.write_case("new", image, label, case_attrs(), chunk_vox=CHUNK_VOX)
    assert store.case_path("new") == "new/g2"  # record's g1 + 1: the swept g7 is gone
    store.write_failure("new", "refused on rerun", "/raw/new")
    assert _entries(store, "new") == []  # a failed case keeps no arrays
    with pytest.raises(StorageError, match="'new'.*'failed'"):
        store.read_crop("new", (0, 0, 0), (2, 2, 2))
    assert store.manifest()["cases"]["new"]["status"] == "failed"


def test_reader_follows_a_rewrite_it_did_not_see(backend):
    store = _ready(backend)
    image, label = ct_volume(shape=(20, 30, 40))
    store.write_case("c1", image, label, case_attrs(), chunk_vox=CHUNK_VOX)
    reader = backend.store(create=False)
    assert reader.done_cases() == ["c1"]  # reader now knows c1 is at g1, arrays not yet opened
    store.write_case("c1", image + 5, label, case_attrs("sha256:new"), chunk_vox=CHUNK_VOX)
    np.testing.assert_array_equal(reader.read_crop("c1", (0, 0, 0), (20, 30, 40)), image + 5)
    assert reader.case_path("c1") == "c1/g2"


def test_manifest_is_derived_from_the_records(backend):
    store = _ready(backend)
    image, label = ct_volume(shape=(20, 30, 40))
    store.write_case("a", image, label, case_attrs("sha256:a"), chunk_vox=CHUNK_VOX)
    consolidated = store.consolidate_manifest()
    digest = store.manifest_hash()
    store.write_case("a", image, label, case_attrs("sha256:a"), chunk_vox=CHUNK_VOX)  # a forced rewrite
    assert store.manifest()["cases"]["a"]["generation"] == "g2"  # the stale copy is not served
    assert store.manifest_hash() == digest  # unchanged content: unchanged hash
    store.write_case("b", image[:, :20], None, case_attrs("sha256:b"), chunk_vox=CHUNK_VOX)
    fresh = store.manifest()
    assert store.done_cases() == ["a", "b"] and store.manifest_hash() != digest
    assert fresh["stats"]["n_vox"] == consolidated["stats"]["n_vox"] + image[:, :20].size
    assert fresh["cases"] == store.consolidate_manifest()["cases"]


def test_bad_records_are_named(backend):
    store = _ready(backend)
    uri = join_uri(store.uri, "_cases", "bad.json")
    blobs.put_bytes_atomic(uri, b"{not json", backend.storage_options)
    with pytest.raises(StorageError, match="bad.json"):
        store.manifest()
    blobs.put_bytes_atomic(uri, json.dumps({"case_id": "bad", "format_version": 99}).encode(),
                           backend.storage_options)
    with pytest.raises(StorageError, match="bad.json.*format_version 99"):
        store.done_cases()
    with pytest.raises(StorageError, match="format_version 99"):
        store.case_record("bad")
