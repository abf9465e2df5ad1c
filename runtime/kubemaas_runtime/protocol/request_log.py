"""What both protocol servers share of a request's id and its record (``--log-requests``).

An id is the caller's ``X-Request-Id`` header (what gateways and Envoy set) when it is 1 to 256
visible ASCII characters: it goes back out in a header, where a line break or a non-ASCII byte
could not. A record is one ``info`` line of the ``kubemaas.runtime.requests`` logger when a
request has ended; the probes and ``/metrics`` have none (a kubelet probes every few seconds).
"""

from __future__ import annotations

import logging
import re
import time
from typing import Any

HEADER = "X-Request-Id"
UNLOGGED = frozenset({"/health", "/v2/health/live", "/v2/health/ready", "/metrics"})
CLIENT_GONE = 499  # nginx's code: the client closed the connection before the answer was whole
_ID = re.compile(r"[\x21-\x7e]{1,256}")

log = logging.getLogger("kubemaas.runtime.requests")


def valid_id(value: str) -> bool:
    return _ID.fullmatch(value) is not None


def write_record(method: str, path: str, status: int, started: float,
                 fields: dict[str, Any] | None = None) -> None:
    """The request's one record (``started``: its ``time.monotonic()`` at arrival)."""
    log.info("request", extra={"fields": {
        "method": method, "path": path, "status": status,
        "seconds": round(time.monotonic() - started, 6), **(fields or {})}})
