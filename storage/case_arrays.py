"""How a case's arrays are encoded and written: chunk and shard shapes, codecs, fill values, and
the streamed write of a case (:func:`write_arrays`).

A case's arrays come as *slab sources*: objects with ``shape`` and ``dtype`` of the whole
``(z, y, x)`` array and ``slab(z0, z1)`` giving its slices ``[z0, z1)`` (an in-memory array through
:class:`ArraySlabs`; a volume resampled on demand, ``storage.geometry.Resampled``). zarr-python makes
the group's and the arrays' metadata documents in memory (:class:`CaseDocuments`; the writer puts
them through the store's filesystem: zarr's own store round trips cost ~10 ms per case alone and 30
beside the converting threads); the chunks are written one chunk row at a time by
``storage.chunk_writer.ArrayWriter`` (the same bytes zarr writes, far less overhead per chunk), which
also feeds the statistics and label counts of the case attributes, so the whole output never needs
to exist at once. The next row is computed (resampled) on the calling thread while two worker
threads take the previous one: its chunks' encoding in two halves, its statistics and label
counts, then the writing of its objects; the last row, which no computing overlaps, is encoded on
both threads while the calling thread takes its statistics. Two rows per array live at a time.
Rows go in increasing z, or from the last when a source reads its input backwards
(``Slabs.order``).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, Protocol

import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.storage import MemoryStore

from storage import layout
from storage.case_stats import ImageStats, LabelCounts
from storage.chunk_writer import ArrayWriter
from storage.generations import GROUP_META

_DIMS = ("z", "y", "x")


def compressor(dtype: np.dtype, zstd_level: int, chunks: tuple[int, ...] | None = None) -> BloscCodec:
    """zstd inside Blosc with byte shuffle: measured ~3x faster to encode than plain zstd level 3
    on CT, 20 % smaller, and faster to decode (int16 HU: the high bytes compress apart).

    With ``chunks``, one Blosc block per chunk (``blocksize`` = the chunk's bytes) instead of
    Blosc's automatic 32 KiB-ish blocks at level 1: measured on a resampled 124 x 463 x 463 CT
    (256 chunks of 32 x 64 x 64, 7 interleaved rounds, median) 30 % faster to encode, 28 % faster
    to decode, 1.5 % smaller. The cost: Blosc can no longer split one chunk across its own threads
    (numcodecs uses them only on the main thread; the writer encodes on worker threads), and
    random crops, a few chunks each, were measured faster, not slower (``benchmarks/patch_read.py``)."""
    itemsize = int(np.dtype(dtype).itemsize)
    blocksize = int(np.prod(chunks)) * itemsize if chunks else 0
    return BloscCodec(cname="zstd", clevel=int(zstd_level), shuffle="shuffle", typesize=itemsize,
                      blocksize=blocksize)


def array_layout(shape: tuple[int, ...], chunk_vox: tuple[int, ...], shard_vox: tuple[int, ...] | None,
                 object_store: bool) -> tuple[tuple, tuple | None]:
    """(chunks, shards or None) of an array of ``shape``. ``shard_vox=None``: on object stores
    ``layout.DEFAULT_SHARD_VOX``; on a filesystem one shard per chunk row (``layout.row_shard_vox``):
    a few files per case instead of hundreds, each written as soon as its row is encoded."""
    chunks = layout.chunk_shape(shape, chunk_vox)
    if shard_vox is None:
        shard_vox = layout.DEFAULT_SHARD_VOX if object_store else layout.row_shard_vox(shape, chunks)
    shards = layout.shard_shape(shape, chunks, shard_vox) if shard_vox else None
    if shards == chunks:
        shards = None
    return chunks, shards


class Slabs(Protocol):
    """A ``(z, y, x)`` array given a z range at a time; ``order`` ("ascending", "descending" or
    "any"): the order of z ranges it serves best (a stream read backwards needs "descending")."""

    shape: tuple[int, ...]
    dtype: np.dtype
    order: str

    def slab(self, z0: int, z1: int) -> np.ndarray: ...

    def finish(self) -> None:
        """Called after the last slab: a source that reads as it goes verifies its input here
        (raising refuses the case before its record is written)."""


class ArraySlabs:
    """An in-memory array as a slab source."""

    order = "any"

    def __init__(self, array: np.ndarray) -> None:
        self.array, self.shape, self.dtype = array, tuple(array.shape), array.dtype

    def slab(self, z0: int, z1: int) -> np.ndarray:
        return self.array[z0:z1]

    def finish(self) -> None:
        pass


def as_slabs(data: "np.ndarray | Slabs") -> Slabs:
    """``data`` as a slab source (arrays are wrapped, slab sources returned as they are)."""
    return ArraySlabs(data) if isinstance(data, np.ndarray) else data


def create_array(group: zarr.Group, name: str, shape: tuple[int, ...], dtype: np.dtype, chunks: tuple,
                 shards: tuple | None, zstd_level: int) -> zarr.Array:
    """Create array ``name`` in ``group`` (metadata only: no chunk is written)."""
    return group.create_array(
        name, shape=shape, dtype=dtype, chunks=chunks, shards=shards,
        compressors=compressor(dtype, zstd_level, chunks), fill_value=layout.FILL_VALUE[name],
        dimension_names=_DIMS, config={"write_empty_chunks": False})


def write_array(group: zarr.Group, name: str, data: np.ndarray, chunks: tuple, shards: tuple | None,
                zstd_level: int) -> None:
    """Create array ``name`` in ``group`` and write ``data`` with zarr-python; all-fill chunks are not
    stored (the writer :func:`write_arrays` reproduces byte for byte)."""
    arr = create_array(group, name, data.shape, data.dtype, chunks, shards, zstd_level)
    arr[...] = np.ascontiguousarray(data)


class CaseDocuments:
    """The ``zarr.json`` documents of one case group ``node`` (a path inside the dataset) and of its
    arrays (``{name: (shape, dtype)}``), exactly as zarr-python writes them, made by zarr-python in
    a memory store. :attr:`documents`: ``{path: bytes}`` (paths inside the dataset, parents
    included: ``zarr.json`` of the dataset and of every folder above ``node``, as zarr creates
    them when missing); :meth:`metadata` one array's metadata dict; :meth:`group_document` the
    group's document with attributes."""

    def __init__(self, node: str, arrays: dict[str, tuple[tuple[int, ...], np.dtype]], chunks: tuple,
                 shards: tuple | None, zstd_level: int) -> None:
        self._held: dict[str, Any] = {}
        self._group = zarr.open_group(MemoryStore(store_dict=self._held), path=node, mode="w", zarr_format=3)
        self.node, self.chunks = node, tuple(int(c) for c in chunks)
        self._arrays = {name: create_array(self._group, name, shape, dtype, chunks, shards, zstd_level)
                        for name, (shape, dtype) in arrays.items()}
        self.documents = {key: buf.to_bytes() for key, buf in self._held.items()}

    def metadata(self, name: str) -> dict[str, Any]:
        return self._arrays[name].metadata.to_dict()

    def group_document(self, attributes: dict[str, Any]) -> bytes:
        """The group's ``zarr.json`` holding ``attributes`` (as ``group.attrs.update`` writes it)."""
        self._group.attrs.update(attributes)
        return self._held[f"{self.node}/{GROUP_META}"].to_bytes()


class _RowSink:
    """Chunk rows of one array: encoded and written directly (``ArrayWriter``), else (a layout the
    direct writer does not reproduce, or ``direct=False``) written through zarr (``open_array()``);
    rows in any order. ``parts(z0, slab)``: the row's encoding in independent calls (each returns
    its part), then ``store(z0, slab, encoded)`` with the parts' results."""

    def __init__(self, meta: dict[str, Any], fs: Any, path: str, name: str, direct: bool,
                 open_array: Callable[[], zarr.Array]) -> None:
        self.writer = ArrayWriter.for_metadata(fs, path, meta, layout.FILL_VALUE[name]) if direct else None
        self.arr = open_array() if self.writer is None else None

    def parts(self, z0: int, slab: np.ndarray, n: int) -> list[Callable[[], Any]]:
        if self.writer is None:
            return []
        row = z0 // self.writer.chunk[0]
        return [lambda k=k: self.writer.encode_row(slab, row, k, n) for k in range(n)]

    def store(self, z0: int, slab: np.ndarray, encoded: list[Any]) -> None:
        if self.writer is None:
            self.arr[z0:z0 + slab.shape[0]] = np.ascontiguousarray(slab)
        else:
            self.writer.store_row(z0 // self.writer.chunk[0], {k: v for part in encoded for k, v in part.items()})

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _descending(sources: dict[str, Slabs]) -> bool:
    """Whether the rows go from the last: a source that reads its input backwards asks for it
    (``order``); sources that need opposite orders cannot be written together."""
    orders = {getattr(src, "order", "any") for src in sources.values()} - {"any"}
    if len(orders) > 1:
        raise ValueError(f"arrays {sorted(sources)} must be read in opposite z orders: {sorted(orders)}")
    return orders == {"descending"}


_ENCODE_PARTS = {"image": 2, "label": 1}  # label rows (uint8, mostly empty) encode in a fraction of the time


def write_arrays(docs: CaseDocuments, fs: Any, group_path: str, image: Slabs, label: Slabs | None,
                 open_array: Callable[[str], zarr.Array],
                 direct: bool = True) -> tuple[dict[str, Any], dict[str, int] | None]:
    """Write ``image`` (and ``label``), the arrays ``docs`` describes, at ``group_path`` in ``fs``,
    one chunk row at a time (see the module doc; from the last row when a source reads its input
    backwards, ``order``); their metadata documents must be in place (``open_array(name)`` opens one
    with zarr for a layout the direct writer does not reproduce). Returns (image statistics, label
    counts or None)."""
    sources = {"image": image, **({"label": label} if label is not None else {})}
    sinks = {name: _RowSink(docs.metadata(name), fs, f"{group_path}/{name}", name, direct,
                            lambda name=name: open_array(name)) for name in sources}
    stats, counts = ImageStats(), LabelCounts() if label is not None else None

    def measure(at: int, row_slabs: dict[str, np.ndarray]) -> None:
        stats.add(row_slabs["image"], at)
        if counts is not None:
            counts.add(row_slabs["label"])

    def store(at: int, row_slabs: dict[str, np.ndarray], encoding: dict[str, list[Future]]) -> None:
        for name, slab in row_slabs.items():
            sinks[name].store(at, slab, [part.result() for part in encoding[name]])

    rows = range(0, image.shape[0], docs.chunks[0])
    pending: list[Future] = []
    with ThreadPoolExecutor(2, thread_name_prefix="pgl-chunk-rows") as pool:
        try:
            order = list(reversed(rows) if _descending(sources) else rows)
            for z0 in order:
                slabs = {name: src.slab(z0, min(z0 + rows.step, image.shape[0])) for name, src in sources.items()}
                for done in pending:
                    done.result()
                encoding = {name: [pool.submit(part) for part in sinks[name].parts(z0, slab, _ENCODE_PARTS[name])]
                            for name, slab in slabs.items()}
                # FIFO: the store task starts after its parts have started, so its wait cannot block them
                pending = [*(f for parts in encoding.values() for f in parts), pool.submit(store, z0, slabs, encoding)]
                if z0 == order[-1]:
                    measure(z0, slabs)  # nothing left to compute here: the last row's statistics
                else:
                    pending.append(pool.submit(measure, z0, slabs))
            for done in pending:
                done.result()
            for src in sources.values():
                src.finish()
            for sink in sinks.values():
                sink.close()
        except BaseException:
            for waiting in pending:
                waiting.cancel()
            raise
    return stats.result(), counts.result() if counts is not None else None
