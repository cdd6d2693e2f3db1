"""The streamed, direct case writer writes exactly what the zarr-python writer wrote before.

The reference is the previous ingest path, kept here: the whole case read, canonicalised, resampled
and cast in memory (``storage.geometry.resample``), statistics in float64 with ``np.dot`` and label
counts with ``np.bincount``, the case group created with its attributes and each array written by
zarr-python (``storage.case_arrays.write_array``). The new path is ``ingest_case`` (resampling a chunk
row at a time, chunks and shards written by ``storage.chunk_writer``). Every object of the case
folder (group and array metadata, every chunk or shard) must be byte-identical, and the record
equal up to its time stamp, for DICOM and NIfTI phantoms, written to a local folder and to S3
(moto), with and without shards (locally; S3 shards by default). zarr-python's reference is written
to a local folder in both cases, with the layout of the new path's store.
"""

from __future__ import annotations

import json
import math
import tracemalloc

import numpy as np
import pytest
import zarr

from phantoms import write_dataset
from storage import layout
from storage.case_arrays import array_layout, write_array
from storage.geometry import Resampled, canonicalize, resample, to_int16_hu
from storage.ingest import case_attrs, with_source, ingest_case
from storage.manifest import done_record
from storage.plan import Plan
from storage.readers import discover_cases, read_case
from storage.store import DatasetStore
from storage.uri import is_object_store, open_fs
from storage.volume import Volume

SPACING = (1.1, 1.3, 1.7)  # real interpolation on every axis, and many chunk rows
CHUNKS = (8, 16, 16)


def _old_image_stats(image: np.ndarray) -> dict:
    """The statistics as computed before (float64 copies, np.dot, 16-slice slabs)."""
    lo, hi = layout.STATS_CLIP_HU
    total = total_sq = 0.0
    for z0 in range(0, image.shape[0], 16):
        slab = np.clip(image[z0:z0 + 16], lo, hi).astype(np.float64).ravel()
        total += float(slab.sum())
        total_sq += float(np.dot(slab, slab))
    n = int(image.size)
    mean = total / n
    nbins = (layout.BODY_HIST_HI_HU - layout.BODY_HIST_LO_HU) // layout.BODY_BIN_HU
    hist, bn, bt, bq = np.zeros(nbins, dtype=np.int64), 0, 0.0, 0.0
    sub = image[::2, ::2, ::2]
    for z0 in range(0, sub.shape[0], 16):
        slab = np.asarray(sub[z0:z0 + 16]).ravel()
        body = slab[slab >= layout.BODY_MIN_HU].astype(np.int32)
        if body.size:
            bn, bt = bn + int(body.size), bt + float(body.sum(dtype=np.float64))
            bq += float(np.square(body, dtype=np.float64).sum())
            hist += np.bincount((np.clip(body, layout.BODY_HIST_LO_HU, layout.BODY_HIST_HI_HU - 1)
                                 - layout.BODY_HIST_LO_HU) // layout.BODY_BIN_HU, minlength=nbins)
    return {"mean_hu": mean, "std_hu": math.sqrt(max(total_sq / n - mean * mean, 0.0)),
            "min_hu": int(image.min()), "max_hu": int(image.max()), "n_vox": n, "sum_hu": total,
            "sumsq_hu": total_sq, "clip_hu": list(layout.STATS_CLIP_HU), "region": "whole_volume",
            "body": {"n_vox": bn, "sum_hu": bt, "sumsq_hu": bq, "min_hu": layout.BODY_MIN_HU, "stride": 2,
                     "hist_lo_hu": layout.BODY_HIST_LO_HU, "bin_hu": layout.BODY_BIN_HU, "hist": hist.tolist()}}


def _old_write(store: DatasetStore, case, plan: Plan, object_store: bool | None = None) -> dict:
    """The case written as before this writer: whole arrays in memory, zarr-python writing them
    (with the default layout of an object store or a filesystem: ``object_store``, else the
    store's own)."""
    image, label, meta = read_case(case, **plan.read_options())
    image = to_int16_hu(resample(canonicalize(image), plan.target_spacing_mm))
    lab = resample(canonicalize(label), plan.target_spacing_mm, is_label=True).array.astype(np.uint8) \
        if label is not None else None
    attrs = with_source(case_attrs(Resampled(image, plan.target_spacing_mm), meta, meta["source_checksum"], plan),
                         case)
    counts = None
    if lab is not None:
        found = np.bincount(lab.reshape(-1), minlength=1)
        counts = {str(i): int(c) for i, c in enumerate(found) if c}
    attributes = layout.case_attributes(case.case_id, attrs, image.array.shape, _old_image_stats(image.array), counts)
    group = zarr.open_group(store.zstore, path=f"{case.case_id}/g1", mode="w", zarr_format=3,
                            attributes={"pgl_case": attributes})
    object_store = is_object_store(store.uri) if object_store is None else object_store
    chunks, shards = array_layout(image.array.shape, plan.chunk_vox, plan.shard_vox, object_store)
    for name, data in (("image", image.array), ("label", lab)):
        if data is not None:
            write_array(group, name, data, chunks, shards, plan.zstd_level)
    record = done_record(attributes, "g1")
    store._put_json(store._record_uri(case.case_id), record)
    return record


def _objects(store: DatasetStore, case_id: str) -> dict[str, bytes]:
    fs, base = open_fs(store.uri, store.storage_options)
    fs.invalidate_cache()
    paths = [p for p in fs.find(f"{base}/{case_id}")]
    return {p[len(base):]: data for p, data in fs.cat(paths).items()}


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("raw")
    return write_dataset(str(root), "spleen", 1, seed=3, shape_zyx=(36, 72, 80), formats=("nifti", "dicom"))["folders"]


@pytest.mark.parametrize("fmt", ["nifti", "dicom"])
@pytest.mark.parametrize("shards", [None, (24, 32, 48)], ids=["default", "shards"])
@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_same_objects_as_zarr_writer(raw, fmt, shards, where, tmp_path, request) -> None:
    options = None
    if where == "s3":
        options = request.getfixturevalue("s3_server").storage_options
        root = request.getfixturevalue("s3_bucket")
    else:
        root = str(tmp_path)
    (case,), problems, info = discover_cases(raw[fmt])
    assert not problems
    plan = Plan(target_spacing_mm=SPACING, chunk_vox=CHUNKS, shard_vox=shards)
    # the reference is zarr-python's output, whose bytes and keys do not depend on the store: written
    # to a local folder (zarr's sharded writes to moto take ~40 s here), with the new path's layout
    stores = {"old": DatasetStore(str(tmp_path / "old"), "ds", create=True),
              "new": DatasetStore(f"{root}/new", "ds", options, create=True)}
    for store in stores.values():
        store.ensure(plan.to_dict(), info.get("label_names", {1: "spleen"}))
    old = _old_write(stores["old"], case, plan, object_store=is_object_store(root))
    result = ingest_case(case, f"{root}/new", "ds", plan, options)
    assert result.status == "done", result.reason
    new = stores["new"].case_record(case.case_id)
    assert {k: v for k, v in new.items() if k != "written"} == {k: v for k, v in old.items() if k != "written"}
    a, b = _objects(stores["old"], case.case_id), _objects(stores["new"], case.case_id)
    n_data = sum("/c/" in k for k in a)  # default layout: a shard per chunk row locally, (128, 256, 256) on S3
    assert n_data > (20 if where == "local" and not shards else 2) and sorted(a) == sorted(b)
    assert [k for k in a if a[k] != b[k]] == []
    assert new["labelled"] == (fmt == "nifti")  # the DICOM phantom is a series without a label map
    if fmt == "nifti":
        assert len(new["label_counts"]) == 2 and any(k.endswith("/label/zarr.json") for k in a)


def test_zarr_fallback_writes_the_same(tmp_path) -> None:
    """``direct_writes=False`` (zarr-python writing each chunk row) gives the same objects."""
    rng = np.random.default_rng(0)
    image = np.full((37, 40, 50), -1024, np.int16)
    image[3:30, 5:33, 8:45] = rng.normal(30, 200, (27, 28, 37)).astype(np.int16)
    label = (image > 100).astype(np.uint8)
    attrs = {"spacing": (1, 1, 2), "origin": (0, 0, 0), "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1),
             "source_checksum": "sha256:x", "plan_hash": "p"}
    found = {}
    for direct in (True, False):
        for shard in (None, (16, 32, 32)):
            store = DatasetStore(str(tmp_path / f"{direct}-{shard}"), "ds", create=True)
            store.direct_writes = direct
            store.write_case("c", image, label, attrs, chunk_vox=(8, 16, 16), shard_vox=shard)
            found[direct, shard] = _objects(store, "c")
            np.testing.assert_array_equal(store.read_full("c"), image)
    for shard in (None, (16, 32, 32)):
        assert found[True, shard] == found[False, shard]


def test_resampled_output_is_never_whole(tmp_path) -> None:
    """Writing a resampled slab source holds a few chunk rows of the output, not all of it."""
    rng = np.random.default_rng(1)
    src = Volume(rng.normal(0, 300, (160, 128, 128)).astype(np.int16), (1.0, 1.0, 2.0), (0, 0, 0),
                 (1, 0, 0, 0, 1, 0, 0, 0, 1))
    res = Resampled(src, (1.0, 1.0, 0.5), to_int16=True)  # 640 x 128 x 128 out: 21 MB; a chunk row 0.5 MB
    out_bytes = int(np.prod(res.shape)) * 2
    attrs = {"spacing": res.spacing_mm, "origin": (0, 0, 0), "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1),
             "source_checksum": "sha256:x", "plan_hash": "p"}
    store = DatasetStore(str(tmp_path), "ds", create=True)
    tracemalloc.start()
    try:
        store.write_case("c", res, None, attrs, chunk_vox=(16, 64, 64))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < out_bytes / 4, f"peak {peak / 1e6:.1f} MB for a {out_bytes / 1e6:.1f} MB output"
    np.testing.assert_array_equal(store.read_full("c"), resample(src, (1.0, 1.0, 0.5)).array)
    assert json.loads(json.dumps(store.case_attrs("c")["stats"])) == _old_image_stats(store.read_full("c"))


def test_row_parts_encode_the_same_chunks(tmp_path) -> None:
    """A chunk row encoded in parts (as two threads do) holds exactly the chunks of one encode,
    and a row handed over with a part missing is refused."""
    from storage.case_arrays import CaseDocuments
    from storage.chunk_writer import ArrayWriter
    rng = np.random.default_rng(2)
    slab = rng.normal(0, 300, (8, 70, 90)).astype(np.int16)
    slab[:, :16, :32] = -1024  # chunks of fill only: not stored
    docs = CaseDocuments("c/g1", {"image": ((8, 70, 90), np.dtype(np.int16))}, (8, 16, 16), None, 1)
    writer = ArrayWriter.for_metadata(None, str(tmp_path), docs.metadata("image"), -1024)
    whole = writer.encode_row(slab, 0)
    for parts in (2, 3, 5, 9):
        joined = {k: v for p in range(parts) for k, v in writer.encode_row(slab, 0, p, parts).items()}
        assert joined == whole
    assert whole[(0, 0, 0)] is None and whole[(0, 0, 1)] is None and len(whole) == 5 * 6
    with pytest.raises(ValueError, match="must be new and hold its 30 chunks"):
        writer.store_row(0, writer.encode_row(slab, 0, 0, 2))


def test_new_dataset_folder_gets_zarrs_parent_groups(tmp_path) -> None:
    """Written directly, the group documents above a case's generation are those zarr creates
    when they are missing, and an existing case group keeps its own (its attributes too)."""
    from zarr.storage import MemoryStore
    held: dict = {}
    zarr.open_group(MemoryStore(store_dict=held), path="a/g1", mode="w", zarr_format=3)
    empty_group = held["zarr.json"].to_bytes()
    attrs = {"spacing": (1, 1, 2), "origin": (0, 0, 0), "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1),
             "source_checksum": "sha256:x", "plan_hash": "p"}
    image = np.zeros((9, 20, 20), np.int16)
    store = DatasetStore(str(tmp_path), "ds", create=True)  # no ensure(): not even the dataset group
    store.write_case("c", image, None, attrs, chunk_vox=(8, 16, 16))
    folder = tmp_path / "ds"
    assert (folder / "zarr.json").read_bytes() == empty_group == (folder / "c" / "zarr.json").read_bytes()
    zarr.open_group(store.zstore, path="d", mode="w", zarr_format=3).attrs["kept"] = 1
    before = (folder / "d" / "zarr.json").read_bytes()
    store.write_case("d", image, None, attrs, chunk_vox=(8, 16, 16))
    assert (folder / "d" / "zarr.json").read_bytes() == before
    np.testing.assert_array_equal(store.read_full("d"), image)
    assert zarr.open_group(store.zstore, path=store.case_path("d"), mode="r").attrs["pgl_case"]["plan_hash"] == "p"
