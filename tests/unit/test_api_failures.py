"""A write the API server keeps failing: a plain retry twice, then a Failure in the status with a
doubling delay, and a fresh count once a write goes through."""

from __future__ import annotations

import pytest

from kubemaas_operator.api_failures import MAX_DELAY_S, REPORT_FROM, failing_write
from kubemaas_operator.memory import Memory
from kubemaas_operator.writes import Retry


def _fail(memory: Memory, name: str = "m") -> float | None:
    failure = failing_write(memory, "ns", name, Retry("cannot apply the Deployment ns/m: 500"))
    assert failure.reason == "ApiError" and failure.phase == "Pending", failure
    assert "cannot apply the Deployment ns/m: 500" in failure.message
    return failure.retry_after


def test_retried_quietly_then_reported_with_a_doubling_delay() -> None:
    memory = Memory()
    for _ in range(REPORT_FROM - 1):
        with pytest.raises(Retry):
            _fail(memory)
    delays = [_fail(memory) for _ in range(5)]
    assert delays == [10.0, 20.0, 40.0, MAX_DELAY_S, MAX_DELAY_S]
    with pytest.raises(Retry):  # another model's count is its own
        _fail(memory, "other")


def test_a_write_that_goes_through_starts_the_count_again() -> None:
    memory = Memory()
    for _ in range(REPORT_FROM - 1):
        with pytest.raises(Retry):
            _fail(memory)
    memory.writes_went_through("ns", "m")
    with pytest.raises(Retry):
        _fail(memory)
    memory.forget_all("ns", "m")
    with pytest.raises(Retry):
        _fail(memory)
