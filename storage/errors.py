"""Errors raised by ``storage``. Each names the case, file or value at fault; and which failures
are transient (worth retrying): :data:`TRANSIENT_ERRORS`, :func:`is_transient`."""

from __future__ import annotations

import ssl


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
# these instead of recording a failed case; the flows' retry conditions retry exactly these, and
# the object-store clients' own connection errors, which are not among them (:func:`is_transient`).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (TransientIOError, ConnectionError, TimeoutError)


def _client_transient_types() -> tuple[type[BaseException], ...]:
    """The object-store clients' connection and timeout errors: botocore's (s3fs / aiobotocore
    raise ``EndpointConnectionError`` for a refused connection, ``ConnectionClosedError`` for a
    reset one, ``ReadTimeoutError`` / ``ConnectTimeoutError``) and aiohttp's. Imported only when a
    failure is classified; a client that is not installed contributes nothing."""
    found: list[type[BaseException]] = []
    try:
        from botocore import exceptions as bx

        found += [bx.ConnectionError, bx.HTTPClientError]
    except ImportError:
        pass
    try:
        import aiohttp

        found += [aiohttp.ClientConnectionError, aiohttp.ServerTimeoutError]
    except ImportError:
        pass
    return tuple(found)


def _not_transient(err: BaseException) -> bool:
    """TLS failures (a certificate or protocol mismatch) are configuration, not weather."""
    kinds: list[type[BaseException]] = [ssl.SSLError]
    try:
        from botocore.exceptions import SSLError

        kinds.append(SSLError)
    except ImportError:
        pass
    try:
        from aiohttp import ClientSSLError

        kinds.append(ClientSSLError)
    except ImportError:
        pass
    return isinstance(err, tuple(kinds))


def is_transient(err: BaseException) -> bool:
    """True when ``err``, or an error it was raised from, is transient: one of
    :data:`TRANSIENT_ERRORS` or an object-store client's connection / timeout error (``raise ... from``
    chains are followed; an error raised while merely handling a transient one is not transient)."""
    kinds = TRANSIENT_ERRORS + _client_transient_types()
    seen: set[int] = set()
    while err is not None and id(err) not in seen and len(seen) < 10:
        seen.add(id(err))
        if _not_transient(err):
            return False
        if isinstance(err, kinds):
            return True
        err = err.__cause__
    return False


def describe(err: BaseException, limit: int = 400) -> str:
    """``Type: message`` of ``err`` on one line (at most ``limit`` characters); a transient error
    wrapped by another is described by the transient one (it names the endpoint or object)."""
    kinds = TRANSIENT_ERRORS + _client_transient_types()
    shown, inner = err, err
    for _ in range(10):
        if inner is None or isinstance(inner, kinds):
            shown = inner or err
            break
        inner = inner.__cause__
    text = " ".join(f"{type(shown).__name__}: {shown}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
