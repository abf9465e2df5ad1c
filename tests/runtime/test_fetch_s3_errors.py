"""How S3 failures are classified (obstore's real errors, from a scripted S3 endpoint on
127.0.0.1): by the HTTP status or the kind of failure, never by words in the message."""

from __future__ import annotations

import socket

import pytest

from kubemaas_runtime.fetch.errors import FetchError
from kubemaas_runtime.fetch.sources.s3 import S3Source

from .scripted_server import ScriptedServer, body

ERROR = b"<Error><Code>SomeError</Code><Message>timeout, 404, Forbidden</Message></Error>"


@pytest.mark.parametrize(("status", "reason"), [
    (400, "InvalidSource"), (403, "AccessDenied"), (404, "NotFound"), (500, "DownloadError"),
    (503, "DownloadError"), (429, "DownloadError")])
@pytest.mark.parametrize("uri", ["s3://bucket/llama-404b/", "s3://bucket/m/"])
def test_listing_errors_by_status(status: int, reason: str, uri: str) -> None:
    with ScriptedServer({"*": body(ERROR, status=status)}) as s3:
        source = S3Source(uri, 5.0, {"AWS_ENDPOINT_URL_S3": s3.url})
        with pytest.raises(FetchError) as err:
            source.plan()
    assert err.value.reason == reason, err.value.message


def test_a_silent_endpoint_is_stalled() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)  # accepts, never answers
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        source = S3Source("s3://bucket/m/", 1.0, {"AWS_ENDPOINT_URL_S3": url})
        with pytest.raises(FetchError) as err:
            source.plan()
    assert err.value.reason == "Stalled", err.value.message
