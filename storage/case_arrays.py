"""How a case's arrays are encoded when written: chunk and shard shapes, codecs, fill values."""

from __future__ import annotations

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from storage import layout

_DIMS = ("z", "y", "x")


def compressor(dtype: np.dtype, zstd_level: int) -> BloscCodec:
    """zstd inside Blosc with byte shuffle: measured ~3x faster to encode than plain zstd level 3
    on CT, 20 % smaller, and faster to decode (int16 HU: the high bytes compress apart)."""
    return BloscCodec(cname="zstd", clevel=int(zstd_level), shuffle="shuffle",
                      typesize=int(np.dtype(dtype).itemsize))


def array_layout(shape: tuple[int, ...], chunk_vox: tuple[int, ...], shard_vox: tuple[int, ...] | None,
                 object_store: bool) -> tuple[tuple, tuple | None]:
    """(chunks, shards or None) of an array of ``shape``; ``shard_vox=None`` shards only on object
    stores (``layout.DEFAULT_SHARD_VOX``)."""
    chunks = layout.chunk_shape(shape, chunk_vox)
    if shard_vox is None and object_store:
        shard_vox = layout.DEFAULT_SHARD_VOX
    shards = layout.shard_shape(shape, chunks, shard_vox) if shard_vox else None
    if shards == chunks:
        shards = None
    return chunks, shards


def write_array(group: zarr.Group, name: str, data: np.ndarray, chunks: tuple, shards: tuple | None,
                zstd_level: int) -> None:
    """Create array ``name`` in ``group`` and write ``data``; all-fill chunks are not stored."""
    arr = group.create_array(
        name, shape=data.shape, dtype=data.dtype, chunks=chunks, shards=shards,
        compressors=compressor(data.dtype, zstd_level), fill_value=layout.FILL_VALUE[name],
        dimension_names=_DIMS, config={"write_empty_chunks": False})
    arr[...] = np.ascontiguousarray(data)
