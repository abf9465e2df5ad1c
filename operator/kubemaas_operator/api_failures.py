"""A write of a model's objects that the API server keeps failing: an admission webhook that is
down or times out (failurePolicy Fail), an overloaded or failing API server (429, 5xx), a
conflict that does not clear. Once is a blip: the write is tried again in a few seconds and the
model's status is left alone. From the REPORT_FROM-th failure in a row the status says so
(Ready=False, reason ApiError, the API server's own words; Degraded while replicas serve), and
the write is tried again after a delay that doubles up to MAX_DELAY_S, until it goes through."""

from __future__ import annotations

from .memory import Memory
from .status import Failure
from .writes import Retry

REPORT_FROM = 3
MAX_DELAY_S = 60.0


def failing_write(memory: Memory, namespace: str, name: str, retry: Retry) -> Failure:
    """The model's failure once the write has failed REPORT_FROM times in a row; before that,
    `retry` is raised again (a plain retry)."""
    streak = memory.write_failed(namespace, name)
    if streak < REPORT_FROM:
        raise retry
    delay = min(retry.delay * 2 ** (streak - REPORT_FROM + 1), MAX_DELAY_S)
    return Failure("ApiError", f"{retry}; the API server failed this write {REPORT_FROM} or more "
                   f"times in a row, and it is tried again (at least once a minute)",
                   phase="Pending", retry_after=delay)
