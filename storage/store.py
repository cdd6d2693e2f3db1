"""The chunked dataset store: one Zarr v3 group per dataset, one sub-group per case write.

:class:`DatasetStore` owns writing cases atomically (arrays first, into a fresh generation
folder; the ``_cases/<id>.json`` record naming that generation last, then the old generation is
removed), the completion test used to resume ingest, the manifest (derived from the records, the
only truth about what is done) and cheap random crops for training. The layout itself (format
version 2; version 1 is still read) is defined in ``storage/layout.py`` and documented in
``docs/store-layout.md``.

Arrays are (z, y, x): ``image`` int16 HU, ``label`` uint8. The same code serves a local
directory (zarr ``LocalStore``) and S3 (zarr ``FsspecStore`` over s3fs); chunks are grouped in
shards (larger ones on object stores, one per chunk row on a filesystem). A ``DatasetStore``
pickles to its address only and re-opens lazily, so DataLoader worker processes (fork or spawn)
can use it.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from typing import Any, Callable

import numpy as np
import zarr
from zarr.storage import FsspecStore, LocalStore

from storage import blobs, generations, layout
from storage.case_arrays import CaseDocuments, Slabs, array_layout, as_slabs, write_arrays
from storage.chunk_writer import put_objects
from storage.errors import DatasetNotFound, StorageError
from storage.manifest import (build_manifest, current_done, done_record, failed_record, manifest_cases,
                              manifest_hash as _manifest_hash, plan_hash)
from storage.crop_reader import ChunkCropReader, open_crop_reader
from storage.store_root import list_datasets
from storage.records import check_version, list_records, parse_record
from storage.uri import is_local, is_object_store, join_uri, local_path, open_fs, resolve_options

__all__ = ["DatasetStore", "list_datasets", "plan_hash"]


def open_zarr_store(uri: str, storage_options: dict | None = None) -> zarr.abc.store.Store:
    """A zarr store rooted at ``uri``: ``LocalStore`` for local paths, ``FsspecStore`` otherwise."""
    if is_local(uri):
        return LocalStore(local_path(uri))
    return FsspecStore.from_url(uri, storage_options=resolve_options(uri, storage_options))


class DatasetStore:
    """One dataset of the store at ``<root_uri>/<dataset>``.

    ``create=False`` requires the dataset to exist (StorageError otherwise); ``create=True``
    allows :meth:`ensure` to create it. ``direct_writes=False`` leaves chunk writing to
    zarr-python (the same bytes, slower; for comparisons). Open arrays and case attributes are kept in small LRU
    caches, so a crop costs only the chunk reads it needs.
    """

    direct_writes = True

    def __init__(self, root_uri: str, dataset: str, storage_options: dict | None = None,
                 create: bool = False, cache_size: int = 128) -> None:
        layout.check_dataset_name(dataset)
        self.root_uri = root_uri
        self.dataset = dataset
        self.storage_options = storage_options
        self.cache_size = int(cache_size)
        self.uri = join_uri(root_uri, dataset)
        self._reset()
        if not create and not self.exists():
            raise self._not_found()

    # --- lifecycle / caching -------------------------------------------------------------
    def _reset(self) -> None:
        self._pid = os.getpid()
        self._zstore: Any = None
        self._fs_pair: Any = None
        self._arrays: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._attrs: OrderedDict[str, dict] = OrderedDict()
        self._nodes: OrderedDict[str, str] = OrderedDict()  # case id -> group its done record names
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"root_uri": self.root_uri, "dataset": self.dataset,
                "storage_options": self.storage_options, "cache_size": self.cache_size,
                "uri": self.uri}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __repr__(self) -> str:
        return f"DatasetStore({self.uri!r})"

    def _fresh(self) -> None:
        """Drop handles inherited through fork (their event loop / sockets are the parent's)."""
        if self._pid != os.getpid():
            self._reset()

    def _open_zarr_store(self) -> zarr.abc.store.Store:
        """The zarr store rooted at the dataset (override point for instrumented stores)."""
        return open_zarr_store(self.uri, self.storage_options)

    @property
    def zstore(self) -> zarr.abc.store.Store:
        self._fresh()
        if self._zstore is None:
            self._zstore = self._open_zarr_store()
        return self._zstore

    @property
    def _fs(self) -> tuple[Any, str]:
        self._fresh()
        if self._fs_pair is None:
            self._fs_pair = open_fs(self.uri, self.storage_options)
        return self._fs_pair

    def _invalidate(self, case_id: str) -> None:
        with self._lock:
            self._attrs.pop(case_id, None)
            self._nodes.pop(case_id, None)
            for name in layout.ARRAYS:
                self._arrays.pop((case_id, name), None)

    def _lru_get(self, cache: OrderedDict, key: Any, make: Any) -> Any:
        with self._lock:
            if key in cache:
                cache.move_to_end(key)
                return cache[key]
        value = make()
        with self._lock:
            cache[key] = value
            while len(cache) > self.cache_size:
                cache.popitem(last=False)
        return value

    def _not_found(self) -> DatasetNotFound:
        try:
            fs, path = open_fs(self.root_uri, self.storage_options)
            held = list_datasets(self.root_uri, self.storage_options) if fs.exists(path) else None
        except Exception:  # noqa: BLE001 - the store itself is unreadable: say so below
            held = None
        if not held:
            return DatasetNotFound(f"dataset {self.dataset!r} not found: the store {self.root_uri} "
                                   f"{'holds no dataset' if held == [] else 'cannot be read or does not exist'}"
                                   " (run pgl preprocess first, or check --store)")
        return DatasetNotFound(f"dataset {self.dataset!r} not found in the store {self.root_uri}; it holds: "
                               + ", ".join(held))

    # --- dataset level -----------------------------------------------------------------
    def exists(self) -> bool:
        """True when the dataset group exists."""
        return blobs.exists(join_uri(self.uri, "zarr.json"), self.storage_options)

    def _group(self, mode: str = "r") -> zarr.Group:
        try:
            return zarr.open_group(self.zstore, mode=mode, zarr_format=3)
        except FileNotFoundError as exc:
            raise self._not_found() from exc

    def ensure(self, plan: dict, label_names: dict[int, str]) -> None:
        """Create the dataset group if missing and store ``plan`` / ``label_names`` in it.

        An existing dataset keeps its case records; a changed plan makes cases written with
        the old plan stale (no longer done, re-written by the next ingest).
        """
        group = zarr.open_group(self.zstore, mode="a", zarr_format=3)
        names = {str(k): str(v) for k, v in label_names.items()}
        old = group.attrs.get("pgl_dataset")
        if old and old.get("plan_hash") == plan_hash(plan) and old.get("label_names") == names:
            return
        if old:
            group.attrs["pgl_dataset"] = {**old, "plan": plan, "plan_hash": plan_hash(plan),
                                          "label_names": names}
            self.consolidate_manifest()
            return
        manifest = build_manifest(self.dataset, plan, names, [])
        group.attrs["pgl_dataset"] = manifest
        self._put_json(join_uri(self.uri, layout.MANIFEST_FILE), manifest)

    def _stored_manifest(self) -> dict[str, Any]:
        """The "pgl_dataset" attribute as last consolidated (its "cases" may be stale)."""
        attrs = self._group("r").attrs.asdict()
        if "pgl_dataset" not in attrs:
            raise StorageError(f"{self.uri} is not a PGL dataset (no 'pgl_dataset' attribute)")
        return dict(check_version(attrs["pgl_dataset"], self.uri))

    def plan(self) -> dict[str, Any]:
        """The dataset's preprocessing plan (one small read; no case records)."""
        return dict(self._stored_manifest().get("plan") or {})

    def label_names(self) -> dict[str, str]:
        """The dataset's label names, {"0": "background", ...} (one small read; no case records)."""
        return dict(self._stored_manifest().get("label_names") or {})

    def manifest(self) -> dict[str, Any]:
        """The dataset manifest ("pgl_dataset"), its cases as the ``_cases`` records say now.

        The consolidated copy is returned when its cases agree with the records; when they do not
        (a write since the last consolidation, or one killed half-way) the manifest is rebuilt
        from the records, so no case is listed done unless its record is done. Cost: one listing
        and one read of every record.
        """
        stored = self._stored_manifest()
        records = self._records()
        self._remember_nodes(records)
        if stored.get("cases") == manifest_cases(records):
            return stored
        return build_manifest(self.dataset, stored.get("plan") or {}, stored.get("label_names") or {},
                              records)

    def manifest_hash(self) -> str:
        """Hash of (plan_hash, done cases with source checksums); see storage.manifest."""
        return _manifest_hash(self.manifest())

    def done_cases(self) -> list[str]:
        """Sorted ids of cases done with the current plan, per their ``_cases`` records."""
        return current_done(self.manifest())

    def consolidate_manifest(self) -> dict[str, Any]:
        """Rebuild the manifest from all ``_cases`` records (single writer) and store it."""
        group = self._group("r+")
        old = group.attrs.get("pgl_dataset")
        if not old:
            raise StorageError(f"{self.uri}: call ensure(plan, label_names) before consolidating")
        manifest = build_manifest(self.dataset, old["plan"], old["label_names"], self._records())
        group.attrs["pgl_dataset"] = manifest
        self._put_json(join_uri(self.uri, layout.MANIFEST_FILE), manifest)
        return manifest

    def _records(self) -> list[dict[str, Any]]:
        fs, path = self._fs
        return list_records(fs, f"{path}/{layout.CASES_DIR}")

    def _remember_nodes(self, records: list[dict[str, Any]]) -> None:
        """Note where the done cases' arrays are, so reads need not fetch each record again."""
        with self._lock:  # the cache is trimmed to cache_size on its next miss
            self._nodes.update((r["case_id"], layout.case_node(r["case_id"], r.get("generation")))
                               for r in records if r.get("status") == "done")

    def _put_json(self, uri: str, obj: Any) -> None:
        data = json.dumps(obj, indent=1, sort_keys=True, allow_nan=False).encode()
        blobs.put_bytes_atomic(uri, data, self.storage_options)

    def _record_uri(self, case_id: str) -> str:
        return join_uri(self.uri, layout.CASES_DIR, f"{layout.check_case_id(case_id)}.json")

    # --- case records ------------------------------------------------------------------
    def case_record(self, case_id: str) -> dict[str, Any] | None:
        """The case's ``_cases`` record (status "done" or "failed"), or None."""
        uri = self._record_uri(case_id)
        try:
            data = blobs.get_bytes(uri, self.storage_options)
        except FileNotFoundError:
            return None
        return parse_record(data, uri)

    def is_done(self, case_id: str, source_checksum: str, plan_hash: str) -> bool:
        """True when the case was completely written from this source with this plan."""
        rec = self.case_record(case_id)
        return bool(rec and rec.get("status") == "done"
                    and rec.get("source_checksum") == source_checksum
                    and rec.get("plan_hash") == plan_hash)

    def write_failure(self, case_id: str, reason: str, source: str) -> None:
        """Record that ``case_id`` (from ``source``) could not be written, and why; its arrays go."""
        record = failed_record(case_id, reason, source)
        self._put_json(self._record_uri(case_id), record)
        self._invalidate(case_id)
        self._tidy(case_id, record)

    def sweep_case(self, case_id: str) -> None:
        """Remove what the case's record does not name: generations of writes killed before their
        record, the generation a crash left behind after the record moved on (ingest calls this for
        cases it skips, so a rerun cleans up)."""
        self._tidy(case_id, self.case_record(case_id))

    def _tidy(self, case_id: str, record: dict[str, Any] | None, names: list[str] | None = None) -> None:
        fs, base = self._fs
        generations.tidy(fs, self.zstore, base, layout.check_case_id(case_id), record, names)

    # --- writing -----------------------------------------------------------------------
    def write_case(self, case_id: str, image: np.ndarray | Slabs, label: np.ndarray | Slabs | None,
                   attrs: dict[str, Any], chunk_vox: tuple[int, int, int] = layout.DEFAULT_CHUNK_VOX,
                   shard_vox: tuple[int, int, int] | None = None, zstd_level: int = 1,
                   check_labels: Callable[[dict[str, int]], None] | None = None,
                   late_attrs: Callable[[], dict[str, Any]] | None = None) -> dict[str, Any]:
        """Write one case atomically and return its completion record.

        ``image``: int16 HU ``(z, y, x)``; ``label``: uint8 ``(z, y, x)`` or None; either an array or
        a slab source (``storage.case_arrays.Slabs``: computed a z range at a time, e.g. resampled
        on demand, so the case is written without ever holding all of it). ``attrs``: spacing /
        origin (x, y, z mm), direction (9), source_checksum, plan_hash, optionally original_spacing
        / original_size. Order: a new generation group ``<case>/g<n>`` with the arrays (chunk row by
        chunk row; all-fill chunks skipped), its attributes (statistics and label counts gathered
        on the way; ``check_labels(counts)`` may refuse the case here); then the record naming it,
        in one atomic put (readers switch to the new arrays there; until then the old record and
        its arrays stay intact); then the old generation and any leftovers are removed.
        ``shard_vox=None``: shards of (128, 256, 256) on object stores, one shard per chunk row on a
        filesystem (``case_arrays.array_layout``). ``late_attrs()``: attributes known only once the
        arrays are written (ingest's source checksum, computed beside the writing), replacing those
        of ``attrs`` (which holds placeholders for them) before the attributes are checked again and
        stored; raising there leaves the case as a failed write would.
        """
        layout.check_case_id(case_id)
        image = as_slabs(image)
        label = as_slabs(label) if label is not None else None
        layout.validate_arrays(case_id, image, label)
        layout.case_attributes(case_id, attrs, image.shape, {}, None)  # refuse bad attributes first
        fs, base = self._fs
        names = generations.children(fs, f"{base}/{case_id}")
        generation = generations.next_generation(names, (self.case_record(case_id) or {}).get("generation"))
        node = layout.case_node(case_id, generation)
        chunks, shards = array_layout(image.shape, chunk_vox, shard_vox, is_object_store(self.uri))
        arrays = {name: (src.shape, src.dtype) for name, src in (("image", image), ("label", label)) if src is not None}
        docs = CaseDocuments(node, arrays, chunks, shards, zstd_level)
        put_objects(fs, {f"{base}/{key}": data for key, data in docs.documents.items()
                         if key.startswith(f"{node}/") or self._missing_parent(key, case_id, names)})
        stats, counts = write_arrays(
            docs, fs, f"{base}/{node}", image, label, direct=self.direct_writes,
            open_array=lambda name: zarr.open_array(self.zstore, path=f"{node}/{name}", mode="r+", zarr_format=3))
        if check_labels is not None and counts is not None:
            check_labels(counts)
        if late_attrs is not None:
            attrs = {**attrs, **late_attrs()}
        case_attrs = layout.case_attributes(case_id, attrs, image.shape, stats, counts)
        put_objects(fs, {f"{base}/{node}/{generations.GROUP_META}": docs.group_document({"pgl_case": case_attrs})})
        record = done_record(case_attrs, generation)
        self._put_json(self._record_uri(case_id), record)
        self._invalidate(case_id)
        self._tidy(case_id, record, names)
        return record

    def _missing_parent(self, key: str, case_id: str, names: list[str]) -> bool:
        """Whether the group document ``key`` above a new generation is missing, so that the
        writer puts it as zarr would: the case folder's when the folder has none, the dataset's
        (checked only for a new case folder) when it has none."""
        if key == f"{case_id}/{generations.GROUP_META}":
            return generations.GROUP_META not in names
        if key == generations.GROUP_META and not names:
            fs, base = self._fs
            return not fs.exists(f"{base}/{generations.GROUP_META}")
        return False

    # --- reading -----------------------------------------------------------------------
    def case_path(self, case_id: str) -> str:
        """Path inside the dataset of the zarr group with the case's arrays, as its done record
        names it (``<case>/g<n>``; ``<case>`` for a version 1 case). StorageError when the case
        is not done: a case whose record is not complete is never read."""
        def load() -> str:
            rec = self.case_record(case_id)
            if rec is None or rec.get("status") != "done":
                state = "has no record" if rec is None else f"is recorded as {rec.get('status')!r}"
                raise StorageError(f"case {case_id!r} in {self.uri} {state}: it is not done")
            return layout.case_node(case_id, rec.get("generation"))
        self._fresh()
        return self._lru_get(self._nodes, layout.check_case_id(case_id), load)

    def _at_case(self, case_id: str, read: Any) -> Any:
        """``read(case_path)``; if the path vanished (a rewrite replaced the generation since it was
        looked up) the record is read again and the new generation tried once."""
        node = self.case_path(case_id)
        try:
            return read(node)
        except FileNotFoundError:
            with self._lock:
                self._nodes.pop(case_id, None)
            fresh = self.case_path(case_id)
            if fresh == node:
                raise
            return read(fresh)

    def case_attrs(self, case_id: str) -> dict[str, Any]:
        """The case's "pgl_case" attributes (geometry, stats, checksums); cached."""
        def at(node: str) -> dict:
            return zarr.open_group(self.zstore, path=node, mode="r").attrs.asdict()

        def load() -> dict:
            try:
                attrs = self._at_case(case_id, at).get("pgl_case")
            except FileNotFoundError as exc:
                raise StorageError(f"case {case_id!r}: group {self.case_path(case_id)!r} is missing "
                                   f"in {self.uri}") from exc
            if attrs is None:
                raise StorageError(f"case {case_id!r} in {self.uri} has no 'pgl_case' attributes")
            return check_version(attrs, f"case {case_id!r} in {self.uri}")
        self._fresh()
        return dict(self._lru_get(self._attrs, case_id, load))

    def _opened(self, case_id: str, array: str) -> tuple[zarr.Array, ChunkCropReader | None]:
        """(zarr array, fast crop reader or None) for the case's ``array``; LRU-cached."""
        layout.check_array_name(array)

        def at(node: str) -> tuple[zarr.Array, ChunkCropReader | None]:
            arr = zarr.open_array(self.zstore, path=f"{node}/{array}", mode="r", zarr_format=3)
            fs, base = self._fs
            reader = open_crop_reader(fs, f"{base}/{node}/{array}", arr.metadata.to_dict(), arr.shape,
                                      arr.dtype, layout.FILL_VALUE[array])
            return arr, reader

        def load() -> tuple[zarr.Array, ChunkCropReader | None]:
            try:
                return self._at_case(case_id, at)
            except FileNotFoundError as exc:
                raise StorageError(f"case {case_id!r} has no {array!r} array in {self.uri} "
                                   f"(looked in {self.case_path(case_id)!r})") from exc
        self._fresh()
        return self._lru_get(self._arrays, (case_id, array), load)

    def _array(self, case_id: str, array: str) -> zarr.Array:
        return self._opened(case_id, array)[0]

    def shape(self, case_id: str) -> tuple[int, int, int]:
        """The case's array shape ``(z, y, x)``."""
        return tuple(int(s) for s in self._array(case_id, "image").shape)  # type: ignore[return-value]

    def read_crop(self, case_id: str, start_zyx: tuple[int, int, int], size_zyx: tuple[int, int, int],
                  array: str = "image") -> np.ndarray:
        """The box ``[start, start + size)`` of ``array`` as ``(z, y, x)``; only chunks it touches
        are read. Parts outside the array are padded with the fill value (image -1024, label 0),
        so any start (negative too) is valid."""
        arr, reader = self._opened(case_id, array)
        start = [int(s) for s in start_zyx]
        size = [int(s) for s in size_zyx]
        if len(start) != 3 or len(size) != 3 or min(size) < 1:
            raise ValueError(f"case {case_id}: bad crop start {start_zyx} / size {size_zyx}")
        lo = [max(0, s) for s in start]
        hi = [min(n, s + k) for n, s, k in zip(arr.shape, start, size)]
        def region() -> np.ndarray:
            if reader is not None:
                return reader.read(tuple(lo), tuple(hi))
            return arr[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        if lo == start and [s + k for s, k in zip(start, size)] == hi:
            return region()
        out = np.full(size, layout.FILL_VALUE[array], dtype=layout.DTYPE[array])
        if all(h > l for l, h in zip(lo, hi)):
            out[tuple(slice(l - s, h - s) for l, h, s in zip(lo, hi, start))] = region()
        return out

    def read_full(self, case_id: str, array: str = "image") -> np.ndarray:
        """The whole ``array`` of the case, ``(z, y, x)``."""
        return self._array(case_id, array)[...]
