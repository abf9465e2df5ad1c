"""The thread an engine runs in (the generating engine and the embedder): started with the
event loop it answers on, stopped by setting a flag under its condition."""

from __future__ import annotations

import asyncio
import threading


class EngineThread:
    def __init__(self, name: str) -> None:
        self._name = name
        self._wake = threading.Condition()  # guards what the event loop posts; wakes the thread
        self._stopped = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._wake:
            self._stopped = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        raise NotImplementedError
