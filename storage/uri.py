"""Storage addresses: URIs for local directories and object stores, and the filesystems behind them.

Every storage address in the project is a ``str`` URI: a plain local path (``/data/store``),
a ``file://`` URL, or an object-store URL (``s3://bucket/prefix``). This module owns turning a
URI into an fsspec filesystem (sync, for small files) or a zarr store (for arrays), joining URI
parts, and reading S3 credentials from the environment. Credentials are never logged or put in
error messages.
"""

from __future__ import annotations

import os
import re
from typing import Any

import fsspec

from storage.errors import InputError

_LOCAL_SCHEMES = ("", "file", "local")
_OBJECT_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "oss", "r2")
KNOWN_SCHEMES = _LOCAL_SCHEMES + _OBJECT_SCHEMES + ("memory",)
# scheme://user[:password]@host/...: the userinfo part of a URL
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")
# key:secret@ where the secret holds a '/' (AWS secrets may): redacted too, wherever the '@' is
_KEY_SECRET = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/@\s'\":]+:[^@\s'\"]*)@")
# secrets carried in query strings (presigned URLs, tokens)
_SECRET_QUERY = re.compile(r"(?i)(?P<key>[?&](?:x-amz-signature|x-amz-credential|x-amz-security-token|signature|"
                           r"sig|token|access_token|password|secret|key)=)(?P<value>[^&\s'\"]+)")
# something that looks like a scheme: letters, then ':' and '/', as in 'htp:/x' or 'foo://x'
_SCHEME_LIKE = re.compile(r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.-]+):/")


class BadURI(InputError):
    """A URI that cannot be used as given (unknown or malformed scheme, credentials inside)."""


def redact_uri(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced: ``s3://KEY:SECRET@b/x`` ->
    ``s3://***@b/x``, ``?token=abc`` -> ``?token=***``. Safe on any string (log lines, errors)."""
    text = _KEY_SECRET.sub(lambda m: f"{m.group('scheme')}***@", text)
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
    return _SECRET_QUERY.sub(lambda m: f"{m.group('key')}***", text)


def check_uri(uri: str, what: str = "URI") -> str:
    """``uri`` unchanged when it is a plain path or a URL of a known scheme without credentials;
    else :class:`BadURI` naming ``what`` and the redacted URI. Credentials belong in the
    environment (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``), never in a URI that logs,
    the Prefect UI and the manifests would show."""
    if not isinstance(uri, str) or not uri.strip():
        raise BadURI(f"{what}: empty")
    shown = redact_uri(uri)
    authority = uri.split("://", 1)[1].split("/", 1)[0] if "://" in uri else ""
    if _USERINFO.search(uri) or _KEY_SECRET.search(uri) or (":" in authority and not is_local(uri)
                                                              and not authority.rsplit(":", 1)[1].isdigit()):
        raise BadURI(f"{what} {shown} carries credentials; remove them from the URI and export "
                     "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for MinIO) instead")
    if "://" in uri:
        scheme = scheme_of(uri)
        if scheme not in KNOWN_SCHEMES:
            raise BadURI(f"{what} {shown}: unknown scheme {scheme!r}; use a local path, file:// or one of "
                         + ", ".join(f"{s}://" for s in _OBJECT_SCHEMES))
        return uri
    match = _SCHEME_LIKE.match(uri)
    if match:
        raise BadURI(f"{what} {shown}: malformed URI (scheme {match.group('scheme')!r} without '//'); "
                     "write a local path or scheme://...")
    return uri


def scheme_of(uri: str) -> str:
    """The URI's scheme in lower case ('' for a plain path)."""
    if "://" not in uri:
        return ""
    return uri.split("://", 1)[0].lower()


def is_local(uri: str) -> bool:
    """True for plain paths and ``file://`` URLs."""
    return scheme_of(uri) in _LOCAL_SCHEMES


def is_object_store(uri: str) -> bool:
    """True when ``uri`` addresses an object store (S3 and friends), where shards pay off."""
    scheme = scheme_of(uri)
    return scheme in _OBJECT_SCHEMES or scheme not in _LOCAL_SCHEMES + ("memory",)


def local_path(uri: str) -> str:
    """The absolute filesystem path of a local URI (plain path or ``file://``)."""
    if not is_local(uri):
        raise ValueError(f"not a local URI: {uri!r}")
    path = uri.split("://", 1)[1] if "://" in uri else uri
    return os.path.abspath(os.path.expanduser(path))


def check_uris(**addresses: str | None) -> None:
    """:func:`check_uri` for each named address (None skipped): ``check_uris(store=..., output=...)``."""
    for name, uri in addresses.items():
        if uri is not None:
            check_uri(uri, name)


def join_uri(base: str, *parts: str) -> str:
    """Join ``base`` and path ``parts`` with '/', keeping the scheme: ``join_uri("s3://b/x", "ds")``."""
    out = base.rstrip("/") if base.rstrip("/") else base
    for part in parts:
        part = str(part).strip("/")
        if part:
            out = f"{out}/{part}" if not out.endswith("/") else f"{out}{part}"
    return out


def s3_options_from_env() -> dict[str, Any]:
    """s3fs storage options from the standard AWS environment variables.

    Reads ``AWS_ENDPOINT_URL_S3`` (or ``AWS_ENDPOINT_URL``), ``AWS_ACCESS_KEY_ID``,
    ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN`` and ``AWS_REGION`` / ``AWS_DEFAULT_REGION``.
    Only variables that are set appear; the result holds secrets, so never log it.
    """
    env = os.environ
    opts: dict[str, Any] = {}
    client_kwargs: dict[str, Any] = {}
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")
    if endpoint:
        client_kwargs["endpoint_url"] = endpoint
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if region:
        client_kwargs["region_name"] = region
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        opts["key"] = env["AWS_ACCESS_KEY_ID"]
        opts["secret"] = env["AWS_SECRET_ACCESS_KEY"]
        if env.get("AWS_SESSION_TOKEN"):
            opts["token"] = env["AWS_SESSION_TOKEN"]
    if client_kwargs:
        opts["client_kwargs"] = client_kwargs
    return opts


def resolve_options(uri: str, storage_options: dict | None) -> dict[str, Any]:
    """The storage options to use for ``uri``: the given ones, else S3 options from the env."""
    if storage_options is not None:
        return dict(storage_options)
    if scheme_of(uri) in ("s3", "s3a"):
        return s3_options_from_env()
    return {}


def open_fs(uri: str, storage_options: dict | None = None) -> tuple[fsspec.AbstractFileSystem, str]:
    """A synchronous fsspec filesystem for ``uri`` and the path inside it.

    Local URIs give a ``LocalFileSystem`` and an absolute path; ``s3://`` gives an s3fs
    filesystem (options from ``storage_options`` or, when None, from the environment) and
    ``bucket/key``.
    """
    check_uri(uri, "storage address")
    if is_local(uri):
        return fsspec.filesystem("file"), local_path(uri)
    fs, path = fsspec.core.url_to_fs(uri, **resolve_options(uri, storage_options))
    return fs, path


def uri_from_path(fs_path: str, like_uri: str) -> str:
    """Turn a path inside a filesystem back into a URI of the same kind as ``like_uri``."""
    scheme = scheme_of(like_uri)
    if scheme in ("", "local"):
        return fs_path
    return f"{scheme}://{fs_path.lstrip('/') if scheme != 'file' else fs_path}"


def redact(storage_options: dict | None) -> dict[str, Any]:
    """A copy of ``storage_options`` safe to log: secrets replaced by '***'."""
    secret_keys = {"key", "secret", "token", "aws_access_key_id", "aws_secret_access_key",
                   "aws_session_token", "password"}
    out: dict[str, Any] = {}
    for k, v in (storage_options or {}).items():
        if isinstance(v, dict):
            out[k] = redact(v)
        else:
            out[k] = "***" if k.lower() in secret_keys else v
    return out
