"""The work queue coalesces bursts and never overlaps runs of one key; settings from env."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

import pytest

from kubemaas_operator.config import Settings, SettingsError
from kubemaas_operator.workqueue import WorkQueue


def test_burst_is_coalesced_and_runs_never_overlap() -> None:
    runs: list[Hashable] = []
    active: set[Hashable] = set()

    async def worker(key: Hashable) -> float | None:
        assert key not in active, "two runs of one key overlapped"
        active.add(key)
        await asyncio.sleep(0.01)
        runs.append(key)
        active.discard(key)
        return None

    async def main() -> None:
        q = WorkQueue(worker)
        for _ in range(50):
            q.enqueue("a")
        q.enqueue("b")
        await asyncio.sleep(0.005)
        for _ in range(50):
            q.enqueue("a")  # arrives while "a" runs: exactly one more run
        await asyncio.sleep(0.1)
        await q.close()

    asyncio.run(main())
    assert runs.count("a") == 2 and runs.count("b") == 1


def test_requeue_after_and_errors_do_not_kill_the_queue() -> None:
    calls: list[str] = []

    async def worker(key: Hashable) -> float | None:
        calls.append(str(key))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return 0.02 if len(calls) == 2 else None

    async def main() -> None:
        q = WorkQueue(worker)
        q.enqueue("k")
        await asyncio.sleep(0.01)
        q.enqueue("k")
        await asyncio.sleep(0.1)
        await q.close()

    asyncio.run(main())
    assert calls == ["k", "k", "k"]


def test_settings_from_env() -> None:
    s = Settings.from_env({"KUBEMAAS_OPERATOR_RESYNC_S": "5", "KUBEMAAS_OPERATOR_NAMESPACE": "x",
                           "KUBEMAAS_OPERATOR_API_WORKERS": "4"})
    assert s.resync_s == 5.0 and s.namespace == "x" and s.api_workers == 4
    assert Settings.from_env({}).namespace  # a default namespace
    with pytest.raises(SettingsError, match="KUBEMAAS_OPERATOR_RESYNC_S"):
        Settings.from_env({"KUBEMAAS_OPERATOR_RESYNC_S": "soon"})
    # more often than each second: every model resynced a thousand times a second
    for var in ("KUBEMAAS_OPERATOR_RESYNC_S", "KUBEMAAS_OPERATOR_GATEWAY_DISCOVERY_S"):
        with pytest.raises(SettingsError, match=var):
            Settings.from_env({var: "0.001", "KUBEMAAS_OPERATOR_NAMESPACE": "x"})
