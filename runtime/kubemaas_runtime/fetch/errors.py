"""Why a fetch failed: a reason the operator can show (``Stalled``, ``DiskFull``, …), a message a
person can act on, and whether trying again may help."""

from __future__ import annotations

from typing import Any

STALLED = "Stalled"
DISK_FULL = "DiskFull"
CHECKSUM_MISMATCH = "ChecksumMismatch"
NOT_FOUND = "NotFound"
ACCESS_DENIED = "AccessDenied"
INVALID_SOURCE = "InvalidSource"
DOWNLOAD_ERROR = "DownloadError"
NOT_WRITABLE = "NotWritable"

# worth another attempt (with backoff); the others fail at once
TRANSIENT = frozenset({STALLED, DOWNLOAD_ERROR})


class FetchError(Exception):
    def __init__(self, reason: str, message: str, **details: Any) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.details = details
        self.http_status: int | None = None  # the answer's status, where one caused it

    @property
    def transient(self) -> bool:
        return self.reason in TRANSIENT

    def to_json(self) -> dict[str, Any]:
        return {"reason": self.reason, "message": self.message, **self.details}
