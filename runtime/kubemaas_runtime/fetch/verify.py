"""Checksums computed while the bytes are written: sha256 always (it is recorded), plus whatever
the source can vouch for — an S3 single-part ETag (md5) or the Hub's git blob id (sha1 of
``blob <size>\\0`` + content). A mismatch names both sums."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from .errors import CHECKSUM_MISMATCH, FetchError
from .plan import RemoteFile

CHUNK = 1 << 20


class Hashes:
    def __init__(self, spec: RemoteFile) -> None:
        self.spec = spec
        self.reset()

    def reset(self) -> None:
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False) if self.spec.md5 else None
        self.git = None
        if self.spec.git_sha1 and self.spec.size is not None:
            self.git = hashlib.sha1(usedforsecurity=False)
            self.git.update(b"blob %d\0" % self.spec.size)

    def update(self, data: bytes | memoryview) -> None:
        self.sha256.update(data)
        if self.md5 is not None:
            self.md5.update(data)
        if self.git is not None:
            self.git.update(data)

    def check(self, expected_sha256: str | None = None) -> str:
        """The sha256; raises ChecksumMismatch when a known sum differs."""
        actual = self.sha256.hexdigest()
        want = (expected_sha256 or self.spec.sha256 or "").lower() or None
        pairs: list[tuple[str, str | None, Any]] = [
            ("sha256", want, self.sha256),
            ("md5", self.spec.md5, self.md5),
            ("git-sha1", self.spec.git_sha1, self.git)]
        for kind, expected, digest in pairs:
            if expected and digest is not None and digest.hexdigest() != expected.lower():
                got = digest.hexdigest()
                raise FetchError(
                    CHECKSUM_MISMATCH,
                    f"checksum mismatch for {self.spec.path}: expected {kind} {expected}, "
                    f"got {got}", file=self.spec.path, algorithm=kind, expected=expected,
                    actual=got)
        return actual


def hash_prefix(path: Path, hashes: Hashes, length: int, beat: Any = None) -> None:
    """Feed the first ``length`` bytes of a partial file to ``hashes`` (a resumed download)."""
    left = length
    with path.open("rb") as fh:
        while left > 0:
            chunk = fh.read(min(CHUNK * 16, left))
            if not chunk:
                break
            hashes.update(chunk)
            left -= len(chunk)
            if beat is not None:
                beat()
