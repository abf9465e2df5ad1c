"""The downloader against servers that answer wrongly (a scripted server on 127.0.0.1): a body
cut short when no size was known in advance, a body longer than the size the index gave."""

from __future__ import annotations

import http.server
import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from .fetch_helpers import run_fetch
from .scripted_server import Route, ScriptedServer, body, redirect, trickle

MANIFEST = ".kubemaas-manifest.json"


def head_without_length(data: bytes, get: Route) -> Route:
    """HEAD says nothing about the size; GET answers with ``get``."""
    def route(h: http.server.BaseHTTPRequestHandler) -> None:
        (body(data, length=None) if h.command == "HEAD" else get)(h)
    return route


def fetch(server: ScriptedServer, dest: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    rc, report, _ = run_fetch(["--source", f"{server.url}/m/", "--dest", str(dest),
                               "--retries", "0", "--stall-timeout", "10", *extra])
    return rc, report


def test_short_get_without_a_known_size_is_not_ready(tmp_path: Path) -> None:
    data = bytes(range(256)) * 4
    with ScriptedServer() as server:
        server.routes["/m/index.json"] = body(json.dumps(["f.bin"]).encode())
        server.routes["/m/f.bin"] = head_without_length(data, body(data, send=500))
        rc, report = fetch(server, tmp_path / "d")
    assert rc == 1 and report["phase"] == "Failed"
    assert report["reason"] == "DownloadError"
    assert "ended after 500 of 1024 bytes" in str(report["message"])
    assert not (tmp_path / "d" / "f.bin").exists() and not (tmp_path / "d" / MANIFEST).exists()


def test_a_path_listed_twice_is_fetched_once(tmp_path: Path) -> None:
    data = os.urandom(1 << 20)
    with ScriptedServer() as server:
        server.routes["/m/index.json"] = body(json.dumps(["w.bin", "./w.bin"]).encode())
        server.routes["/m/w.bin"] = body(data)
        rc, report = fetch(server, tmp_path / "d")
        gets = [p for method, p, _ in server.requests if method == "GET" and p == "/m/w.bin"]
    assert rc == 0 and report["phase"] == "Ready", report
    assert [f["path"] for f in report["files"]] == ["w.bin"] and len(gets) == 1
    assert (tmp_path / "d" / "w.bin").read_bytes() == data


def test_a_path_listed_twice_with_other_sums_is_refused(tmp_path: Path) -> None:
    index = [{"path": "w.bin", "sha256": "0" * 64}, {"path": "./w.bin", "sha256": "1" * 64}]
    with ScriptedServer() as server:
        server.routes["/m/index.json"] = body(json.dumps(index).encode())
        server.routes["/m/w.bin"] = body(b"x" * 10)
        rc, report = fetch(server, tmp_path / "d")
    assert rc == 1 and report["reason"] == "InvalidSource"
    assert "duplicate path 'w.bin'" in report["message"] and report["attempts"] == 1


@pytest.mark.parametrize("name", ["a\0b", "x" * 252, "."])
def test_names_the_disk_refuses_are_invalid_source(tmp_path: Path, name: str) -> None:
    """These crashed the supervisor with a traceback and no report (its progress stat())."""
    with ScriptedServer() as server:
        server.routes["/m/index.json"] = body(json.dumps([{"path": name, "size": 1}]).encode())
        rc, report = fetch(server, tmp_path / "d")
    assert rc == 1 and report["reason"] == "InvalidSource", report
    assert "unsafe file path" in report["message"] and report["attempts"] == 1


def test_a_body_longer_than_the_listed_size_is_cut_off(tmp_path: Path) -> None:
    """The index says 1 MiB; the server sends 16: no more than 1 MiB reaches the disk, and the
    partial file is dropped rather than kept as if it were the file's start."""
    data = os.urandom(16 << 20)
    with ScriptedServer() as server:
        server.routes["/m/index.json"] = body(
            json.dumps([{"path": "w.bin", "size": 1 << 20}]).encode())
        server.routes["/m/w.bin"] = body(data)
        rc, report = fetch(server, tmp_path / "d")
    assert rc == 1 and report["reason"] == "DownloadError", report
    assert "sent more than the 1048576 bytes the listing gave" in report["message"]
    assert not (tmp_path / "d" / "w.bin").exists()
    assert not list((tmp_path / "d").rglob("*.part"))


@pytest.mark.parametrize("index", [
    [{"path": "w.bin", "size": True}], [{"path": "w.bin", "size": -1}],
    [{"path": "w.bin", "size": 1e30}], [{"path": "w.bin", "sha256": "not a sum"}],
    "[" * 100_000 + "]" * 100_000])
def test_an_index_that_cannot_be_right_is_invalid_source(tmp_path: Path, index: object) -> None:
    """Not retried as a DownloadError (they were: FileNotFoundError, RecursionError, ...)."""
    doc = index if isinstance(index, str) else json.dumps(index)
    with ScriptedServer() as server:
        server.routes["/m/index.json"] = body(doc.encode())
        server.routes["/m/w.bin"] = body(b"12345")
        rc, report = fetch(server, tmp_path / "d")
    assert rc == 1 and report["reason"] == "InvalidSource", report


def test_a_head_length_that_is_not_a_number_is_invalid_source(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        server.routes["/m/index.json"] = body(json.dumps(["w.bin"]).encode())
        server.routes["/m/w.bin"] = body(b"12345", length=None, headers={"Content-Length": "abc"})
        rc, report = fetch(server, tmp_path / "d")
    assert rc == 1 and report["reason"] == "InvalidSource", report
    assert "'abc' is not a number of bytes" in report["message"]


def test_a_listed_size_of_zero_is_still_checked(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        server.routes["/m/index.json"] = body(
            json.dumps([{"path": "w.bin", "size": 0}]).encode())
        server.routes["/m/w.bin"] = body(b"12345")
        rc, report = fetch(server, tmp_path / "d")
    assert rc == 1 and "more than the 0 bytes" in report["message"], report
    assert not (tmp_path / "d" / "w.bin").exists()


def test_a_redirect_to_ftp_is_refused(tmp_path: Path) -> None:
    """urllib follows http -> ftp://; the download pod must not connect where a server says."""
    with socket.socket() as ftp, ScriptedServer() as server:
        ftp.bind(("127.0.0.1", 0))
        ftp.listen(8)
        ftp.setblocking(False)
        server.routes["/m/index.json"] = body(json.dumps(["w.bin"]).encode())
        server.routes["/m/w.bin"] = redirect(f"ftp://127.0.0.1:{ftp.getsockname()[1]}")
        rc, report = fetch(server, tmp_path / "d")
        with pytest.raises(BlockingIOError):
            ftp.accept()  # nobody connected
    assert rc == 1 and report["reason"] == "InvalidSource", report
    assert "redirect to ftp:// refused" in report["message"]


def test_a_trickling_body_is_stalled(tmp_path: Path) -> None:
    with ScriptedServer() as server:
        server.routes["/m/index.json"] = body(
            json.dumps([{"path": "w.bin", "size": 1 << 20}]).encode())
        server.routes["/m/w.bin"] = trickle(1 << 20)
        rc, report, _ = run_fetch(["--source", f"{server.url}/m/", "--dest", str(tmp_path / "d"),
                                   "--retries", "0", "--stall-timeout", "2"], timeout=40)
    assert rc == 1 and report["reason"] == "Stalled", report
    assert "less than 64 KiB in 2 s" in report["message"]


def test_a_server_that_refuses_head_is_fetched_by_get(tmp_path: Path) -> None:
    data = os.urandom(100_000)

    def get_only(h: http.server.BaseHTTPRequestHandler) -> None:
        (body(b"", status=405) if h.command == "HEAD" else body(data))(h)

    with ScriptedServer() as server:
        server.routes["/m/index.json"] = body(json.dumps(["w.bin"]).encode())
        server.routes["/m/w.bin"] = get_only
        rc, report = fetch(server, tmp_path / "d")
    assert rc == 0 and report["phase"] == "Ready", report
    assert (tmp_path / "d" / "w.bin").read_bytes() == data


def test_a_long_plan_of_heads_is_not_a_stall(tmp_path: Path) -> None:
    """100 sizes from slow HEADs (8 at a time) take longer than --stall-timeout before the
    first byte of a file: each HEAD answered is progress."""
    names = [f"f{i:03}.bin" for i in range(100)]

    def slow_head(h: http.server.BaseHTTPRequestHandler) -> None:
        if h.command == "HEAD":
            threading.Event().wait(0.3)
        body(b"x")(h)

    with ScriptedServer() as server:
        server.routes["/m/index.json"] = body(json.dumps(names).encode())
        server.routes["*"] = slow_head
        rc, report = fetch(server, tmp_path / "d", "--stall-timeout", "2")
    assert rc == 0 and report["phase"] == "Ready", report
    assert report["filesTotal"] == 100
