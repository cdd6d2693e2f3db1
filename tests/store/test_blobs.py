"""Checkpoint byte storage: round trip, atomic replace, listing and deletion on both backends."""

from __future__ import annotations

import os
import threading

import pytest

from storage import blobs
from storage.uri import join_uri


def test_round_trip_and_replace(backend):
    uri = join_uri(backend.root_uri, "ckpt", "step_000100.pt")
    opts = backend.storage_options
    assert not blobs.exists(uri, opts)
    payload = os.urandom(300_000)
    blobs.put_bytes_atomic(uri, payload, opts)
    assert blobs.exists(uri, opts)
    assert blobs.get_bytes(uri, opts) == payload
    blobs.put_bytes_atomic(uri, b"second", opts)
    assert blobs.get_bytes(uri, opts) == b"second"


def test_list_sorted_and_delete(backend):
    opts = backend.storage_options
    prefix = join_uri(backend.root_uri, "ckpt")
    names = ["step_2.pt", "step_10.pt", "sub/latest.json", "step_1.pt"]
    for n in names:
        blobs.put_bytes_atomic(join_uri(prefix, n), n.encode(), opts)
    listed = blobs.list_uris(prefix, opts)
    assert listed == sorted(join_uri(prefix, n) for n in names)
    assert [blobs.get_bytes(u, opts) for u in listed] == [u.split("/ckpt/")[1].encode() for u in listed]
    blobs.delete_uri(join_uri(prefix, "step_2.pt"), opts)
    blobs.delete_uri(join_uri(prefix, "never_existed.pt"), opts)  # no error
    assert join_uri(prefix, "step_2.pt") not in blobs.list_uris(prefix, opts)
    assert blobs.list_uris(join_uri(backend.root_uri, "empty"), opts) == []
    with pytest.raises(FileNotFoundError, match="step_2.pt"):
        blobs.get_bytes(join_uri(prefix, "step_2.pt"), opts)


def test_readers_never_see_partial_objects(backend):
    """A reader racing repeated replacements sees only complete versions."""
    uri = join_uri(backend.root_uri, "race.bin")
    opts = backend.storage_options
    versions = [bytes([i]) * 200_000 for i in range(6)]
    blobs.put_bytes_atomic(uri, versions[0], opts)
    seen: list[bytes] = []
    done = threading.Event()

    def reader() -> None:
        while not done.is_set():
            seen.append(blobs.get_bytes(uri, opts))

    t = threading.Thread(target=reader)
    t.start()
    for v in versions[1:]:
        blobs.put_bytes_atomic(uri, v, opts)
    done.set()
    t.join()
    assert seen and all(s in versions for s in seen)


def test_local_replace_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "model.pt"
    blobs.put_bytes_atomic(str(target), b"x" * 10)
    blobs.put_bytes_atomic(f"file://{target}", b"y" * 10)
    assert os.listdir(target.parent) == ["model.pt"]
    assert target.read_bytes() == b"y" * 10
    assert blobs.list_uris(f"file://{tmp_path}") == [f"file://{target}"]
