"""A per-ModelDeployment work queue: coalesces bursts of events into one reconcile at a time.

Many events (a Deployment's status, each of its pods, the resync timer) ask for the same model to
be reconciled. `enqueue` queues a run unless one is already waiting (it will read the indexes when
its turn comes, so it sees every event before it); runs of one key never overlap.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable

log = logging.getLogger("kubemaas.queue")


class WorkQueue:
    def __init__(self, worker: Callable[[Hashable], Awaitable[float | None]],
                 concurrency: int = 64, on_add: Callable[[], None] | None = None,
                 on_start: Callable[[float], None] | None = None,
                 retry_s: float | None = None) -> None:
        """`on_add` is called for each run queued, `on_start(seconds waited)` as it starts
        (the operator's metrics). `retry_s`: a run that raised is queued again after that many
        seconds; None where a periodic resync of its own queues every key anyway."""
        self._worker = worker
        self._retry_s = retry_s
        self._on_add = on_add
        self._on_start = on_start
        self._since: dict[Hashable, float] = {}  # queued key -> monotonic time it was queued
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._queued: set[Hashable] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: dict[Hashable, asyncio.TimerHandle] = {}
        self._slots = asyncio.Semaphore(concurrency)

    def lock(self, key: Hashable) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    def forget(self, key: Hashable) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            self._locks.pop(key, None)

    def enqueue(self, key: Hashable, delay: float = 0.0) -> None:
        if delay > 0:
            old = self._timers.get(key)
            loop = asyncio.get_running_loop()
            when = loop.time() + delay
            if old is not None and old.when() <= when:
                return
            if old is not None:
                old.cancel()
            self._timers[key] = loop.call_at(when, self._fire, key)
            return
        if key in self._queued:
            return  # a run that has not started yet will see the latest state
        self._queued.add(key)
        self._since[key] = time.monotonic()
        if self._on_add is not None:
            self._on_add()
        task = asyncio.get_running_loop().create_task(self._run(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fire(self, key: Hashable) -> None:
        self._timers.pop(key, None)
        self.enqueue(key)

    async def _run(self, key: Hashable) -> None:
        async with self._slots, self.lock(key):
            self._queued.discard(key)  # from here on, a new event queues one more run
            since = self._since.pop(key, None)
            if self._on_start is not None and since is not None:
                self._on_start(time.monotonic() - since)
            try:
                again = await self._worker(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._retry_s is None:
                    log.exception("reconcile of %s failed; the resync will retry", key)
                else:
                    log.exception("reconcile of %s failed; retrying in %gs", key, self._retry_s)
                again = self._retry_s
        if again:
            self.enqueue(key, again)

    def depth(self) -> int:
        """Runs queued and not started yet."""
        return len(self._queued)

    def oldest_age(self) -> float:
        """Seconds the oldest queued, not started run has waited (0 when none)."""
        since = [self._since[k] for k in self._queued if k in self._since]
        return time.monotonic() - min(since) if since else 0.0

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
