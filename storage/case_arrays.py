"""How a case's arrays are encoded and written: chunk and shard shapes, codecs, fill values, and
the streamed write of a case (:func:`write_arrays`).

A case's arrays come as *slab sources*: objects with ``shape`` and ``dtype`` of the whole
``(z, y, x)`` array and ``slab(z0, z1)`` giving its slices ``[z0, z1)`` (an in-memory array through
:class:`ArraySlabs`; a volume resampled on demand, ``storage.geometry.Resampled``). zarr-python writes
the arrays' metadata; the chunks are written one chunk row at a time by
``storage.chunk_writer.ArrayWriter`` (the same bytes zarr writes, far less overhead per chunk), which
also feeds the statistics and label counts of the case attributes, so the whole output never needs
to exist at once. The next row is computed (resampled) on the calling thread while two worker
threads take the previous one, one its statistics and label counts, the other its encoding and
writes: two rows per array live at a time. Rows go in increasing z, or from the last when a source
reads its input backwards (``Slabs.order``).
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from storage import layout
from storage.case_stats import ImageStats, LabelCounts
from storage.chunk_writer import ArrayWriter

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


class _RowSink:
    """Chunk rows of one array: written directly (``ArrayWriter``), else (a layout the direct
    writer does not reproduce, or ``direct=False``) through zarr; rows in any order."""

    def __init__(self, arr: zarr.Array, fs: Any, path: str, name: str, direct: bool) -> None:
        self.arr = arr
        self.writer = ArrayWriter.for_metadata(fs, path, arr.metadata.to_dict(), layout.FILL_VALUE[name]) \
            if direct else None

    def write(self, z0: int, slab: np.ndarray) -> None:
        if self.writer is None:
            self.arr[z0:z0 + slab.shape[0]] = np.ascontiguousarray(slab)
        else:
            self.writer.write_row(slab, z0 // self.writer.chunk[0])

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


def write_arrays(group: zarr.Group, fs: Any, group_path: str, image: Slabs, label: Slabs | None,
                 chunks: tuple, shards: tuple | None, zstd_level: int,
                 direct: bool = True) -> tuple[dict[str, Any], dict[str, int] | None]:
    """Write ``image`` (and ``label``) as arrays of ``group`` (at ``group_path`` in ``fs``), one chunk
    row at a time (see the module doc; from the last row when a source reads its input backwards,
    ``order``); returns (image statistics, label counts or None)."""
    sources = {"image": image, **({"label": label} if label is not None else {})}
    sinks = {name: _RowSink(create_array(group, name, src.shape, src.dtype, chunks, shards, zstd_level),
                            fs, f"{group_path}/{name}", name, direct) for name, src in sources.items()}
    stats, counts = ImageStats(), LabelCounts() if label is not None else None

    def measure(z0: int, slabs: dict[str, np.ndarray]) -> None:
        stats.add(slabs["image"], z0)
        if counts is not None:
            counts.add(slabs["label"])

    def write(z0: int, slabs: dict[str, np.ndarray]) -> None:
        for name, slab in slabs.items():
            sinks[name].write(z0, slab)

    rows = range(0, image.shape[0], chunks[0])
    pending: list[Future] = []
    with ThreadPoolExecutor(2, thread_name_prefix="pgl-chunk-rows") as pool:
        try:
            for z0 in (reversed(rows) if _descending(sources) else rows):
                slabs = {name: src.slab(z0, min(z0 + chunks[0], image.shape[0])) for name, src in sources.items()}
                for done in pending:
                    done.result()
                pending = [pool.submit(measure, z0, slabs), pool.submit(write, z0, slabs)]
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
