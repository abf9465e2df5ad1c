"""http(s): a single file, or a folder described by an ``index.json`` (what the runtime's
``storage_dir`` reads: a list of paths, or ``{"files": [...]}`` of paths or
``{"path", "sha256", "size"}``). Sizes the index does not give come from a HEAD request. Resumes
with ``Range: bytes=N-``; a server that ignores it (200) starts the file over."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ...redirects import HTTP_REDIRECTS
from ..errors import (
    ACCESS_DENIED,
    DOWNLOAD_ERROR,
    INVALID_SOURCE,
    NOT_FOUND,
    STALLED,
    FetchError,
)
from ..plan import RemoteFile, safe_rel
from ..transfer import HashingWriter

CHUNK = 1 << 20
_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
AGENT = {"User-Agent": "kubemaas-fetch"}


def http_error(exc: BaseException, what: str, stall_timeout: float) -> FetchError:
    err = _classify(exc, what, stall_timeout)
    if isinstance(exc, urllib.error.HTTPError):
        err.http_status = exc.code
    return err


def _classify(exc: BaseException, what: str, stall_timeout: float) -> FetchError:
    if isinstance(exc, urllib.error.HTTPError):
        if exc.code == 404:
            return FetchError(NOT_FOUND, f"{what}: HTTP 404 not found")
        if exc.code in (401, 403):
            return FetchError(ACCESS_DENIED, f"{what}: HTTP {exc.code} access denied")
        if 300 <= exc.code < 400:  # a loop, no Location, a target that is not http(s)
            return FetchError(INVALID_SOURCE, f"{what}: HTTP {exc.code} {exc.reason}")
        return FetchError(DOWNLOAD_ERROR, f"{what}: HTTP {exc.code} {exc.reason}")
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, (TimeoutError, socket.timeout)):
        return FetchError(STALLED, f"{what}: no data for {stall_timeout:g} s",
                          stallTimeoutSeconds=stall_timeout)
    return FetchError(DOWNLOAD_ERROR, f"{what}: {reason}")


def entry_size(entry: dict[str, Any], index: str) -> int | None:
    """An index entry's size: absent, or a whole number of bytes (not true, -1 or 1e30)."""
    size = entry.get("size")
    if size is None:
        return None
    if type(size) is not int or size < 0:
        raise FetchError(INVALID_SOURCE, f"bad size {size!r:.40} for {entry['path']!r:.200} in "
                         f"the index {index}: expected a whole number of bytes")
    return size


def entry_sha(entry: dict[str, Any], index: str) -> str | None:
    sha = entry.get("sha256")
    if sha is None:
        return None
    if not isinstance(sha, str) or not _HEX64.fullmatch(sha):
        raise FetchError(INVALID_SOURCE, f"bad sha256 {sha!r:.80} for {entry['path']!r:.200} in "
                         f"the index {index}: expected 64 hex digits")
    return sha.lower()


class HttpSource:
    def __init__(self, uri: str, stall_timeout: float,
                 beat: Callable[[], None] | None = None) -> None:
        self.uri = uri
        self.timeout = stall_timeout
        self.beat = beat  # each HEAD answered: thousands of them can take longer than a stall

    def _open(self, url: str, headers: dict[str, str] | None = None,
              method: str = "GET") -> Any:
        req = urllib.request.Request(url, headers={**AGENT, **(headers or {})}, method=method)
        try:
            return HTTP_REDIRECTS.open(req, timeout=self.timeout)
        except (urllib.error.URLError, OSError) as exc:
            raise http_error(exc, f"{method} {url}", self.timeout) from None

    def _index(self, index_url: str) -> list[RemoteFile] | None:
        try:
            with self._open(index_url) as resp:
                doc = json.loads(resp.read(64 << 20))
        except FetchError as exc:
            if exc.reason == NOT_FOUND and not self.uri.endswith(("/", "index.json")):
                return None  # not a folder: a single file
            raise
        except (ValueError, RecursionError) as exc:  # RecursionError: nested 100 000 deep
            raise FetchError(INVALID_SOURCE, f"the index {index_url} is not JSON that can be "
                             f"read: {type(exc).__name__}: {str(exc)[:200]}") from None
        items = doc.get("files") if isinstance(doc, dict) else doc
        if not isinstance(items, list) or not items:
            raise FetchError(INVALID_SOURCE, f"the index {index_url} must be a non-empty list of "
                             'files or {"files": [...]}')
        base = index_url.rsplit("/", 1)[0] + "/"
        out = []
        for item in items:
            entry = {"path": item} if isinstance(item, str) else item
            if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
                raise FetchError(INVALID_SOURCE, f"bad entry {item!r} in the index {index_url}")
            rel = safe_rel(entry["path"], index_url)
            out.append(RemoteFile(
                path=rel, size=entry_size(entry, index_url), sha256=entry_sha(entry, index_url),
                locator=urllib.parse.urljoin(base, urllib.parse.quote(rel))))
        return out

    def _sized(self, spec: RemoteFile) -> RemoteFile:
        if spec.size is not None:
            return spec
        try:
            with self._open(spec.locator, method="HEAD") as resp:
                length = resp.headers.get("Content-Length")
        except FetchError as exc:
            if exc.http_status in (405, 501):
                return spec  # a server that allows GET only: the GET's own length is checked
            raise
        if self.beat is not None:
            self.beat()
        if length is not None and not length.strip().isdigit():
            raise FetchError(INVALID_SOURCE, f"HEAD {spec.locator}: Content-Length "
                             f"{length[:40]!r} is not a number of bytes")
        return RemoteFile(spec.path, int(length) if length else None, spec.sha256,
                          locator=spec.locator)

    def plan(self) -> tuple[str | None, tuple[RemoteFile, ...]]:
        path = urllib.parse.urlsplit(self.uri).path
        index_url = self.uri if path.endswith("/index.json") else \
            self.uri.rstrip("/") + "/index.json"
        files = self._index(index_url)
        if files is None:
            name = path.rstrip("/").rsplit("/", 1)[-1]
            files = [RemoteFile(safe_rel(urllib.parse.unquote(name), self.uri), None,
                                locator=self.uri)]
        with ThreadPoolExecutor(8) as pool:
            return None, tuple(pool.map(self._sized, files))

    def download(self, spec: RemoteFile, out: HashingWriter, offset: int,
                 cancel: threading.Event) -> str | None:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        if offset and out.validator:  # a changed file answers 200, whole: start over
            headers["If-Range"] = out.validator
        try:
            resp = self._open(spec.locator, headers)
        except FetchError as exc:
            if exc.http_status != 416:
                raise
            out.seek(0)  # the partial file is longer than the object: start over
            resp = self._open(spec.locator)
        with resp:
            if offset and resp.status == 200:
                out.seek(0)  # the server ignored the Range request, or the file changed
            out.remember(validator(resp.headers))
            start = out.tell()
            try:
                while chunk := resp.read1(CHUNK):  # what has arrived: a stall keeps it
                    out.write(chunk)
                    if cancel.is_set():
                        break
            except (OSError, http.client.HTTPException) as exc:
                if isinstance(exc, OSError) and exc.errno is not None and exc.errno > 0 \
                        and not isinstance(exc, (TimeoutError, ConnectionError)):
                    raise  # a local write error (a full disk): not the network
                raise http_error(exc, f"GET {spec.locator}", self.timeout) from None
            if not cancel.is_set():
                check_length(resp.headers, out.tell() - start, out.tell(), spec.locator)
        return None


def validator(headers: Any) -> str | None:
    """What If-Range can compare: a strong ETag, else Last-Modified."""
    etag, modified = headers.get("ETag"), headers.get("Last-Modified")
    value = etag if etag and not etag.startswith("W/") else modified
    if not value or len(value) > 200 or any(ord(c) < 32 for c in value):
        return None  # none, or nothing we could send back in a header
    return str(value)


def check_length(headers: Any, got: int, position: int, url: str) -> None:
    """read1() ends quietly when the connection closes early: the answer's own Content-Length
    (and a 206's Content-Range total) must match what arrived, whether or not the index or a HEAD
    gave the size. A truncated body is a DownloadError, and the partial file is kept to resume."""
    length = headers.get("Content-Length")
    if length is not None and length.strip().isdigit() and int(length) != got:
        raise FetchError(DOWNLOAD_ERROR, f"GET {url}: the body ended after {got} of "
                         f"{int(length)} bytes")
    total = (headers.get("Content-Range") or "").rpartition("/")[2].strip()
    if total.isdigit() and int(total) != position:
        raise FetchError(DOWNLOAD_ERROR, f"GET {url}: the file ended at {position} of "
                         f"{int(total)} bytes")
