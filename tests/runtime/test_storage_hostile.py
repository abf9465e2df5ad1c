"""The runtime's own directory download (storage_dir.fetch_model_dir) against listings and
servers that answer wrongly: every failure is one StartupError line, never a traceback."""

from __future__ import annotations

import http.server
import json
from pathlib import Path

import pytest

from kubemaas_runtime.errors import StartupError
from kubemaas_runtime.storage import S3Config, fetch_model
from kubemaas_runtime.storage_dir import fetch_model_dir

from .scripted_server import ScriptedServer, body, trickle


@pytest.mark.parametrize("name", ["a\0b", "x" * 300, ".", "a\x1bb"])
def test_names_the_disk_refuses(tmp_path: Path, name: str) -> None:
    with ScriptedServer() as server:
        server.routes["/m/index.json"] = body(json.dumps([name]).encode())
        server.routes["*"] = body(b"x")
        with pytest.raises(StartupError, match="unsafe file path"):
            fetch_model_dir(f"{server.url}/m/", str(tmp_path), timeout_s=5)


@pytest.mark.parametrize(("names", "why"), [
    (["a", "a/b"], "'a' is both a file and a folder"),
    (["x", "./x"], "duplicate path 'x'")])
def test_listings_that_trip_over_themselves(tmp_path: Path, names: list[str], why: str) -> None:
    with ScriptedServer() as server:
        server.routes["/m/index.json"] = body(json.dumps(names).encode())
        server.routes["*"] = body(b"x")
        with pytest.raises(StartupError, match=why):
            fetch_model_dir(f"{server.url}/m/", str(tmp_path), timeout_s=5)


def broken_chunk(h: http.server.BaseHTTPRequestHandler) -> None:
    """A chunked body that ends in the middle of a chunk (http.client: IncompleteRead)."""
    h.send_response(200)
    h.send_header("Transfer-Encoding", "chunked")
    h.send_header("Connection", "close")
    h.close_connection = True
    h.end_headers()
    h.wfile.write(b"400\r\n" + b"x" * 100)


def test_a_chunked_body_cut_short_is_one_line(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        server.routes["*"] = broken_chunk
        with pytest.raises(StartupError, match=r"broke off after \d+ bytes: IncompleteRead"):
            fetch_model(f"{server.url}/w.onnx", str(tmp_path), timeout_s=5)
        with pytest.raises(StartupError, match=r"index .*: IncompleteRead"):
            fetch_model_dir(f"{server.url}/m/index.json", str(tmp_path), timeout_s=5)
        server.routes["/m/index.json"] = body(json.dumps(["w.onnx"]).encode())
        with pytest.raises(StartupError, match=r"w\.onnx broke off after \d+ bytes"):
            fetch_model_dir(f"{server.url}/m/", str(tmp_path), timeout_s=5)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no partial file left


def test_a_file_where_a_folder_must_go_is_one_line(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        server.routes["*"] = body(b"model")
        url = f"{server.url}/w.onnx"
        slot = fetch_model(url, str(tmp_path), timeout_s=5).parent
        slot.rename(tmp_path / "moved")
        slot.write_text("a file where the cache slot's folder goes")
        with pytest.raises(StartupError, match="cannot write the model to"):
            fetch_model(url, str(tmp_path), timeout_s=5)


def test_an_index_nested_too_deep_is_one_line(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        server.routes["/m/index.json"] = body(b"[" * 100_000 + b"]" * 100_000)
        with pytest.raises(StartupError, match="not JSON that can be read: RecursionError"):
            fetch_model_dir(f"{server.url}/m/", str(tmp_path), timeout_s=5)


def test_an_s3_key_outside_the_prefix_is_refused(tmp_path: Path) -> None:
    listing = (b'<?xml version="1.0"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/'
               b'2006-03-01/"><IsTruncated>false</IsTruncated><Contents><Key>other/c/x</Key>'
               b'</Contents></ListBucketResult>')
    with ScriptedServer({"/bucket": body(listing), "*": body(b"x")}) as s3:
        with pytest.raises(StartupError, match="not under 'm/'"):
            fetch_model_dir("s3://bucket/m/", str(tmp_path), s3=S3Config(endpoint=s3.url),
                            timeout_s=5)
        assert [path for method, path, _ in s3.requests if "other" in path] == []


def test_a_trickling_body_is_too_slow(tmp_path: Path) -> None:
    """timeout_s is a socket read timeout; a byte every 50 ms never trips it."""
    with ScriptedServer({"*": trickle(1 << 20)}) as server, \
            pytest.raises(StartupError, match=r"too slow: \d+ bytes in 1 s, less than 64 KiB"):
        fetch_model(f"{server.url}/w.onnx", str(tmp_path), timeout_s=1)
