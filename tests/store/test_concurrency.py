"""Many writers, one consolidation: cases written concurrently by threads and by forked
processes (the DataLoader / Dask worker situation) all reach the manifest."""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from storage.store import plan_hash
from tests.store.conftest import CHUNK_VOX, PLAN, case_attrs, ct_volume


def _write(store, case_id: str, seed: int) -> None:
    image, label = ct_volume(shape=(20, 40, 50), seed=seed)
    store.write_case(case_id, image, label, case_attrs(f"sha256:{case_id}"), chunk_vox=CHUNK_VOX)


def _write_in_child(store, case_ids: list[str], seeds: list[int]) -> None:
    for case_id, seed in zip(case_ids, seeds):
        _write(store, case_id, seed)


def test_threads_write_different_cases(backend):
    store = backend.store()
    store.ensure(PLAN, {0: "bg"})
    ids = [f"t{i}" for i in range(6)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda i: _write(store, ids[i], i), range(len(ids))))
    manifest = store.consolidate_manifest()
    assert store.done_cases() == ids
    assert all(manifest["cases"][c]["source_checksum"] == f"sha256:{c}" for c in ids)
    for i, c in enumerate(ids):
        np.testing.assert_array_equal(store.read_full(c), ct_volume(shape=(20, 40, 50), seed=i)[0])


def test_forked_processes_write_then_one_consolidates(backend):
    store = backend.store()
    store.ensure(PLAN, {0: "bg"})
    _write(store, "parent", 99)  # parent handles are open before the fork
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_write_in_child, args=(store, [f"p{w}a", f"p{w}b"], [w, w + 10]))
             for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    store.consolidate_manifest()
    assert store.done_cases() == ["p0a", "p0b", "p1a", "p1b", "parent"]
    assert store.is_done("p1b", "sha256:p1b", plan_hash(PLAN))
    np.testing.assert_array_equal(store.read_full("p1a", "label"), ct_volume(shape=(20, 40, 50), seed=1)[1])
