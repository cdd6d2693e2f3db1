"""Errors raised by ``storage``. Each names the case, file or value at fault."""

from __future__ import annotations


class StorageError(Exception):
    """Base class for storage problems."""


class RefusedInput(StorageError):
    """Input that would make a wrong volume, refused with a reason.

    ``source`` is the offending file or folder, ``reason`` a short human sentence.
    """

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class UnreadableInput(StorageError):
    """A file that cannot be decoded (truncated, corrupt, unsupported)."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


class InputError(StorageError, ValueError):
    """The input as a whole cannot be used as given (a missing folder or dataset, a malformed
    description, nothing that is CT): a usage error, reported in one line, nothing written."""


class DatasetNotFound(InputError):
    """A dataset (or the store itself) that is not there; the message says what the store holds."""


class TransientIOError(StorageError):
    """A storage failure worth retrying (network, throttling)."""


# What a retry can cure: network, throttling, timeouts (never a data problem). Ingest re-raises
# these instead of recording a failed case; the flows' retry conditions retry exactly these.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (TransientIOError, ConnectionError, TimeoutError)
