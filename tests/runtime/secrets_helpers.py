"""Test helpers: a directory written the way the kubelet writes a Secret volume (timestamped
directory, ``..data`` symlink swapped atomically, one symlink per key), a private CA and server
certificates from the openssl CLI, and HTTP(S) requests with headers."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable, Mapping
from itertools import count
from pathlib import Path
from typing import Any

_stamp = count()


def write_secret(directory: Path, files: Mapping[str, bytes]) -> None:
    """Write (or replace) a Secret volume's content like the kubelet's atomic writer."""
    directory.mkdir(parents=True, exist_ok=True)
    data = directory / "..data"
    old = os.readlink(data) if data.is_symlink() else None
    new = f"..{time.strftime('%Y_%m_%d_%H_%M_%S')}.{next(_stamp)}"
    (directory / new).mkdir()
    for name, content in files.items():
        (directory / new / name).write_bytes(content)
    tmp = directory / "..data_tmp"
    os.symlink(new, tmp)
    os.replace(tmp, data)  # the atomic swap
    for name in files:
        link = directory / name
        if not link.is_symlink():
            os.symlink(f"..data/{name}", link)
    for entry in directory.iterdir():  # keys that left the Secret
        if not entry.name.startswith(".") and entry.name not in files:
            entry.unlink()
    if old is not None:
        shutil.rmtree(directory / old)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


class CA:
    """A private certificate authority; ``issue`` writes a leaf for 127.0.0.1."""

    def __init__(self, work: Path) -> None:
        self.work = work
        work.mkdir(parents=True, exist_ok=True)
        self.crt, self.key = work / "ca.crt", work / "ca.key"
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                 "-nodes", "-keyout", str(self.key), "-out", str(self.crt), "-days", "2",
                 "-subj", "/CN=kubemaas test CA",
                 "-addext", "basicConstraints=critical,CA:TRUE",
                 "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def issue(self, serial: int) -> dict[str, bytes]:
        """tls.crt and tls.key (the kubernetes.io/tls form) for a new key pair."""
        key, csr, crt = (self.work / f"leaf{serial}.{ext}" for ext in ("key", "csr", "crt"))
        ext = self.work / f"leaf{serial}.ext"
        ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
                       "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", str(key), "-out", str(csr), "-subj", "/CN=127.0.0.1")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(self.crt), "-CAkey", str(self.key),
                 "-set_serial", str(serial), "-days", "1", "-out", str(crt),
                 "-extfile", str(ext))
        return {"tls.crt": crt.read_bytes(), "tls.key": key.read_bytes()}

    def client_context(self) -> ssl.SSLContext:
        """Verifies the server against this CA only, hostname included (no verify=False)."""
        return ssl.create_default_context(cafile=str(self.crt))


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: Mapping[str, str] | None = None, tls: ssl.SSLContext | None = None,
            timeout: float = 30) -> tuple[int, dict[str, str], Any]:
    conn: http.client.HTTPConnection
    if tls is not None:
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=tls)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        resp = conn.getresponse()
        raw = resp.read()
        try:
            doc: Any = json.loads(raw)
        except ValueError:
            doc = raw
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, doc
    finally:
        conn.close()


def wait_for(check: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    """Poll ``check`` until it holds (the event is a file change seen by the server)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
