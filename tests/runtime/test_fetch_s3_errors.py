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


def listing(*keys: str) -> bytes:
    items = "".join(f"<Contents><Key>{k}</Key><Size>1</Size><ETag>&quot;x&quot;</ETag>"
                    f"<LastModified>2026-01-01T00:00:00.000Z</LastModified></Contents>"
                    for k in keys)
    return (f'<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/'
            f'2006-03-01/"><IsTruncated>false</IsTruncated>{items}</ListBucketResult>').encode()


def test_a_key_outside_the_prefix_is_refused() -> None:
    """It was renamed (its first len(prefix) characters cut off) and fetched."""
    with ScriptedServer({"/bucket": body(listing("m/a.bin", "other/c/x"))}) as s3:
        source = S3Source("s3://bucket/m/", 5.0, {"AWS_ENDPOINT_URL_S3": s3.url})
        with pytest.raises(FetchError, match="'other/c/x', which is not under 'm/'") as err:
            source.plan()
    assert err.value.reason == "InvalidSource"
