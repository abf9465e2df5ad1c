"""What a fetch finds in DIR before it starts: another fetch still writing there (two pods on
one PVC), or what an earlier fetch of another source left behind."""

from __future__ import annotations

import http.server
import json
import os
import threading
from pathlib import Path

from tests.helpers import wait_for

from .fetch_helpers import Fetch, run_fetch
from .scripted_server import ScriptedServer, body, ranged

LOCK = ".kubemaas-fetch.lock"


def waiting_on(lock: Path) -> bool:
    """A process blocked in flock() on this file (``->`` lines in /proc/locks)."""
    inode = lock.stat().st_ino
    return any("->" in line and f":{inode} " in line
               for line in Path("/proc/locks").read_text().splitlines())


def gets(server: ScriptedServer, path: str) -> int:
    return sum(1 for method, p, _ in server.requests if method == "GET" and p == path)


def test_a_second_fetch_waits_then_finds_the_dir_complete(tmp_path: Path) -> None:
    data = os.urandom(4 << 20)
    gate = threading.Event()

    def held(h: http.server.BaseHTTPRequestHandler) -> None:
        gate.wait(60)  # the first fetch is mid-file while the second one starts
        body(data)(h)

    dest = tmp_path / "d"
    with ScriptedServer() as server:
        server.routes["/m/index.json"] = body(
            json.dumps([{"path": "w.bin", "size": len(data)}]).encode())
        server.routes["/m/w.bin"] = held
        args = ["--source", f"{server.url}/m/", "--dest", str(dest), "--retries", "0"]
        first = Fetch(args)
        wait_for(lambda: gets(server, "/m/w.bin") == 1, what="the first fetch's GET")
        second = Fetch(args)
        try:
            wait_for(lambda: waiting_on(dest / LOCK), what="the second fetch waiting")
        finally:
            gate.set()
        one, two = first.finish(), second.finish()
        assert gets(server, "/m/w.bin") == 1  # the second fetch found the file there
    assert one["phase"] == "Ready", first.stderr
    assert two["phase"] == "Ready" and two["message"] == "already complete", second.stderr
    assert "waiting for it to finish" in second.stderr
    assert (dest / "w.bin").read_bytes() == data


def serve(server: ScriptedServer, files: dict[str, bytes], cut: str | None = None) -> None:
    server.routes["/m/index.json"] = body(json.dumps(
        [{"path": name, "size": len(data)} for name, data in files.items()]).encode())
    for name, data in files.items():
        server.routes[f"/m/{name}"] = ranged(data, len(data) // 2 if name == cut else None)


def test_what_another_source_left_is_discarded(tmp_path: Path) -> None:
    """Source A's fetch breaks off half way (a.bin verified and journaled, half of b.bin in its
    partial file); DIR is then fetched from B: same names and sizes, other bytes, no sums."""
    n = 1 << 20
    a = {"a.bin": b"A" * n, "b.bin": b"a" * n}
    b = {"a.bin": b"B" * n, "b.bin": b"b" * n}
    dest = tmp_path / "d"
    with ScriptedServer() as one, ScriptedServer() as two:
        serve(one, a, cut="b.bin")
        serve(two, b)
        rc, report, fetch = run_fetch(["--source", f"{one.url}/m/", "--dest", str(dest),
                                       "--retries", "0", "--parallel", "1"])
        assert rc == 1 and (dest / "a.bin").read_bytes() == a["a.bin"], fetch.stderr
        assert (dest / ".kubemaas-fetch" / "partial" / "b.bin.part").stat().st_size == n // 2
        rc, report, fetch = run_fetch(["--source", f"{two.url}/m/", "--dest", str(dest)])
        ranges = [h.get("Range") for method, _, h in two.requests if method == "GET"]
    assert rc == 0 and report["phase"] == "Ready", fetch.stderr
    assert "another source or revision: discarded" in fetch.stderr
    for name, data in b.items():
        assert (dest / name).read_bytes() == data, name
    assert ranges == [None, None, None]  # the index and both files, whole


def test_a_file_changed_in_place_is_fetched_again_whole(tmp_path: Path) -> None:
    """Same URL, same size, no sums: the partial file's ETag goes along as If-Range, so the
    server's new bytes come whole instead of the rest of them after the old ones."""
    n = 1 << 20
    old, new = b"o" * n, b"n" * n
    dest = tmp_path / "d"
    with ScriptedServer() as server:
        server.routes["/m/index.json"] = body(json.dumps([{"path": "w.bin", "size": n}]).encode())
        server.routes["/m/w.bin"] = ranged(old, cut=n // 2, etag='"v1"')
        args = ["--source", f"{server.url}/m/", "--dest", str(dest), "--retries", "0"]
        rc, _, fetch = run_fetch(args)
        assert rc == 1, fetch.stderr
        server.routes["/m/w.bin"] = ranged(new, etag='"v2"')
        rc, report, fetch = run_fetch(args)
        last = [h for method, p, h in server.requests if method == "GET" and p == "/m/w.bin"][-1]
    assert rc == 0 and report["phase"] == "Ready", fetch.stderr
    assert (last.get("Range"), last.get("If-Range")) == (f"bytes={n // 2}-", '"v1"')
    assert (dest / "w.bin").read_bytes() == new
