"""s3://bucket/prefix (every object below it) or s3://bucket/key (one object), through obstore
(the Rust ``object_store`` crate: its own SigV4, retries, streaming ranged GETs).

Why obstore and not boto3: botocore pins ``python-dateutil<3`` while the kubernetes client the
operator uses needs ``>=3``; both live in one virtualenv here. obstore has no Python dependencies.

Credentials and endpoint: ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``/
``AWS_REGION`` and ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL`` from the environment, or files of
those names in ``--s3-credentials-dir`` (a mounted Secret). Checksums: a single-part ETag is the
object's md5; ``x-amz-meta-sha256`` (user metadata ``sha256``) is checked when present."""

from __future__ import annotations

import os
import re
import threading
import urllib.parse
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

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
_MD5 = re.compile(r'^"?([0-9a-fA-F]{32})"?$')
_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION",
         "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")


def s3_settings(environ: Mapping[str, str], credentials_dir: str | None) -> dict[str, str]:
    values = {k: environ[k] for k in (*_KEYS, "AWS_DEFAULT_REGION") if environ.get(k)}
    if credentials_dir:
        for key in _KEYS:
            path = Path(credentials_dir, key)
            if path.is_file():
                values[key] = path.read_text().strip()
    return values


def etag_md5(etag: str | None) -> str | None:
    """The md5 an ETag stands for (single-part uploads); None for multipart ETags (``…-N``)."""
    match = _MD5.match(etag or "")
    return match.group(1).lower() if match else None


# obstore raises few exception types (NotFound and PermissionDenied only for object requests; a
# listing's 404 or 403 is a GenericError) and has no status attribute, but each error carries
# object_store's Debug form of its source: the HTTP status, or the kind of HTTP failure, is read
# from there, never from the message's free text (a URL with "404" in it, "retry_timeout: 5s")
_STATUS = re.compile(r"inner: Status \{\s*status: (\d{3}),")
_HTTP_KIND = re.compile(r"HttpError \{\s*kind: (\w+),")


def s3_error(exc: BaseException, what: str, stall_timeout: float) -> FetchError:
    from obstore import exceptions as ox

    full = str(exc)
    text = full.splitlines()[0] if full else type(exc).__name__
    found = _STATUS.search(full)
    status = int(found.group(1)) if found else None
    kind = _HTTP_KIND.search(full)
    if isinstance(exc, ox.NotFoundError) or status == 404:
        return FetchError(NOT_FOUND, f"{what}: not found")
    if isinstance(exc, (ox.PermissionDeniedError, ox.UnauthenticatedError)) or \
            status in (401, 403):
        return FetchError(ACCESS_DENIED, f"{what}: access denied ({text})")
    if status is not None and 400 <= status < 500 and status not in (408, 429):
        # the request as configured is refused (a wrong region, a malformed key): again is no help
        return FetchError(INVALID_SOURCE, f"{what}: HTTP {status} ({text})")
    if kind is not None and kind.group(1) == "Timeout":
        return FetchError(STALLED, f"{what}: no data for {stall_timeout:g} s",
                          stallTimeoutSeconds=stall_timeout)
    return FetchError(DOWNLOAD_ERROR, f"{what}: {text}")


class S3Source:
    def __init__(self, uri: str, stall_timeout: float, settings: Mapping[str, str]) -> None:
        from obstore.store import S3Store

        parsed = urllib.parse.urlsplit(uri)
        self.uri = uri
        self.bucket = parsed.netloc
        self.key = urllib.parse.unquote(parsed.path.lstrip("/"))
        if not self.bucket:
            raise FetchError(INVALID_SOURCE, f"invalid S3 URI {uri!r}: expected s3://bucket/prefix")
        self.timeout = stall_timeout
        endpoint = settings.get("AWS_ENDPOINT_URL_S3") or settings.get("AWS_ENDPOINT_URL")
        region = settings.get("AWS_REGION") or settings.get("AWS_DEFAULT_REGION") or "us-east-1"
        config: Any = {"region": region}
        if endpoint:
            config["endpoint"] = endpoint
        if settings.get("AWS_ACCESS_KEY_ID") and settings.get("AWS_SECRET_ACCESS_KEY"):
            config["access_key_id"] = settings["AWS_ACCESS_KEY_ID"]
            config["secret_access_key"] = settings["AWS_SECRET_ACCESS_KEY"]
            if settings.get("AWS_SESSION_TOKEN"):
                config["session_token"] = settings["AWS_SESSION_TOKEN"]
        else:
            config["skip_signature"] = True
        client: Any = {"allow_http": bool(endpoint and endpoint.startswith("http://")),
                  "timeout": timedelta(days=1),  # a whole GET: big files take long
                  "connect_timeout": timedelta(seconds=stall_timeout),
                  "read_timeout": timedelta(seconds=stall_timeout)}
        self.store = S3Store(self.bucket, config=config, client_options=client,
                             retry_config={"max_retries": 2,
                                           "retry_timeout": timedelta(seconds=stall_timeout)})

    def _file(self, key: str, rel: str, meta: Mapping[str, Any]) -> RemoteFile:
        return RemoteFile(path=safe_rel(rel, self.uri), size=int(meta["size"]),
                          md5=etag_md5(meta.get("e_tag")), etag=meta.get("e_tag"), locator=key)

    def plan(self) -> tuple[str | None, tuple[RemoteFile, ...]]:
        import obstore as obs

        prefix = self.key.rstrip("/") + "/" if self.key else ""
        files: list[RemoteFile] = []
        try:
            for batch in obs.list(self.store, prefix=prefix or None, chunk_size=1000):
                for meta in batch:
                    key = meta["path"]
                    if not key.startswith(prefix):  # a listing we did not ask for
                        raise FetchError(INVALID_SOURCE, f"the listing of {self.uri} holds "
                                         f"{key[:300]!r}, which is not under {prefix!r}")
                    if not key.endswith("/"):
                        files.append(self._file(key, key[len(prefix):], meta))
            if not files and self.key and not self.key.endswith("/"):
                meta = obs.head(self.store, self.key)  # one object, not a prefix
                files.append(self._file(self.key, os.path.basename(self.key), meta))
        except FetchError:
            raise
        except Exception as exc:
            raise s3_error(exc, f"listing {self.uri}", self.timeout) from None
        if not files:
            raise FetchError(NOT_FOUND, f"no objects under {self.uri}")
        return None, tuple(sorted(files, key=lambda f: f.path))

    def download(self, spec: RemoteFile, out: HashingWriter, offset: int,
                 cancel: threading.Event) -> str | None:
        import obstore as obs

        what = f"GET s3://{self.bucket}/{spec.locator}"
        if offset and out.validator is not None and out.validator != spec.etag:
            out.seek(0)  # the partial file's bytes are of another version of the object
            offset = 0
        out.remember(spec.etag)
        try:
            options: dict[str, Any] = {"range": {"offset": offset}} if offset else {}
            result = obs.get(self.store, spec.locator, options=options)  # type: ignore[arg-type]
            vouched = result.attributes.get("sha256")
            for chunk in result.stream(min_chunk_size=CHUNK):
                out.write(chunk)
                if cancel.is_set():
                    break
        except (FetchError, OSError):
            raise
        except Exception as exc:
            raise s3_error(exc, what, self.timeout) from None
        return vouched.lower() if isinstance(vouched, str) else None
