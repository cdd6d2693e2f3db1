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


def test_check_uri_refuses_credentials_unknown_and_malformed_schemes_and_redacts():
    from storage.uri import BadURI, check_uri, redact_uri

    for ok in ["/data/x", "rel/x", "s3://bucket/x", "file:///x", "s3://bucket/user@example.com/f", "s3://b:9000/x"]:
        assert check_uri(ok) == ok
    for bad, why in [("s3://KEY:PLANTED@bucket/x", "credentials"), ("s3://AKIA:se/cret@bucket/x", "credentials"),
                     ("foo://x", "unknown scheme"), ("htp:/data/x", "malformed"), ("", "empty")]:
        with pytest.raises(BadURI, match=why) as info:
            check_uri(bad, "--store")
        assert "PLANTED" not in str(info.value) and "se/cret" not in str(info.value)
    assert redact_uri("at s3://K:S@b/x and http://u:p@h:5000/ ?token=abc") == "at s3://***@b/x and http://***@h:5000/ ?token=***"


def test_tracking_url_credentials_move_to_their_own_variables(monkeypatch):
    import os

    from flows.runtime import move_url_credentials

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://us%40er:p%2Fw@mlflow.example:8443/base")
    monkeypatch.delenv("MLFLOW_TRACKING_USERNAME", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD", raising=False)
    move_url_credentials()
    assert os.environ["MLFLOW_TRACKING_URI"] == "https://mlflow.example:8443/base"
    assert (os.environ["MLFLOW_TRACKING_USERNAME"], os.environ["MLFLOW_TRACKING_PASSWORD"]) == ("us@er", "p/w")
