"""What a fetch finds in DIR before it starts: another fetch still writing there (two pods on
one PVC), or what an earlier fetch of another source left behind."""

from __future__ import annotations

import http.server
import json
import os
import threading
from pathlib import Path

from tests.helpers import wait_for

from .fetch_helpers import Fetch
from .scripted_server import ScriptedServer, body

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
