"""A bounded closed-loop load on the runtime pods of the real node: `clients` threads, each sending
one inference at a time to the next Ready pod (round robin over the addresses the test hands it),
until a request budget or a time budget is spent or the test says stop. Only addresses inside
the real node's bridge subnet are ever sent to (anything else is refused, unsent)."""

from __future__ import annotations

import ipaddress
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Load:
    subnet: ipaddress.IPv4Network
    path: str  # /v2/models/NAME/infer
    body: bytes
    clients: int = 8
    max_requests: int = 5000
    max_seconds: float = 240.0
    port: int = 8080
    sent: int = 0
    ok: int = 0
    errors: int = 0
    started: float = 0.0
    stopped: float = 0.0
    _targets: list[str] = field(default_factory=list)
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def set_targets(self, ips: Sequence[str]) -> None:
        for ip in ips:
            if ipaddress.ip_address(ip) not in self.subnet:
                raise AssertionError(f"{ip} is not on the real node's bridge ({self.subnet}): "
                                     "no request is sent to it")
        with self._lock:
            self._targets = list(ips)

    def _take(self) -> str | None:
        """The next pod's URL, or None when the budget is spent (the request is counted)."""
        with self._lock:
            if (self._stop.is_set() or self.sent >= self.max_requests
                    or time.monotonic() - self.started > self.max_seconds):
                return None
            if not self._targets:
                return ""
            ip = self._targets[self._next % len(self._targets)]
            self._next += 1
            self.sent += 1
            return f"http://{ip}:{self.port}{self.path}"

    def _client(self) -> None:
        while (url := self._take()) is not None:
            if not url:  # no Ready pod yet: wait for the test to name one
                self._stop.wait(0.2)
                continue
            req = urllib.request.Request(url, data=self.body,
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    json.loads(resp.read())
                    good = resp.status == 200
            except (OSError, urllib.error.HTTPError, ValueError):
                good = False
            with self._lock:
                if good:
                    self.ok += 1
                else:
                    self.errors += 1
            if not good:  # a pod going away: do not spin on it
                self._stop.wait(0.1)

    def start(self) -> None:
        self.started = time.monotonic()
        self._threads = [threading.Thread(target=self._client, daemon=True, name=f"load-{i}")
                         for i in range(self.clients)]
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)
        self.stopped = time.monotonic()

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads)
