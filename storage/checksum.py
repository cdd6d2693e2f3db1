"""Content checksums of input files (local paths or fsspec URIs), streamed in blocks."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import fsspec

_BLOCK_BYTES = 1 << 20


def sha256_files(uris: Iterable[str], storage_options: dict | None = None) -> str:
    """sha256 hex digest over the bytes of ``uris`` concatenated in the given order.

    Each file's bytes are streamed in 1 MiB blocks, so memory stays flat for any size. The
    file boundaries are not hashed: the digest equals ``sha256(b"".join(contents))``.
    """
    digest = hashlib.sha256()
    for uri in uris:
        with fsspec.open(uri, "rb", **(storage_options or {})) as fh:
            for block in iter(lambda: fh.read(_BLOCK_BYTES), b""):
                digest.update(block)
    return digest.hexdigest()
