"""Fetch a model *directory* (a Hugging Face model: config.json, *.safetensors, tokenizer files)
from a local path or PVC, an ``s3://bucket/prefix/``, or ``http(s)://`` with an index of files.

http(s): the URI names an index, ``.../index.json``, or a folder whose ``index.json`` is read; the
index is a JSON list of relative paths, or ``{"files": [...]}`` whose items are paths or
``{"path": ..., "sha256": ...}`` (a checksum is verified). s3: every object under the prefix
(ListObjectsV2, paged). Each file is downloaded like a single model file (temporary file, fsync,
checksum, rename) into ``<cache>/<sha256 of the URI>/``; a marker written after the last file
makes the directory complete, so a download broken off half way is resumed and never loaded.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import urllib.error
import urllib.parse
import urllib.request
import xml.etree.ElementTree as ET
from pathlib import Path, PurePosixPath

from .errors import StartupError
from .fetch.plan import file_and_folder, path_problem
from .storage import (
    S3Config,
    _download,
    _s3_request,
    http_reason,
    open_url,
    refuse_unfinished,
    sha256_file,
    sigv4_headers,
)

log = logging.getLogger("kubemaas.runtime.storage")

COMPLETE = ".kubemaas-complete"
_S3_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _safe_rel(path: str, uri: str) -> str:
    problem = path_problem(path)
    if problem is not None:
        raise StartupError(f"unsafe file path {path[:300]!r} in the listing of {uri}: {problem}")
    return str(PurePosixPath(path))


def _check_listing(paths: list[str], uri: str) -> None:
    """Each path once, none both a file and a folder: else the downloads would trip over each
    other (FileExistsError, IsADirectoryError) half way."""
    seen: set[str] = set()
    for path in paths:
        if path in seen:  # "x" and "./x"; S3 keys "m/x" and "m//x"
            raise StartupError(f"duplicate path {path!r} in the listing of {uri}")
        seen.add(path)
    problem = file_and_folder(seen)
    if problem is not None:
        raise StartupError(f"{problem} in the listing of {uri}")


def _http_index(uri: str, timeout_s: float) -> tuple[str, list[tuple[str, str | None]]]:
    """(base URL, [(relative path, sha256 or None)]) from the index."""
    index_url = uri if urllib.parse.urlsplit(uri).path.endswith(".json") else \
        uri.rstrip("/") + "/index.json"
    base = index_url.rsplit("/", 1)[0] + "/"
    req = urllib.request.Request(index_url, headers={"User-Agent": "kubemaas-runtime"})
    try:
        with open_url(req, timeout_s) as resp:
            doc = json.loads(resp.read(16 << 20))
    except urllib.error.HTTPError as exc:
        raise StartupError(f"cannot fetch the file index {index_url}: HTTP {exc.code} "
                           f"{http_reason(exc)}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        raise StartupError(f"cannot fetch the file index {index_url}: {exc!r}") from None
    except (ValueError, RecursionError) as exc:  # RecursionError: nested 100 000 deep
        raise StartupError(f"the file index {index_url} is not JSON that can be read: "
                           f"{type(exc).__name__}: {str(exc)[:200]}") from None
    items = doc.get("files") if isinstance(doc, dict) else doc
    if not isinstance(items, list) or not items:
        raise StartupError(f"the file index {index_url} must be a non-empty list of files or "
                           '{"files": [...]}')
    files: list[tuple[str, str | None]] = []
    for item in items:
        if isinstance(item, str):
            files.append((_safe_rel(item, index_url), None))
        elif isinstance(item, dict) and isinstance(item.get("path"), str):
            sha = item.get("sha256")
            files.append((_safe_rel(item["path"], index_url),
                          sha.lower() if isinstance(sha, str) else None))
        else:
            raise StartupError(f"bad entry {item!r:.200} in the file index {index_url}")
    _check_listing([rel for rel, _ in files], index_url)
    return base, files


def _s3_list(uri: str, cfg: S3Config, timeout_s: float) -> list[tuple[str, str]]:
    """[(relative path, object key)] of every object under the prefix."""
    parsed = urllib.parse.urlsplit(uri)
    bucket, prefix = parsed.netloc, parsed.path.lstrip("/")
    if not bucket:
        raise StartupError(f"invalid S3 URI {uri!r}: expected s3://bucket/prefix/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    endpoint = (cfg.endpoint or f"https://s3.{cfg.region}.amazonaws.com").rstrip("/")
    out: list[tuple[str, str]] = []
    token: str | None = None
    while True:
        query = {"list-type": "2", "prefix": prefix}
        if token:
            query["continuation-token"] = token
        url = f"{endpoint}/{bucket}?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"
        headers: dict[str, str] = {}
        if cfg.access_key and cfg.secret_key:
            headers = sigv4_headers("GET", url, region=cfg.region, access_key=cfg.access_key,
                                    secret_key=cfg.secret_key, session_token=cfg.session_token)
        try:
            with open_url(urllib.request.Request(url, headers=headers), timeout_s,
                          follow_redirects=False) as resp:
                root = ET.fromstring(resp.read())
        except urllib.error.HTTPError as exc:
            reason = "no such bucket" if exc.code == 404 else http_reason(exc, signed=True)
            raise StartupError(f"cannot list {uri}: HTTP {exc.code} {reason}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, ET.ParseError) as exc:
            raise StartupError(f"cannot list {uri}: {exc}") from None
        for item in root.iter(f"{_S3_NS}Contents"):
            key = item.findtext(f"{_S3_NS}Key") or ""
            if not key.startswith(prefix):  # a listing we did not ask for
                raise StartupError(f"the listing of {uri} holds {key[:300]!r}, which is not "
                                   f"under {prefix!r}")
            if key.endswith("/"):
                continue  # folder marker
            out.append((_safe_rel(key[len(prefix):], uri), key))
        if root.findtext(f"{_S3_NS}IsTruncated") != "true":
            break
        token = root.findtext(f"{_S3_NS}NextContinuationToken")
    if not out:
        raise StartupError(f"no objects under {uri}")
    _check_listing([rel for rel, _ in out], uri)
    return out


def fetch_model_dir(uri: str, cache_dir: str, *, s3: S3Config | None = None,
                    timeout_s: float = 300.0) -> Path:
    """A local directory holding the model's files, downloaded into the cache if needed."""
    parsed = urllib.parse.urlsplit(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file"):
        path = Path(urllib.parse.unquote(parsed.path) if scheme == "file" else uri)
        if not path.is_dir():
            raise StartupError(f"model directory {path} not found")
        refuse_unfinished(path)
        return path
    if scheme not in ("http", "https", "s3"):
        raise StartupError(f"unsupported model URI scheme {scheme!r} in {uri!r}; use a path, "
                           "file://, http(s):// (with an index) or s3://")
    dest = Path(cache_dir, hashlib.sha256(uri.encode()).hexdigest()[:32])
    if (dest / COMPLETE).is_file():
        log.info("model found in cache", extra={"fields": {"path": str(dest)}})
        return dest
    log.info("downloading model directory", extra={"fields": {"uri": uri, "dest": str(dest)}})
    if scheme == "s3":
        cfg = s3 or S3Config()
        bucket = parsed.netloc
        for rel, key in _s3_list(uri, cfg, timeout_s):
            target = dest / rel
            if not target.is_file():
                _download(_s3_request(f"s3://{bucket}/{key}", cfg), f"s3://{bucket}/{key}",
                          target, timeout_s, None, follow_redirects=False)
    else:
        base, files = _http_index(uri, timeout_s)
        for rel, sha in files:
            target = dest / rel
            if target.is_file() and (sha is None or sha256_file(target) == sha):
                continue
            url = urllib.parse.urljoin(base, urllib.parse.quote(rel))
            req = urllib.request.Request(url, headers={"User-Agent": "kubemaas-runtime"})
            _download(req, url, target, timeout_s, sha)
    (dest / COMPLETE).write_text(uri + "\n")
    return dest
