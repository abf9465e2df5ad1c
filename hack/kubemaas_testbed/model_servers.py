"""Local servers that hold model files, on 127.0.0.1, for the downloader's tests and benchmark.

``FileServer``: plain HTTP over a directory, with ``index.json`` (paths, sizes, sha256) made from
it, ``Range`` support and knobs for faults: a rate limit (bytes/s per response), a response that
stops sending after N bytes (a stall), bytes served counted per file (to prove a resumed download
did not fetch them again), and the ``Range`` headers seen.

``HfEndpoint``: the part of the Hugging Face Hub that ``huggingface_hub`` reads for a model —
``GET /api/models/{repo}/revision/{rev}`` (model info, with ``?blobs=true`` each file's size, git
blob id and LFS sha256) and ``HEAD``/``GET /{repo}/resolve/{rev}/{path}`` with the headers the
client reads (``X-Repo-Commit``, ``ETag``, and for LFS files ``X-Linked-Etag``/``X-Linked-Size``,
``Content-Length``, ``Accept-Ranges``). Set ``HF_ENDPOINT`` to its ``url``.

    with FileServer(root) as server:            # server.url, server.served["a.bin"]
        ...
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
import urllib.parse
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

LFS_THRESHOLD = 10_000  # files at least this big are "LFS" files (the Hub's rule is on type/size)
_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


def write_index(root: Path, *, sizes: bool = True, sums: bool = True,
                override: dict[str, str] | None = None) -> Path:
    """``root/index.json`` listing every file under root (the format the runtime reads)."""
    files: list[dict[str, Any]] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.name != "index.json"):
        rel = path.relative_to(root).as_posix()
        entry: dict[str, Any] = {"path": rel}
        if sizes:
            entry["size"] = path.stat().st_size
        if sums:
            entry["sha256"] = (override or {}).get(rel) or sha256_of(path)
        files.append(entry)
    out = root / "index.json"
    out.write_text(json.dumps({"files": files}, indent=1))
    return out


class _Base(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    name = "origin"

    def __init__(self, host: str = "127.0.0.1") -> None:
        super().__init__((host, 0), _Handler)
        self.host = host
        self.lock = threading.Lock()
        self.served: dict[str, int] = defaultdict(int)     # path -> body bytes sent
        self.ranges: list[tuple[str, str | None]] = []     # (path, Range header) per GET
        self.responses: list[dict[str, Any]] = []          # per GET: path, range, bytes sent
        self.rate: float | None = None                     # bytes/s per response
        self.stall_after: int | None = None                # stop sending after this many bytes
        self.no_length = False                             # omit Content-Length (size unknown)
        self.released = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.server_address[1]}"

    def __enter__(self) -> _Base:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()
        self.shutdown()
        self.server_close()

    def count(self, path: str, n: int) -> None:
        with self.lock:
            self.served[path] += n

    # what subclasses answer: (file on disk, extra headers); None for 404; False when resolve
    # answered by itself (a redirect)
    def resolve(self, handler: _Handler, path: str) -> tuple[Path, dict[str, str]] | bool | None:
        raise NotImplementedError

    def key_of(self, file: Path) -> str:
        """The name bytes are counted under in ``served`` (the file's relative path)."""
        raise NotImplementedError

    def api(self, handler: _Handler, path: str) -> dict[str, Any] | list[Any] | None:
        return None


class _Handler(BaseHTTPRequestHandler):
    server: _Base
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _json(self, doc: dict[str, Any] | list[Any]) -> None:
        data = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serve(self, body: bool) -> None:
        path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
        doc = self.server.api(self, path)
        if doc is not None:
            if doc != {}:  # an empty dict: api() already answered (an error)
                self._json(doc)
            return
        found = self.server.resolve(self, path)
        if found is False:
            return
        if found is None or found is True:
            self.send_error(404)
            return
        file, headers = found
        size = file.stat().st_size
        start, end = 0, size - 1
        header = self.headers.get("Range")
        record: dict[str, Any] = {"server": self.server.name, "path": path,
                                  "file": self.server.key_of(file),
                                  "range": header, "sent": 0,
                                  "authorization": self.headers.get("Authorization")}
        if body:
            with self.server.lock:
                self.server.ranges.append((path, header))
                self.server.responses.append(record)
        match = _RANGE.match(header or "")
        status = 200
        if match:
            start = int(match.group(1))
            end = min(int(match.group(2)), size - 1) if match.group(2) else size - 1
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        if self.server.no_length:
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(end - start + 1))
        self.end_headers()
        if body:
            self._send_body(path, file, start, end - start + 1, record)

    def _send_body(self, path: str, file: Path, start: int, length: int,
                   record: dict[str, Any]) -> None:
        srv = self.server
        sent = 0
        began = time.monotonic()
        with file.open("rb") as fh:
            fh.seek(start)
            while sent < length:
                step = min(64 << 10, length - sent)
                if srv.stall_after is not None:
                    step = min(step, max(srv.stall_after - sent, 0))
                    if step == 0:
                        srv.released.wait()  # a server that stops sending, until closed
                        return
                chunk = fh.read(step)
                if not chunk:
                    return
                try:
                    self.wfile.write(chunk)
                except OSError:
                    return  # the client went away (a killed download)
                sent += len(chunk)
                record["sent"] = sent
                srv.count(record["file"], len(chunk))
                if srv.rate:
                    ahead = sent / srv.rate - (time.monotonic() - began)
                    if ahead > 0:
                        time.sleep(ahead)  # pacing the stream, not waiting for an event


class FileServer(_Base):
    """Serve ``root`` at ``url/``; ``served`` counts body bytes per relative path."""

    def __init__(self, root: Path, host: str = "127.0.0.1") -> None:
        """`host`: 127.0.0.1, or the real node's bridge address (its pods' only way out)."""
        super().__init__(host)
        self.root = root.resolve()

    def key_of(self, file: Path) -> str:
        return file.relative_to(self.root).as_posix()

    def resolve(self, handler: _Handler, path: str) -> tuple[Path, dict[str, str]] | bool | None:
        file = (self.root / path.lstrip("/")).resolve()
        if not file.is_relative_to(self.root) or not file.is_file():
            return None
        return file, {"Content-Type": "application/octet-stream"}


class HfEndpoint(_Base):
    """A Hugging Face-compatible endpoint serving one model directory as ``repo`` at every
    revision name in ``revisions`` (all point to one commit). As the Hub does, ``resolve/`` of an
    LFS file answers ``302`` to a content address on another origin (``cdn``: a second server on
    its own port, sharing this one's counters and knobs) with the file's
    ``X-Linked-Etag``/``X-Linked-Size``, so huggingface_hub reads the metadata from the 302 and
    does not send the token there; ``redirect_lfs=False`` serves LFS files in place."""

    def __init__(self, model_dir: Path, repo: str, revisions: tuple[str, ...] = ("main",),
                 commit: str = "0123456789abcdef0123456789abcdef01234567",
                 redirect_lfs: bool = True) -> None:
        super().__init__()
        self.redirect_lfs = redirect_lfs
        self.blobs: dict[str, str] = {}    # content address -> relative path of the LFS files
        self.address: dict[str, str] = {}  # relative path -> content address
        self.cdn = _Cdn(self)
        self.model_dir = model_dir.resolve()
        self.repo = repo
        self.revisions = {*revisions, commit}
        self.commit = commit
        self.files: dict[str, dict[str, Any]] = {}
        for path in sorted(p for p in self.model_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(self.model_dir).as_posix()
            data = path.read_bytes()
            entry: dict[str, Any] = {"rfilename": rel, "size": len(data),
                                     "blobId": git_blob_sha1(data)}
            if len(data) >= LFS_THRESHOLD:
                sha = hashlib.sha256(data).hexdigest()
                entry["lfs"] = {"sha256": sha, "size": len(data), "pointerSize": 134}
                self.blobs[sha] = rel
                self.address[rel] = sha
                # the Hub lists an LFS file by its pointer's size and blob
                entry["size"] = len(data)
                entry["blobId"] = git_blob_sha1(
                    f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\n"
                    f"size {len(data)}\n".encode())
            self.files[rel] = entry

    def api(self, handler: _Handler, path: str) -> dict[str, Any] | list[Any] | None:
        prefix = f"/api/models/{self.repo}"
        if not path.startswith(prefix + "/") and path != prefix:
            if path.startswith("/api/models/"):  # another repository: what the Hub answers
                handler.send_response(404)
                handler.send_header("X-Error-Code", "RepoNotFound")
                handler.send_header("X-Error-Message", "Repository not found")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return {}
            return None
        rest = path[len(prefix):]
        if rest.startswith("/tree/"):  # snapshot_download's listing (one page, no Link header)
            return [{"type": "file", "path": e["rfilename"], "size": e["size"],
                     "oid": e["blobId"],
                     **({"lfs": {"oid": e["lfs"]["sha256"], "size": e["lfs"]["size"],
                                 "pointerSize": 134}} if "lfs" in e else {})}
                    for e in self.files.values()]
        rev = rest.removeprefix("/revision/") if rest.startswith("/revision/") else "main"
        if rest not in ("", "/") and not rest.startswith("/revision/"):
            return None
        if rev not in self.revisions:
            handler.send_response(404)
            handler.send_header("X-Error-Code", "RevisionNotFound")
            handler.send_header("X-Error-Message", f"Invalid rev id: {rev}")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return {}  # answered; an empty dict tells _serve nothing more is to be sent
        return {"id": self.repo, "modelId": self.repo, "sha": self.commit, "private": False,
                "tags": [], "siblings": list(self.files.values())}

    def key_of(self, file: Path) -> str:
        return file.relative_to(self.model_dir).as_posix()

    def __enter__(self) -> HfEndpoint:
        super().__enter__()
        self.cdn.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.cdn.__exit__(*exc)
        super().__exit__(*exc)

    def resolve(self, handler: _Handler, path: str) -> tuple[Path, dict[str, str]] | bool | None:
        prefix = f"/{self.repo}/resolve/"
        if not path.startswith(prefix):
            return None
        rev, _, rel = path[len(prefix):].partition("/")
        entry = self.files.get(rel)
        if rev not in self.revisions or entry is None:
            return None
        headers = {"X-Repo-Commit": self.commit, "Content-Type": "application/octet-stream"}
        if "lfs" in entry:
            sha = entry["lfs"]["sha256"]
            headers.update({"ETag": f'"{sha}"', "X-Linked-Etag": f'"{sha}"',
                            "X-Linked-Size": str(entry["lfs"]["size"])})
            if self.redirect_lfs:
                handler.send_response(302)
                for key, value in headers.items():
                    handler.send_header(key, value)
                handler.send_header("Location", f"{self.cdn.url}/{self.address[rel]}")
                handler.send_header("Content-Length", "0")
                handler.end_headers()
                return False
        else:
            headers["ETag"] = f'"{entry["blobId"]}"'
        return self.model_dir / rel, headers


class _Cdn(_Base):
    """Where HfEndpoint redirects LFS files: another origin, same counters and knobs."""

    name = "cdn"

    def __init__(self, hub: HfEndpoint) -> None:
        super().__init__()
        self.hub = hub
        self.lock, self.served, self.ranges = hub.lock, hub.served, hub.ranges
        self.responses, self.released = hub.responses, hub.released

    def __getattribute__(self, name: str) -> Any:
        if name in ("rate", "stall_after", "no_length"):  # the endpoint's knobs rule
            return getattr(object.__getattribute__(self, "hub"), name)
        return object.__getattribute__(self, name)

    def key_of(self, file: Path) -> str:
        return self.hub.key_of(file)

    def resolve(self, handler: _Handler, path: str) -> tuple[Path, dict[str, str]] | bool | None:
        rel = self.hub.blobs.get(path.lstrip("/"))
        if rel is None:
            return None
        return self.hub.model_dir / rel, {"ETag": f'"{path.lstrip("/")}"',
                                          "Content-Type": "application/octet-stream"}
