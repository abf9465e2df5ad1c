"""A write that the API server keeps failing: an admission webhook that is down or times out
(failurePolicy Fail), an overloaded or failing API server (429, 5xx), a conflict that does not
clear. Once is a blip: the write is tried again in a few seconds and the status is left alone.
From the REPORT_FROM-th failure in a row the status says so (reason ApiError, the API server's
own words; a ModelDeployment is Degraded while its replicas serve), and the write is tried again
after a delay that doubles up to MAX_DELAY_S, until it goes through. For ModelDeployments
(failing_write) and ModelCaches (modelcache/handlers.py)."""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable

from .memory import Memory
from .status import Failure
from .writes import MAX_DELAY_S, REPORT_FROM, Retry, doubling_delay

__all__ = ["MAX_DELAY_S", "REPORT_FROM", "failing_message", "failing_write", "held_failure",
           "report_delay"]


def report_delay(streak: int, delay: float) -> float | None:
    """After `streak` failures in a row of a write first retried after `delay`: None while it
    is a blip (retry after `delay`, say nothing), else when to try again (reported)."""
    if streak < REPORT_FROM:
        return None
    return doubling_delay(2.0 * delay, streak, REPORT_FROM)


def failing_message(error: str) -> str:
    return (f"{error}; the API server failed this write {REPORT_FROM} or more times in a row, "
            "and it is tried again (at least once a minute)")


def failing_write(memory: Memory, namespace: str, name: str, retry: Retry,
                  writing: Hashable = None) -> Failure:
    """The model's failure once the write has failed REPORT_FROM times in a row; before that,
    `retry` is raised again (a plain retry). With `writing` (what the write was: the manifests),
    the failure is held until its retry is due (held_failure)."""
    delay = report_delay(memory.write_failed(namespace, name), retry.delay)
    if delay is None:
        raise retry
    failure = Failure("ApiError", failing_message(str(retry)), phase="Pending", retry_after=delay)
    if writing is not None:
        memory.hold(namespace, name, writing, delay, failure)
    return failure


def held_failure(memory: Memory, namespace: str, name: str, writing: Hashable) -> Failure | None:
    """The reported failure of the same write while its retry is not yet due: the model is not
    asked to write again before then, whatever wakes it (an event of the model or of its
    children used to, a failing write each, and the delays above meant nothing)."""
    held = memory.held(namespace, name, writing)
    if held is None:
        return None
    failure, left = held
    return dataclasses.replace(failure, retry_after=left) if isinstance(failure, Failure) else None
