"""Kill a process with SIGKILL just before its N-th write to a store (count-based crash injection).

A *write* is any mutating operation on the store: locally every open for writing, rename, remove,
mkdir and rmdir below the store root (seen through Python's audit hooks, so zarr, fsspec, shutil
and this project's own code are all counted, including each file of a recursive delete); on S3
every mutating request (PUT, DELETE, multipart steps) s3fs sends. Install in a child process only:
the hooks cannot be removed.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Callable

# audit event -> (indexes of its path arguments, indexes of its dir_fd arguments)
_FS_EVENTS = {"os.rename": ((0, 1), (2, 3)), "os.remove": ((0,), (1,)), "os.rmdir": ((0,), (1,)),
              "os.mkdir": ((0,), (2,)), "shutil.rmtree": ((0,), (1,)), "os.truncate": ((0,), ()),
              "os.link": ((0, 1), (2, 3)), "os.symlink": ((1,), (2,)), "os.chmod": ((0,), (2,))}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
_S3_WRITES = {"put_object", "delete_object", "delete_objects", "copy_object", "create_multipart_upload",
              "upload_part", "upload_part_copy", "complete_multipart_upload"}


class Countdown:
    """Counts writes; at write number ``limit`` (1-based) the process is killed before it happens."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.count = 0

    def tick(self) -> None:
        self.count += 1
        if self.limit is not None and self.count >= self.limit:
            os.kill(os.getpid(), signal.SIGKILL)


def _path_of(arg: object) -> str | None:
    if isinstance(arg, (str, bytes, os.PathLike)):
        path = os.fsdecode(os.fspath(arg))
        return os.path.abspath(path)
    return None


def _is_write_open(args: tuple) -> bool:
    _, mode, flags = args
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & _WRITE_FLAGS)


def install_local(root: str, tick: Callable[[], None]) -> None:
    """Call ``tick()`` before every write below the local folder ``root``. Operations relative to a
    directory descriptor (``shutil.rmtree`` works that way) are counted as well: nothing else in
    the crashing process uses them."""
    root = os.path.realpath(root).rstrip("/") + "/"

    def under(path: str | None) -> bool:
        return path is not None and (os.path.realpath(path) + "/").startswith(root)

    def hook(event: str, args: tuple) -> None:
        if event == "open":
            if _is_write_open(args) and under(_path_of(args[0])):
                tick()
        elif event in _FS_EVENTS:
            paths, fds = _FS_EVENTS[event]
            relative = any(i < len(args) and isinstance(args[i], int) and args[i] >= 0 for i in fds)
            if relative or any(under(_path_of(args[i])) for i in paths if i < len(args)):
                tick()

    sys.addaudithook(hook)


def install_s3(tick: Callable[[], None]) -> None:
    """Call ``tick()`` before every mutating S3 request of s3fs in this process."""
    from s3fs.core import S3FileSystem

    original = S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):  # noqa: ANN001, ANN202 - s3fs's signature
        name = method if isinstance(method, str) else getattr(method, "__name__", "")
        if name in _S3_WRITES:
            tick()
        return await original(self, method, *args, **kwargs)

    S3FileSystem._call_s3 = counted
