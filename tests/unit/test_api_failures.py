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


class _RefusingCluster:
    """patch_status always fails with `error`; Events are recorded."""

    def __init__(self, error: Exception) -> None:
        self.error = error
        self.events: list[tuple[str, str, str]] = []

    async def patch_status(self, *args: object) -> dict[str, object]:
        raise self.error

    async def post_event(self, involved: object, type_: str, reason: str,
                         message: str) -> None:
        self.events.append((type_, reason, message))


@pytest.fixture(autouse=True)
def _clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Memory's clock, moved on by _write past each retry's delay (a failing status write is
    held until then)."""
    from kubemaas_operator import memory as memory_module

    now = [1000.0]
    monkeypatch.setattr(memory_module.time, "monotonic", lambda: now[0])
    _CLOCK[:] = [now]
    return now


_CLOCK: list[list[float]] = []


def _write(cluster: _RefusingCluster, memory: Memory) -> Retry:
    retry = _write_now(cluster, memory)
    _CLOCK[0][0] += retry.delay  # the retry is due
    return retry


def _write_now(cluster: _RefusingCluster, memory: Memory) -> Retry:
    import asyncio

    from kubemaas_operator.status import StatusResult
    from kubemaas_operator.writes import write_status

    body = {"metadata": {"namespace": "ns", "name": "m", "uid": "u"}}
    result = StatusResult(status={"phase": "Ready"}, changed=True, events=[])
    with pytest.raises(Retry) as caught:
        asyncio.run(write_status(cluster, memory, body, result))  # type: ignore[arg-type]
    return caught.value


def test_a_refused_status_write_is_told_once_by_an_event_then_retried_quietly() -> None:
    from kubemaas_operator.k8s import ApiError

    said = ("modeldeployments.serving.kubemaas.io \"m\" is forbidden: ValidatingAdmissionPolicy "
            "'p' with binding 'p' denied request: frozen")
    cluster, memory = _RefusingCluster(ApiError(403, "Forbidden", said)), Memory()
    retries = [_write(cluster, memory) for _ in range(6)]
    assert [r.quiet for r in retries] == [True] * 6  # the first one is said, not by the handler
    assert [r.delay for r in retries] == [5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert len(cluster.events) == 1
    type_, reason, message = cluster.events[0]
    assert (type_, reason) == ("Warning", "StatusRefused") and "denied request: frozen" in message
    assert memory.wrote_status("ns", "m", {}, {}) == 6  # a write that goes through: count anew
    _write(cluster, memory)
    assert len(cluster.events) == 2  # refused again after that: told again


def test_a_failing_status_write_is_a_blip_twice_then_told() -> None:
    from kubemaas_operator.k8s import ApiError

    cluster, memory = _RefusingCluster(ApiError(503, "ServiceUnavailable", "overloaded")), Memory()
    retries = [_write(cluster, memory) for _ in range(4)]
    assert [r.quiet for r in retries] == [False, False, True, True]
    assert [r.delay for r in retries] == [5.0, 5.0, 5.0, 10.0]
    assert [e[1] for e in cluster.events] == ["StatusRefused"]


def test_a_reported_failure_is_held_until_its_retry_is_due(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from kubemaas_operator import memory as memory_module
    from kubemaas_operator.api_failures import held_failure

    now = [50.0]
    monkeypatch.setattr(memory_module.time, "monotonic", lambda: now[0])
    memory = Memory()
    for _ in range(2):
        with pytest.raises(Retry):
            failing_write(memory, "ns", "m", Retry("down", 5.0), ("Deployment", "m", "h1"))
    failure = failing_write(memory, "ns", "m", Retry("down", 5.0), ("Deployment", "m", "h1"))
    assert failure.reason == "ApiError" and failure.retry_after == 10.0
    now[0] += 4.0
    held = held_failure(memory, "ns", "m", ("Deployment", "m", "h1"))
    assert held is not None and held.message == failure.message and held.retry_after == 6.0
    assert held_failure(memory, "ns", "m", ("Deployment", "m", "h2")) is None  # a new manifest
    now[0] += 6.0
    assert held_failure(memory, "ns", "m", ("Deployment", "m", "h1")) is None  # due
    now[0] -= 6.0
    memory.writes_went_through("ns", "m")
    assert held_failure(memory, "ns", "m", ("Deployment", "m", "h1")) is None


def test_a_refused_status_write_is_not_asked_again_before_its_retry() -> None:
    """Each wake of the model (an event of it or of its children) wrote the refused status
    again; the retry's delay meant nothing."""
    from kubemaas_operator.k8s import ApiError

    cluster, memory = _RefusingCluster(ApiError(403, "Forbidden", "denied: frozen")), Memory()
    first = _write_now(cluster, memory)
    calls = []
    cluster.patch_status = lambda *a: calls.append(a)  # type: ignore[assignment,method-assign,misc,return-value]
    again = _write_now(cluster, memory)
    assert calls == [] and again.quiet and str(again) == str(first)
    assert 0 < again.delay <= first.delay
