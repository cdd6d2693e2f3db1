"""Shared pieces of the store conformance suite: the backends every test runs on, a small
CT-like volume, and a zarr store wrapper that records which keys are read."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from zarr.storage import WrapperStore

from storage.store import DatasetStore

CHUNK_VOX = (16, 32, 32)
PLAN = {"spacing_mm": [0.8, 0.8, 2.5], "orientation": "LPS", "version": 1}


@dataclass
class Backend:
    """One storage backend under test: where its root is and how to reach it."""

    kind: str  # "local" or "s3"
    root_uri: str
    storage_options: dict | None

    def store(self, dataset: str = "ds", create: bool = True, cls: type = DatasetStore) -> Any:
        return cls(self.root_uri, dataset, storage_options=self.storage_options, create=create)


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def backend(request: pytest.FixtureRequest, tmp_path) -> Backend:
    if request.param == "local":
        return Backend("local", str(tmp_path / "store"), None)
    s3 = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return Backend("s3", f"{bucket}/store", s3.storage_options)


def ct_volume(shape=(40, 70, 90), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """An int16 HU volume (z, y, x) with air (-1024) around a noisy 'body' box, and a uint8
    label with two classes inside it. Some whole chunks (of CHUNK_VOX) are pure air."""
    rng = np.random.default_rng(seed)
    image = np.full(shape, -1024, np.int16)
    z, y, x = shape
    body = (slice(2, z - 2), slice(4, y // 2 + 10), slice(5, x // 2 + 20))
    image[body] = rng.normal(40, 120, image[body].shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    label[body] = (image[body] > 100).astype(np.uint8) + (image[body] > 250).astype(np.uint8)
    return image, label


def case_attrs(checksum: str = "sha256:abc", p_hash: str | None = None) -> dict:
    from storage.store import plan_hash

    return {"spacing": (0.8, 0.7, 2.5), "origin": (-100.0, -120.5, 30.0),
            "direction": (1, 0, 0, 0, 1, 0, 0, 0, 1), "source_checksum": checksum,
            "plan_hash": p_hash or plan_hash(PLAN), "original_spacing": (0.7, 0.7, 1.25),
            "original_size": (512, 512, 80)}


class CountingStore(WrapperStore):
    """Records every key read (with its byte range) through the wrapped zarr store."""

    def __init__(self, store: Any, reads: list | None = None, lock: Any = None) -> None:
        super().__init__(store)
        self.reads: list[tuple[str, Any]] = [] if reads is None else reads
        self._reads_lock = lock or threading.Lock()

    def _with_store(self, store: Any) -> "CountingStore":
        # zarr re-wraps the store (e.g. read-only copies); the copies share one log
        return type(self)(store, self.reads, self._reads_lock)

    async def get(self, key, prototype, byte_range=None):
        with self._reads_lock:
            self.reads.append((key, byte_range))
        return await self._store.get(key, prototype, byte_range)

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        with self._reads_lock:
            self.reads.extend(key_ranges)
        return await self._store.get_partial_values(prototype, key_ranges)


class CountingDatasetStore(DatasetStore):
    """A DatasetStore whose zarr reads are recorded in ``self.zstore.reads``."""

    def _open_zarr_store(self):
        return CountingStore(super()._open_zarr_store())
