"""Fetch the model: local path, file://, http(s):// or s3:// (S3-compatible, SigV4).

Downloads go to ``<cache>/<sha256 of the URI>/<file name>`` through a temporary file in the same
directory that is fsynced, verified and then renamed: a half-written file is never at the final
path, so it is never loaded. A cached file is reused only when its checksum (if one is given)
still matches. Errors are one line: not found, access denied, checksum mismatch.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.client
import logging
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .errors import StartupError
from .redirects import HTTP_REDIRECTS, NO_REDIRECTS

log = logging.getLogger("kubemaas.runtime.storage")

_CHUNK = 1 << 20
MIN_PROGRESS = 64 << 10  # bytes each timeout_s must bring (the fetcher's stall rule too)
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


@dataclass(frozen=True)
class S3Config:
    endpoint: str | None = None
    access_key: str | None = None
    secret_key: str | None = None
    session_token: str | None = None
    region: str = "us-east-1"

    @classmethod
    def from_env(cls, environ: Mapping[str, str], endpoint: str | None = None,
                 credentials_dir: str | None = None) -> S3Config:
        values = {k: environ.get(k) for k in (
            "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
            "AWS_DEFAULT_REGION")}
        if credentials_dir:
            for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
                        "AWS_REGION"):
                path = Path(credentials_dir, key)
                if path.is_file():
                    values[key] = path.read_text().strip()
        region = values["AWS_REGION"] or values["AWS_DEFAULT_REGION"] or "us-east-1"
        return cls(
            endpoint=endpoint or environ.get("AWS_ENDPOINT_URL_S3")
            or environ.get("AWS_ENDPOINT_URL"),
            access_key=values["AWS_ACCESS_KEY_ID"], secret_key=values["AWS_SECRET_ACCESS_KEY"],
            session_token=values["AWS_SESSION_TOKEN"], region=region)


# written by kubemaas_runtime.fetch (the model cache's downloader): see fetch/layout.py
FETCHING = ".kubemaas-fetch"
FETCHED = ".kubemaas-manifest.json"


def refuse_unfinished(path: Path) -> None:
    """A directory that ``python -m kubemaas_runtime.fetch`` is still filling (its work folder is
    there, its manifest is not) is never loaded: some of its files are missing."""
    if (path / FETCHING).is_dir() and not (path / FETCHED).is_file():
        raise StartupError(f"model directory {path} is still being downloaded (it has "
                           f"{FETCHING}/ and no {FETCHED}); wait for the download to finish")


MODEL_SUFFIXES = (".onnx", ".pt", ".pth", ".ts", ".torchscript", ".pt2", ".keras", ".h5")


def find_model_file(directory: Path) -> Path:
    """The one model file in a directory (top level or one level down, hidden files skipped)."""
    found = sorted(p for pattern in ("*", "*/*") for p in directory.glob(pattern)
                   if p.is_file() and p.suffix.lower() in MODEL_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(directory).parts))
    if len(found) != 1:
        names = ", ".join(str(p.relative_to(directory)) for p in found[:5]) or "none"
        raise StartupError(f"model directory {directory} must hold exactly one model file "
                           f"({', '.join(MODEL_SUFFIXES)}); found {len(found)}: {names}")
    return found[0]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_sha(path: Path, expected: str | None, uri: str) -> None:
    if expected is None:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise StartupError(f"checksum mismatch for {uri}: expected sha256 {expected}, "
                           f"got {actual}")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def sigv4_headers(method: str, url: str, *, region: str, access_key: str, secret_key: str,
                  session_token: str | None = None, now: dt.datetime | None = None,
                  extra_headers: Mapping[str, str] | None = None,
                  payload_sha256: str = _EMPTY_SHA256) -> dict[str, str]:
    """AWS Signature Version 4 headers for an S3 request (service ``s3``)."""
    now = now or dt.datetime.now(dt.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    date = amz_date[:8]
    parsed = urllib.parse.urlsplit(url)
    host = parsed.netloc
    headers = {"host": host, "x-amz-content-sha256": payload_sha256, "x-amz-date": amz_date}
    if session_token:
        headers["x-amz-security-token"] = session_token
    for key, value in (extra_headers or {}).items():
        headers[key.lower()] = value.strip()
    signed = sorted(headers)
    canonical_headers = "".join(f"{k}:{headers[k]}\n" for k in signed)
    signed_headers = ";".join(signed)
    query = urllib.parse.parse_qsl(parsed.query, keep_blank_values=True)
    canonical_query = "&".join(
        f"{urllib.parse.quote(k, safe='-_.~')}={urllib.parse.quote(v, safe='-_.~')}"
        for k, v in sorted(query))
    canonical_path = urllib.parse.quote(urllib.parse.unquote(parsed.path or "/"), safe="/-_.~")
    canonical_request = "\n".join([method, canonical_path, canonical_query, canonical_headers,
                                   signed_headers, payload_sha256])
    scope = f"{date}/{region}/s3/aws4_request"
    string_to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                                hashlib.sha256(canonical_request.encode()).hexdigest()])
    signing_key = _hmac(_hmac(_hmac(_hmac(f"AWS4{secret_key}".encode(), date), region), "s3"),
                        "aws4_request")
    signature = hmac.new(signing_key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    out = {k: v for k, v in headers.items() if k != "host"}
    out["Authorization"] = (f"AWS4-HMAC-SHA256 Credential={access_key}/{scope}, "
                            f"SignedHeaders={signed_headers}, Signature={signature}")
    return out


def open_url(request: urllib.request.Request, timeout_s: float, *,
             follow_redirects: bool = True) -> Any:
    opener = HTTP_REDIRECTS if follow_redirects else NO_REDIRECTS
    return opener.open(request, timeout=timeout_s)


def http_reason(exc: urllib.error.HTTPError, signed: bool = False) -> str:
    if 300 <= exc.code < 400 and not signed:  # a loop, no Location, a target not http(s)
        return str(exc.reason)
    if 300 <= exc.code < 400:
        return (f"redirect to {exc.headers.get('Location')!r} refused (S3 requests carry "
                "credentials signed for their endpoint; set the bucket's own endpoint or region)")
    return {404: "not found", 403: "access denied", 401: "unauthorized"}.get(
        exc.code, str(exc.reason))


def _s3_request(uri: str, cfg: S3Config) -> urllib.request.Request:
    parsed = urllib.parse.urlsplit(uri)
    bucket, key = parsed.netloc, parsed.path.lstrip("/")
    if not bucket or not key:
        raise StartupError(f"invalid S3 URI {uri!r}: expected s3://bucket/key")
    endpoint = (cfg.endpoint or f"https://s3.{cfg.region}.amazonaws.com").rstrip("/")
    # path-style addressing: works with AWS and every S3-compatible server
    url = f"{endpoint}/{bucket}/{urllib.parse.quote(key, safe='/-_.~')}"
    headers: dict[str, str] = {}
    if cfg.access_key and cfg.secret_key:
        headers = sigv4_headers("GET", url, region=cfg.region, access_key=cfg.access_key,
                                secret_key=cfg.secret_key, session_token=cfg.session_token)
    return urllib.request.Request(url, headers=headers, method="GET")


def _open(request: urllib.request.Request, uri: str, timeout_s: float,
          follow_redirects: bool) -> Any:
    try:
        return open_url(request, timeout_s, follow_redirects=follow_redirects)
    except urllib.error.HTTPError as exc:
        raise StartupError(f"cannot fetch model {uri}: HTTP {exc.code} "
                           f"{http_reason(exc, signed=not follow_redirects)}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
        why: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise StartupError(f"cannot fetch model {uri}: {why or type(exc).__name__}") from None


def _stream(resp: Any, out: IO[bytes], uri: str, timeout_s: float) -> str:
    """Copy the body into ``out``; its sha256. A body cut short (early EOF, or a chunked body
    broken mid-chunk: http.client's IncompleteRead, not an OSError) is one StartupError. So is
    one that trickles: ``timeout_s`` is a socket read timeout, which a byte now and then never
    trips, so each ``timeout_s`` must also bring MIN_PROGRESS bytes."""
    digest = hashlib.sha256()
    expected = resp.headers.get("Content-Length")
    read = getattr(resp, "read1", resp.read)  # what has arrived, so the clock is looked at
    size, window_start, window_bytes = 0, time.monotonic(), 0
    try:
        for chunk in iter(lambda: read(_CHUNK), b""):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
            window_bytes += len(chunk)
            if time.monotonic() - window_start >= timeout_s:
                if window_bytes < MIN_PROGRESS:
                    raise StartupError(f"download of {uri} is too slow: {window_bytes} bytes in "
                                       f"{timeout_s:g} s, less than {MIN_PROGRESS // 1024} KiB")
                window_start, window_bytes = time.monotonic(), 0
    except (OSError, http.client.HTTPException) as exc:
        raise StartupError(f"download of {uri} broke off after {size} bytes: "
                           f"{exc!r}") from None
    if expected is not None and expected.strip().isdigit() and int(expected) != size:
        raise StartupError(f"download of {uri} is truncated: {size} of {expected} bytes")
    return digest.hexdigest()


def _download(request: urllib.request.Request, uri: str, dest: Path, timeout_s: float,
              expected_sha256: str | None, *, follow_redirects: bool = True) -> None:
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=".partial-", dir=dest.parent)
    except OSError as exc:  # a listing that names "a" and "a/b", a read-only cache, ...
        raise StartupError(f"cannot write the model to {dest}: {exc}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            with _open(request, uri, timeout_s, follow_redirects) as resp:
                actual = _stream(resp, out, uri, timeout_s)
            out.flush()
            os.fsync(out.fileno())
        if expected_sha256 is not None and actual != expected_sha256:
            raise StartupError(f"checksum mismatch for {uri}: expected sha256 "
                               f"{expected_sha256}, got {actual}")
        try:
            os.replace(tmp, dest)
        except OSError as exc:
            raise StartupError(f"cannot write the model to {dest}: {exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def fetch_model(uri: str, cache_dir: str, *, sha256: str | None = None,
                s3: S3Config | None = None, timeout_s: float = 300.0) -> Path:
    """Return a local path to the model file, downloading it into the cache if needed."""
    parsed = urllib.parse.urlsplit(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        path = Path(urllib.parse.unquote(parsed.path) if scheme == "file" else uri)
        if path.is_dir():
            refuse_unfinished(path)
            path = find_model_file(path)
        if not path.is_file():
            what = "is a directory" if path.is_dir() else "not found"
            raise StartupError(f"model file {path} {what}")
        _check_sha(path, sha256, uri)
        return path
    if scheme not in ("http", "https", "s3"):
        raise StartupError(f"unsupported model URI scheme {scheme!r} in {uri!r}; use a path, "
                           "file://, http(s):// or s3://")
    name = Path(urllib.parse.unquote(parsed.path)).name or "model"
    slot = hashlib.sha256(uri.encode()).hexdigest()[:32]
    dest = Path(cache_dir, slot, name)
    if dest.is_file():
        if sha256 is None or sha256_file(dest) == sha256:
            log.info("model found in cache", extra={"fields": {"path": str(dest)}})
            return dest
        log.warning("cached model does not match the checksum; downloading again")
    if scheme == "s3":
        request = _s3_request(uri, s3 or S3Config())
    else:
        request = urllib.request.Request(uri, headers={"User-Agent": "kubemaas-runtime"})
    log.info("downloading model", extra={"fields": {"uri": uri, "dest": str(dest)}})
    _download(request, uri, dest, timeout_s, sha256, follow_redirects=scheme != "s3")
    return dest
