"""Which storage failures are transient (retried by the flows) and how they are described: the
object-store clients' connection errors are, data problems and TLS failures are not."""

from __future__ import annotations

import ssl

import pytest
from botocore.exceptions import (ConnectionClosedError, EndpointConnectionError, NoCredentialsError,
                                 ReadTimeoutError, SSLError)

from flows.retries import retry_transient
from storage.errors import RefusedInput, StorageError, TransientIOError, describe, is_transient

URL = "http://127.0.0.1:9/bucket/store/pool/zarr.json"


@pytest.mark.parametrize("err", [
    EndpointConnectionError(endpoint_url=URL),  # connection refused
    ConnectionClosedError(endpoint_url=URL),  # reset mid-request
    ReadTimeoutError(endpoint_url=URL),
    ConnectionResetError(104, "Connection reset by peer"),
    TimeoutError("timed out"),
    TransientIOError("throttled"),
])
def test_connection_failures_are_transient(err):
    assert is_transient(err)


@pytest.mark.parametrize("err", [
    RefusedInput("x.nii", "spacing 0"), ValueError("bad"), FileNotFoundError("s3://b/x"),
    NoCredentialsError(), SSLError(endpoint_url=URL, error=ssl.SSLError("bad cert")),
])
def test_data_problems_and_configuration_are_not(err):
    assert not is_transient(err)


def test_a_wrapped_connection_error_is_transient_and_described_by_what_did_not_answer():
    try:
        try:
            raise EndpointConnectionError(endpoint_url=URL)
        except EndpointConnectionError as inner:
            raise StorageError("cannot write s3://bucket/x") from inner
    except StorageError as err:
        assert is_transient(err)
        assert describe(err) == f'EndpointConnectionError: Could not connect to the endpoint URL: "{URL}"'
    try:  # an error raised while handling one, not from it, is judged on its own
        try:
            raise ConnectionResetError()
        except ConnectionResetError:
            raise ValueError("label values {7} are not declared")
    except ValueError as err:
        assert not is_transient(err)


class _State:
    def __init__(self, err: BaseException) -> None:
        self.err = err

    def result(self):
        raise self.err


def test_the_flows_retry_exactly_the_transient_failures():
    assert retry_transient(None, None, _State(EndpointConnectionError(endpoint_url=URL)))
    assert not retry_transient(None, None, _State(RefusedInput("x.nii", "spacing 0")))


def test_a_store_that_stops_answering_outside_the_cases_ends_the_command_in_one_line(tmp_path, monkeypatch,
                                                                                      capsys):
    from flows.cli import main
    from flows.stages import preprocess as stage

    def unreachable(*args, **kwargs):
        raise EndpointConnectionError(endpoint_url=URL)

    monkeypatch.setattr(stage, "preprocess", unreachable)
    (tmp_path / "raw").mkdir()
    assert main(["preprocess", "--input", str(tmp_path / "raw"), "--dataset", "d", "--store", "s3://b/s"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f'pgl preprocess: error: storage unreachable: EndpointConnectionError: Could not connect to the '
                   f'endpoint URL: "{URL}"; nothing incomplete is recorded as done, rerun when it answers')
