"""What the engine hands a request: ``Delta``s, one per step that produced something for it,
read on the event loop through the request's ``RequestStream``."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .sampling import TokenLogprobs

if TYPE_CHECKING:
    from .engine import Engine
    from .scheduler import Sequence


class ShuttingDown(Exception):
    """The request was still running when the server's drain timed out (the caller answers
    503)."""


@dataclass(frozen=True)
class Delta:
    """What one step produced for one request."""

    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[TokenLogprobs, ...]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    at: float  # time.monotonic() when produced
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache at admission
    # with params.prompt_logprobs, on a request's first delta: prompt tokens 1..'s logprobs
    prompt_logprobs: tuple[TokenLogprobs, ...] | None = None
    scheduled_at: float | None = None  # on the last delta: when it was first admitted to run
    # on the last delta: the stop token id or stop string that ended it (vLLM's stop_reason;
    # None for EOS, the length or a complete grammar)
    stop_reason: int | str | None = None


class RequestStream:
    """The event loop's end of one request: the engine's deltas, read as they come.

    A deque and one waiter future rather than an ``asyncio.Queue``: on small models the engine
    hands every stream a delta every few milliseconds, and the reader takes all that are ready
    at once (``batches``)."""

    def __init__(self, engine: Engine, seq: Sequence) -> None:
        self._engine = engine
        self.seq = seq
        self._items: deque[Delta | BaseException] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self.done = False       # no more deltas will be read
        self.finished = False   # the engine's last delta was read
        self.arrival = seq.arrival
        # the reader's writer of deltas as they come (protocol/openai_direct.py): takes a
        # delta that is not the last while none is queued, or says False, and is dropped
        self.direct: Callable[[Delta], bool] | None = None

    def put(self, item: Delta | BaseException) -> None:
        """Event loop: a delta (or the engine's failure) for this request."""
        if self.direct is not None:
            if (not self._items and isinstance(item, Delta) and item.finish_reason is None
                    and self.direct(item)):
                return
            self.direct = None  # from here on every delta queues, in order
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def cancel(self) -> None:
        if not self.done:
            self.done = True
            self._stop_work()

    def fail(self, error: BaseException) -> None:
        """Event loop: end the request with ``error`` (read after the deltas before it) and stop
        its work now, whether or not its reader is reading."""
        if not self.done:
            self.put(error)
            self._stop_work()

    def _stop_work(self) -> None:
        self._engine.abort(self.seq)  # its KV blocks go back at once

    async def batches(self) -> AsyncIterator[list[Delta]]:
        """Lists of the deltas that are ready, up to the finishing one; an engine failure is
        raised after the deltas before it."""
        while not self.done:
            if not self._items:
                self._waiter = asyncio.get_running_loop().create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None
            batch: list[Delta] = []
            failure: BaseException | None = None
            while self._items and not self.done:
                item = self._items.popleft()
                if isinstance(item, BaseException):
                    failure = item
                    self.done = True
                    break
                batch.append(item)
                if item.finish_reason is not None:
                    self.done = self.finished = True
            if batch:
                yield batch
            if failure is not None:
                raise failure

    async def __aiter__(self) -> AsyncIterator[Delta]:
        async for batch in self.batches():
            for delta in batch:
                yield delta
