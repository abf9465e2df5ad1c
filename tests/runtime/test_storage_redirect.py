"""The runtime's own S3 downloads (storage.fetch_model, storage_dir.fetch_model_dir) never follow a
redirect: urllib would copy the SigV4 Authorization and the session token to whatever host the
Location names. A plain http(s) download, which carries no credentials, still follows them."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from kubemaas_runtime.errors import StartupError
from kubemaas_runtime.storage import S3Config, fetch_model
from kubemaas_runtime.storage_dir import fetch_model_dir

from .scripted_server import ScriptedServer, body, redirect

LISTING = (b'<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/'
           b'2006-03-01/"><IsTruncated>false</IsTruncated><Contents><Key>m/w.onnx</Key>'
           b'</Contents></ListBucketResult>')


def creds(endpoint: str) -> S3Config:
    return S3Config(endpoint=endpoint, access_key="AKIDTEST", secret_key="SECRETTEST",
                    session_token="SESSIONTOKENTEST")


def test_s3_file_redirect_is_refused(tmp_path: Path) -> None:
    with ScriptedServer() as other, ScriptedServer() as s3:
        s3.routes["*"] = redirect(other.url)
        other.routes["*"] = body(b"not a model")
        with pytest.raises(StartupError, match=r"HTTP 307 redirect .* refused"):
            fetch_model("s3://bucket/w.onnx", str(tmp_path), s3=creds(s3.url), timeout_s=5)
        assert other.requests == []  # no credentials, no request at all
        assert [h.get("X-Amz-Security-Token") for _, _, h in s3.requests] == \
            ["SESSIONTOKENTEST"]
    assert not list(tmp_path.rglob("w.onnx"))


@pytest.mark.parametrize("where", ["listing", "object"])
def test_s3_dir_redirect_is_refused(tmp_path: Path, where: str) -> None:
    with ScriptedServer() as other, ScriptedServer() as s3:
        other.routes["*"] = body(b"not a model")
        if where == "listing":
            s3.routes["*"] = redirect(other.url, 302)
        else:
            s3.routes["/bucket"] = body(LISTING)
            s3.routes["*"] = redirect(other.url, 301)
        with pytest.raises(StartupError, match=r"redirect .* refused"):
            fetch_model_dir("s3://bucket/m/", str(tmp_path), s3=creds(s3.url), timeout_s=5)
        assert other.requests == []


def test_plain_http_redirect_is_followed(tmp_path: Path) -> None:
    with ScriptedServer() as other, ScriptedServer() as web:
        web.routes["*"] = redirect(other.url)
        other.routes["*"] = body(b"model bytes")
        path = fetch_model(f"{web.url}/w.onnx", str(tmp_path), timeout_s=5)
        assert path.read_bytes() == b"model bytes"


def test_a_redirect_to_ftp_is_refused(tmp_path: Path) -> None:
    with socket.socket() as ftp, ScriptedServer() as web:
        ftp.bind(("127.0.0.1", 0))
        ftp.listen(8)
        ftp.setblocking(False)
        web.routes["*"] = redirect(f"ftp://127.0.0.1:{ftp.getsockname()[1]}")
        with pytest.raises(StartupError, match=r"redirect to ftp:// refused"):
            fetch_model(f"{web.url}/w.onnx", str(tmp_path), timeout_s=5)
        with pytest.raises(StartupError, match=r"redirect to ftp:// refused"):
            fetch_model_dir(f"{web.url}/m/", str(tmp_path), timeout_s=5)
        with pytest.raises(BlockingIOError):
            ftp.accept()  # nobody connected
