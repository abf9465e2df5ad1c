"""The hostile suite's parts (tests/runtime/test_hostile.py): the well-behaved traffic beside
every attack, the servers it runs against, and raw-socket and payload helpers."""

from __future__ import annotations

import socket
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from .conftest import Server
from .secrets_helpers import request

KEY = "hostile-suite-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
MIB = 1 << 20


def rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field_name} for {pid}")


@dataclass
class Traffic:
    """One thread of valid requests (a fresh connection each) against one server."""

    server: Server
    path: str
    body: bytes
    limit: int = 20000
    pace_s: float = 0.02  # at most ~50 requests/s: company for the attacks, not a load test
    ok: int = 0
    bad: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        assert self.server.port is not None
        for _ in range(self.limit):
            if self.stop.is_set():
                return
            try:
                status, _, doc = request(self.server.port, "POST", self.path, self.body, AUTH,
                                         timeout=60)
            except Exception as exc:  # a lost answer
                self.bad.append(f"{type(exc).__name__}: {exc}")
                continue
            if status == 200:
                self.ok += 1
            else:
                self.bad.append(f"{status}: {doc!r}"[:300])
            self.stop.wait(self.pace_s)

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(120)


@dataclass
class Target:
    name: str
    server: Server
    traffic: Traffic

    @property
    def port(self) -> int:
        assert self.server.port is not None
        return self.server.port

    @property
    def pid(self) -> int:
        return self.server.proc.pid


def raw_exchange(port: int, data: bytes, timeout: float = 20) -> bytes:
    """Send raw bytes, read until the server closes or answers a whole response."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except (ConnectionResetError, BrokenPipeError):
            pass
        return b"".join(chunks)


def status_of(response: bytes) -> int | None:
    """The status of a raw response, None when the server closed without one."""
    if not response:
        return None
    return int(response.split(b" ", 2)[1])


def deflate_zeros(total_mib: int) -> bytes:
    """A raw deflate stream of ``total_mib`` MiB of zeros, built without compressing them all:
    after a full flush every further MiB of zeros compresses to the same bytes, so those bytes
    are repeated."""
    zero = bytes(MIB)
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    first = c.compress(zero) + c.flush(zlib.Z_FULL_FLUSH)
    steady = c.compress(zero) + c.flush(zlib.Z_FULL_FLUSH)
    assert c.compress(zero) + c.flush(zlib.Z_FULL_FLUSH) == steady
    return first + steady * (total_mib - 1) + c.flush()
