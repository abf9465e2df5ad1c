"""One file: resume the partial file from its size, hash as the bytes are written, fsync, verify,
and only then rename it to its final name. A full disk is ``DiskFull`` with the numbers."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import IO, Protocol

from .errors import DISK_FULL, DOWNLOAD_ERROR, FetchError
from .layout import partial_path, validator_path
from .plan import RemoteFile
from .verify import Hashes, hash_prefix

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class Source(Protocol):
    """A place files come from (http, s3, hf)."""

    def plan(self) -> tuple[str | None, tuple[RemoteFile, ...]]:
        """(resolved revision, files)."""

    def download(self, spec: RemoteFile, out: HashingWriter, offset: int,
                 cancel: threading.Event) -> str | None:
        """Write the file's bytes from ``offset`` on into ``out``; may return a sha256 the
        server vouched for while answering (S3 object metadata)."""


class TooLong(FetchError):
    """The server sent more bytes than the listing's size: a DownloadError (the object may have
    changed since the listing; the next attempt lists again), and the partial file is deleted,
    since a copy cut at the listed size is not the file either."""


class HashingWriter:
    """The partial file as the sources see it: every write is hashed and counted, and nothing is
    written past the size the listing gave (a broken or hostile server, or a gzip body that
    httpx inflates, would otherwise fill the shared cache volume)."""

    def __init__(self, raw: IO[bytes], hashes: Hashes, position: int,
                 cancel: threading.Event, validator_file: Path | None = None) -> None:
        self.raw = raw
        self.hashes = hashes
        self.position = position
        self.cancel = cancel
        self.validator_file = validator_file
        self.validator: str | None = None  # of the bytes already there (None: not known)
        if validator_file is not None and position:
            with contextlib.suppress(OSError):  # none kept: resume without If-Range
                self.validator = validator_file.read_text().strip() or None

    def remember(self, validator: str | None) -> None:
        """What the bytes about to be written come with (an ETag): a later resume asks for the
        rest only if the object still has it (If-Range), else starts over."""
        self.validator = validator
        if self.validator_file is None:
            return
        if validator is None:
            self.validator_file.unlink(missing_ok=True)
        else:
            self.validator_file.parent.mkdir(parents=True, exist_ok=True)
            self.validator_file.write_text(validator)

    def write(self, data: bytes | memoryview) -> int:
        if self.cancel.is_set():
            raise FetchError(DOWNLOAD_ERROR, "cancelled: another file failed")
        size = self.hashes.spec.size
        if size is not None and self.position + len(data) > size:
            raise TooLong(DOWNLOAD_ERROR, f"{self.hashes.spec.path}: the server sent more than "
                          f"the {size} bytes the listing gave")
        view = memoryview(data)
        while view:
            n = self.raw.write(view)
            if n is None:
                continue
            view = view[n:]
        self.hashes.update(data)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def seek(self, pos: int, whence: int = 0) -> int:
        """Only a rewind to 0 is supported: a server that ignored the Range request."""
        if whence != 0 or pos != 0:
            raise OSError("only a rewind to the start is supported")
        self.raw.truncate(0)
        self.raw.seek(0)
        self.hashes.reset()
        self.position = 0
        return 0

    def truncate(self, size: int | None = None) -> int:
        if size not in (None, 0) or self.position != 0:
            raise OSError("only truncation of a rewound file is supported")
        self.raw.truncate(0)
        return 0

    def flush(self) -> None:
        self.raw.flush()


def disk_full(dest: Path, needed: int | None, cause: str) -> FetchError:
    """DiskFull with the numbers: bytes still needed (None: the server did not say) and free."""
    usage = shutil.disk_usage(dest) if dest.exists() else None
    free = usage.free if usage else 0
    size = f", filesystem size {usage.total} bytes" if usage else ""
    need = f"{needed} more bytes needed" if needed is not None else "size not known in advance"
    return FetchError(DISK_FULL, f"no space left on {dest}: {need}, {free} bytes free{size} "
                      f"({cause})", bytesNeeded=needed, bytesFree=free,
                      bytesCapacity=usage.total if usage else None)


def known_sums(spec: RemoteFile) -> dict[str, str]:
    """The sums besides sha256 that the source vouched for, as the journal records them: a later
    attempt trusts a journal line only when they all still match the listing's."""
    sums = {"md5": spec.md5, "gitSha1": spec.git_sha1}
    return {k: v.lower() for k, v in sums.items() if v}


def fetch_file(source: Source, spec: RemoteFile, dest: Path, cancel: threading.Event,
               beat: Callable[[], None] | None = None) -> dict[str, object]:
    """Download one file into ``dest``; returns its record (path, size, sha256)."""
    part = partial_path(dest, spec.path)
    final = dest / spec.path
    part.parent.mkdir(parents=True, exist_ok=True)
    offset = part.stat().st_size if part.exists() else 0
    if spec.size is not None and offset > spec.size:
        part.unlink()
        offset = 0
    hashes = Hashes(spec)
    if offset:
        hash_prefix(part, hashes, offset, beat)
    try:
        with part.open("ab", buffering=0) as raw:
            out = HashingWriter(raw, hashes, offset, cancel, validator_path(dest, spec.path))
            vouched = None
            # else all there, only not renamed; a listed size of 0 is still asked for, so a
            # file that is not empty is caught (TooLong) rather than taken as empty
            if spec.size is None or offset < spec.size or spec.size == 0:
                vouched = source.download(spec, out, offset, cancel)
            os.fsync(raw.fileno())
    except TooLong:
        part.unlink(missing_ok=True)
        raise
    except OSError as exc:
        if exc.errno in NO_SPACE:
            got = part.stat().st_size if part.exists() else 0
            needed = spec.size - got if spec.size is not None else None
            raise disk_full(dest, needed, f"writing {spec.path} after {got} bytes") from None
        raise
    if spec.size is not None and out.position != spec.size:
        raise FetchError(DOWNLOAD_ERROR, f"{spec.path}: got {out.position} of {spec.size} bytes")
    try:
        sha = hashes.check(vouched)
    except FetchError:
        part.unlink(missing_ok=True)  # never resume from bytes that failed verification
        raise
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(part, final)
    return {"path": spec.path, "size": out.position, "sha256": sha, **known_sums(spec)}
