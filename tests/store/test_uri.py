"""URI helpers: joining, classification, credentials from the environment (never shown)."""

from __future__ import annotations

import pytest

from storage.uri import is_object_store, join_uri, open_fs, redact, s3_options_from_env


def test_join_uri_keeps_scheme_and_single_slashes():
    assert join_uri("s3://bucket/root/", "ds", "/case/") == "s3://bucket/root/ds/case"
    assert join_uri("/data/store", "ds") == "/data/store/ds"
    assert join_uri("s3://bucket", "a/b", "", "c") == "s3://bucket/a/b/c"
    assert join_uri("/", "x") == "/x"


def test_is_object_store():
    assert is_object_store("s3://b/x") and is_object_store("gs://b/x")
    assert not is_object_store("/data/x") and not is_object_store("file:///data/x")
    assert not is_object_store("relative/dir")


def test_open_fs_local_gives_absolute_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fs, path = open_fs("rel/dir")
    assert path == str(tmp_path / "rel" / "dir") and fs.protocol[0] == "file"
    assert open_fs(f"file://{tmp_path}")[1] == str(tmp_path)


def test_s3_options_from_env(monkeypatch):
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_REGION"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio:9000")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "very-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    opts = s3_options_from_env()
    assert opts == {"key": "AKIDEXAMPLE", "secret": "very-secret",
                    "client_kwargs": {"endpoint_url": "http://minio:9000", "region_name": "eu-west-1"}}
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3only:9000")
    assert s3_options_from_env()["client_kwargs"]["endpoint_url"] == "http://s3only:9000"
    assert "very-secret" not in repr(redact(opts)) and "AKIDEXAMPLE" not in repr(redact(opts))


@pytest.mark.s3
def test_store_from_env_only(s3_env, s3_bucket):
    """With storage_options=None, S3 credentials and endpoint come from the environment."""
    from storage import blobs

    uri = f"{s3_bucket}/env/x.bin"
    blobs.put_bytes_atomic(uri, b"abc")
    assert blobs.get_bytes(uri) == b"abc"
