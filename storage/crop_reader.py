"""Fast crop reads from this project's Zarr v3 arrays (the training hot path).

zarr-python 3.1 reads the inner chunks of a shard one request after another and re-reads the
shard index on every access. On S3 each request costs a round trip, so a training crop touching
20 chunks would pay 20+ sequential latencies; on local disk its per-chunk machinery costs about
as much as decoding. For sharded arrays :class:`ShardedCropReader`

- lists the array's shard objects once (their sizes; a missing shard is all fill value),
- reads each shard's index once (checked with its crc32c) and keeps it,
- merges the byte ranges of the touched chunks that lie close together in a shard and fetches
  all ranges of a crop concurrently in one ``fs.cat_ranges`` call, then decodes them.

For unsharded arrays :class:`ChunkCropReader` fetches the touched chunk objects in one
``fs.cat`` call (missing objects are all fill value) and decodes them.

Both support exactly the layout this project writes (``storage/layout.py``): a
``sharding_indexed`` codec with inner codecs ``bytes`` + ``zstd``, index codecs ``bytes`` +
``crc32c`` at the end (or plain ``bytes`` + ``zstd`` chunks), default "/" chunk keys.
:func:`open_crop_reader` returns None for anything else, and the caller falls back to zarr
indexing. Arrays are ``(z, y, x)``.
"""

from __future__ import annotations

import itertools
import threading
from typing import Any

import numpy as np
from numcodecs import Blosc, Zstd

from storage.errors import StorageError

try:  # installed with zarr (its crc32c codec); without it shard indexes are used unchecked
    import google_crc32c
except ImportError:  # pragma: no cover
    google_crc32c = None

_EMPTY = np.uint64(2**64 - 1)
_MAX_GAP_BYTES = 512 * 1024  # merge two ranges when fewer unneeded bytes lie between them


_DECODERS = {"zstd": Zstd, "blosc": Blosc}


def _plain_codec(codecs: list[dict]) -> str | None:
    """"zstd" or "blosc" for little-endian ``bytes`` + that one compressor, else None."""
    names = [c.get("name") for c in codecs]
    endian = (codecs[0].get("configuration") or {}).get("endian", "little") if codecs else None
    if len(names) == 2 and names[0] == "bytes" and names[1] in _DECODERS and endian in ("little", None):
        return names[1]
    return None


def _parse_layout(meta: dict[str, Any]) -> dict[str, Any] | None:
    """{"chunk", "shard" (None if unsharded)} of array metadata ``meta``, or None if not ours."""
    codecs = meta.get("codecs") or []
    key_enc = meta.get("chunk_key_encoding", {})
    if key_enc.get("name") != "default" or key_enc.get("configuration", {}).get("separator", "/") != "/":
        return None
    grid = tuple(int(s) for s in meta["chunk_grid"]["configuration"]["chunk_shape"])
    if _plain_codec(codecs):
        return {"chunk": grid, "shard": None, "codec": _plain_codec(codecs)}
    if len(codecs) != 1 or codecs[0].get("name") != "sharding_indexed":
        return None
    cfg = codecs[0]["configuration"]
    index = [c.get("name") for c in cfg.get("index_codecs", [])]
    codec = _plain_codec(cfg.get("codecs", []))
    if not codec or index != ["bytes", "crc32c"]:
        return None
    if cfg.get("index_location", "end") != "end":
        return None
    return {"chunk": tuple(int(c) for c in cfg["chunk_shape"]), "shard": grid, "codec": codec}


def open_crop_reader(fs: Any, array_path: str, meta: dict[str, Any], shape: tuple[int, ...],
                     dtype: np.dtype, fill_value: Any) -> "ChunkCropReader | None":
    """The fast reader for an array at ``array_path`` in ``fs``, or None if its layout is not ours."""
    lay = _parse_layout(meta)
    if lay is None:
        return None
    if lay["shard"] is None:
        return ChunkCropReader(fs, array_path, shape, dtype, fill_value, lay["chunk"], lay["codec"])
    return ShardedCropReader(fs, array_path, shape, dtype, fill_value, lay["chunk"], lay["shard"],
                             lay["codec"])


class ChunkCropReader:
    """Crop reader for an unsharded array: one object per chunk, fetched together."""

    def __init__(self, fs: Any, array_path: str, shape: tuple[int, ...], dtype: np.dtype,
                 fill_value: Any, chunk: tuple[int, ...], codec: str = "zstd") -> None:
        self.fs = fs
        self.path = array_path.rstrip("/")
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self.fill_value = fill_value
        self.chunk = chunk
        self._codec = _DECODERS[codec]()
        self.n_requests = 0
        self.n_bytes = 0

    def _key(self, coords: tuple[int, ...]) -> str:
        return f"{self.path}/c/" + "/".join(map(str, coords))

    def _touched(self, lo: tuple[int, ...], hi: tuple[int, ...]) -> Any:
        return itertools.product(*[range(a // c, (b - 1) // c + 1) for a, b, c in zip(lo, hi, self.chunk)])

    def _new_out(self, lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
        return np.full([b - a for a, b in zip(lo, hi)], self.fill_value, dtype=self.dtype.newbyteorder("="))

    def _decode(self, raw: bytes) -> np.ndarray:
        return np.frombuffer(self._codec.decode(raw), dtype=self.dtype).reshape(self.chunk)

    def read(self, lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
        """The box ``[lo, hi)`` (inside the array) as a new array ``(z, y, x)``."""
        out = self._new_out(lo, hi)
        keys = {self._key(gc): gc for gc in self._touched(lo, hi)}
        found = self.fs.cat(list(keys), on_error="omit")
        self.n_requests += len(keys)
        self.n_bytes += sum(len(b) for b in found.values())
        for key, raw in found.items():
            gc = keys[key] if key in keys else keys[self.fs._strip_protocol(key)]
            self._paste(out, self._decode(raw), gc, lo, hi)
        return out

    def _paste(self, out: np.ndarray, chunk: np.ndarray, gc: tuple, lo: tuple, hi: tuple) -> None:
        src, dst = [], []
        for g, c, a, b in zip(gc, self.chunk, lo, hi):
            c0 = g * c
            s, e = max(a, c0), min(b, c0 + c)
            src.append(slice(s - c0, e - c0))
            dst.append(slice(s - a, e - a))
        out[tuple(dst)] = chunk[tuple(src)]


class ShardedCropReader(ChunkCropReader):
    """Crop reader for one sharded array at ``array_path`` inside the sync filesystem ``fs``."""

    def __init__(self, fs: Any, array_path: str, shape: tuple[int, ...], dtype: np.dtype,
                 fill_value: Any, chunk: tuple[int, ...], shard: tuple[int, ...],
                 codec: str = "zstd") -> None:
        super().__init__(fs, array_path, shape, dtype, fill_value, chunk, codec)
        self.per_shard = tuple(s // c for s, c in zip(shard, chunk))
        self.n_index = int(np.prod(self.per_shard))
        self.index_bytes = self.n_index * 16 + 4
        self._sizes = self._list_shards()
        self._indexes: dict[tuple[int, ...], np.ndarray] = {}
        self._lock = threading.Lock()

    def _list_shards(self) -> dict[tuple[int, ...], int]:
        root = f"{self.path}/c"
        self.fs.invalidate_cache(root)
        try:
            found = self.fs.find(root, detail=True)
        except FileNotFoundError:
            return {}
        sizes = {}
        for p, info in found.items():
            rel = p[len(root):].strip("/").split("/")
            if len(rel) == len(self.shape) and all(r.isdigit() for r in rel):
                sizes[tuple(int(r) for r in rel)] = int(info["size"])
        return sizes

    def _fetch(self, paths: list[str], starts: list[int], ends: list[int]) -> list[bytes]:
        if not paths:
            return []
        blobs = self.fs.cat_ranges(paths, starts, ends, on_error="raise")
        self.n_requests += len(paths)
        self.n_bytes += sum(len(b) for b in blobs)
        return blobs

    def _load_indexes(self, shards: set[tuple[int, ...]]) -> None:
        todo = sorted(s for s in shards if s not in self._indexes)
        paths = [self._key(s) for s in todo]
        ends = [self._sizes[s] for s in todo]
        blobs = self._fetch(paths, [e - self.index_bytes for e in ends], ends)
        for shard, path, raw in zip(todo, paths, blobs):
            body, crc = raw[:-4], int.from_bytes(raw[-4:], "little")
            bad_crc = google_crc32c is not None and google_crc32c.value(body) != crc
            if len(raw) != self.index_bytes or bad_crc:
                raise StorageError(f"corrupt shard index in {path}")
            index = np.frombuffer(body, dtype="<u8").reshape(self.n_index, 2)
            with self._lock:
                self._indexes[shard] = index

    def _plan(self, lo: tuple[int, ...], hi: tuple[int, ...]) -> dict[tuple, list[tuple]]:
        """Touched, non-empty chunks grouped by shard: {shard: [(offset, nbytes, chunk), ...]}."""
        touched: dict[tuple, list[tuple]] = {}
        for gc in self._touched(lo, hi):
            shard = tuple(g // p for g, p in zip(gc, self.per_shard))
            if shard in self._sizes:
                touched.setdefault(shard, []).append(gc)
        self._load_indexes(set(touched))
        plan: dict[tuple, list[tuple]] = {}
        for shard, chunks in touched.items():
            index = self._indexes[shard]
            for gc in chunks:
                local = tuple(g % p for g, p in zip(gc, self.per_shard))
                off, nbytes = index[np.ravel_multi_index(local, self.per_shard)]
                if off != _EMPTY:
                    plan.setdefault(shard, []).append((int(off), int(nbytes), gc))
        return plan

    @staticmethod
    def _merge(items: list[tuple]) -> list[tuple[int, int, list[tuple]]]:
        """Merge (offset, nbytes, chunk) items lying within _MAX_GAP_BYTES into ranges."""
        ranges: list[tuple[int, int, list[tuple]]] = []
        for item in sorted(items):
            off, nbytes = item[0], item[1]
            if ranges and off - ranges[-1][1] <= _MAX_GAP_BYTES:
                start, end, members = ranges[-1]
                ranges[-1] = (start, max(end, off + nbytes), members + [item])
            else:
                ranges.append((off, off + nbytes, [item]))
        return ranges

    def read(self, lo: tuple[int, ...], hi: tuple[int, ...]) -> np.ndarray:
        """The box ``[lo, hi)`` (inside the array) as a new array ``(z, y, x)``."""
        out = self._new_out(lo, hi)
        requests = [(self._key(shard), rng) for shard, items in self._plan(lo, hi).items()
                    for rng in self._merge(items)]
        blobs = self._fetch([p for p, _ in requests], [r[0] for _, r in requests],
                            [r[1] for _, r in requests])
        for (path, (start, _, members)), raw in zip(requests, blobs):
            for off, nbytes, gc in members:
                self._paste(out, self._decode(raw[off - start: off - start + nbytes]), gc, lo, hi)
        return out
