"""Whole-object byte storage (checkpoints, records, manifests) on local disk or an object store.

Writers never leave a half-written object under its final name: locally a temp file in the same
folder is written, fsynced and ``os.replace``d over the target (then the folder is fsynced); on
S3 a single PUT is atomic by the service's contract. Temp files are named ``.<name>.tmp-<hex>``
and never listed.
"""

from __future__ import annotations

import os
import uuid

from storage.errors import StorageError, TransientIOError, describe, is_transient
from storage.uri import is_local, local_path, open_fs, uri_from_path

_TMP_MARK = ".tmp-"


def _is_temp(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") and _TMP_MARK in base


def _fsync_dir(folder: str) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _put_local(path: str, data: bytes) -> None:
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}{_TMP_MARK}{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_dir(folder)


def put_bytes_atomic(uri: str, data: bytes, storage_options: dict | None = None) -> None:
    """Write ``data`` at ``uri`` so readers see the old object or the new one, never a part."""
    if is_local(uri):
        _put_local(local_path(uri), bytes(data))
        return
    fs, path = open_fs(uri, storage_options)
    try:
        fs.pipe_file(path, bytes(data))
    except Exception as exc:  # network / permission: name the object (a network failure stays retryable)
        kind = TransientIOError if is_transient(exc) else StorageError
        raise kind(f"cannot write {uri}: {describe(exc)}") from exc


def get_bytes(uri: str, storage_options: dict | None = None) -> bytes:
    """The object's bytes; FileNotFoundError (naming ``uri``) when it does not exist."""
    fs, path = open_fs(uri, storage_options)
    try:
        return fs.cat_file(path)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no object at {uri}") from exc
    except IsADirectoryError as exc:
        raise FileNotFoundError(f"{uri} is a folder, not an object") from exc


def exists(uri: str, storage_options: dict | None = None) -> bool:
    """True when an object (or folder) exists at ``uri``; never served from a listing cache."""
    fs, path = open_fs(uri, storage_options)
    fs.invalidate_cache(path)
    return bool(fs.exists(path))


def list_uris(prefix_uri: str, storage_options: dict | None = None) -> list[str]:
    """Sorted URIs of all objects below the folder ``prefix_uri`` (recursive; temp files left out)."""
    fs, path = open_fs(prefix_uri, storage_options)
    fs.invalidate_cache(path)
    try:
        found = fs.find(path, withdirs=False)
    except FileNotFoundError:
        return []
    return sorted(uri_from_path(p, prefix_uri) for p in found if not _is_temp(p))


def delete_uri(uri: str, storage_options: dict | None = None) -> None:
    """Delete the object at ``uri``; deleting a missing object is not an error."""
    fs, path = open_fs(uri, storage_options)
    try:
        fs.rm_file(path)
    except FileNotFoundError:
        pass
    fs.invalidate_cache(path)
