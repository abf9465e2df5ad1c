"""Token chunks written straight from the engine's delivery, for the common streamed request.

The engine hands the event loop every step's deltas in one callback (llm/engine.py). Read the
usual way, each stream's delta wakes its handler's task, which resumes through two async
iterators and aiohttp's write coroutine to write one chunk. ``DirectTokens`` writes the chunk
in that callback instead: the metrics' observation, the chunk's bytes (``ChunkFormat.token``)
framed as one HTTP/1.1 chunk, one ``transport.write``. The loop's CPU per streamed token went
from 52 to 31 µs (tiny model, 16 streams, server on one slow core; docs/llm-benchmark-log.md).

Only a delta that is not a stream's last goes this way, and only while nothing is queued for
the handler and the client keeps up: the last delta (the finishing chunk, usage, ``[DONE]``,
the end of the body) and everything after a delta it could not take go through the handler as
before (``RequestStream.put``), so the order of the chunks never changes, a slow client gets
aiohttp's back-pressure, and aiohttp ends the response itself. It writes to the connection's
transport only after aiohttp has written the headers and a first chunk, and only on a chunked
response without compression: the framing (``<size>\\r\\n<data>\\r\\n``) is HTTP's, the same
aiohttp's writer produces.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import HttpVersion11, web

from ..llm.request_stream import Delta

if TYPE_CHECKING:
    from .openai_stream import ChunkFormat

log = logging.getLogger("kubemaas.runtime.openai")

# Bytes the connection's transport may hold unsent before the deltas queue for the handler
# (which then waits for the client, as aiohttp's writer does past its own 64 KiB).
BUFFER_LIMIT = 0x10000


class DirectTokens:
    """Writes one stream's token chunks on its connection; False: the handler takes it."""

    def __init__(self, transport: asyncio.Transport, fmt: ChunkFormat,
                 observe: Callable[[Delta], None]) -> None:
        self.transport = transport
        self.fmt = fmt
        self.observe = observe

    def __call__(self, delta: Delta) -> bool:
        transport = self.transport
        if transport.is_closing() or transport.get_write_buffer_size() > BUFFER_LIMIT:
            return False
        try:
            self.observe(delta)
            # as the handler does: a chunk per token, its text empty while a character is
            # incomplete
            if delta.text or delta.token_ids:
                data = self.fmt.token(delta.text, (), 0)
                transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        except Exception:  # the handler reads it again and reports the failure in the stream
            log.exception("writing a token chunk failed")
            return False
        return True


def chunked(request: web.BaseRequest, resp: web.StreamResponse) -> bool:
    """Makes ``resp`` (not yet prepared) chunked where HTTP/1.1 allows it (aiohttp would choose
    it anyway for a body of unknown length); False on HTTP/1.0."""
    if request.version < HttpVersion11:
        return False
    resp.enable_chunked_encoding()
    return True


def direct_tokens(request: web.BaseRequest, fmt: ChunkFormat,
                  observe: Callable[[Delta], None]) -> DirectTokens | None:
    """The writer for a prepared chunked response whose chunks ``fmt`` renders from the text
    alone (no logprobs, token ids or running usage); None: the handler writes every chunk."""
    transport = request.transport
    if not fmt.fast or transport is None:
        return None
    return DirectTokens(transport, fmt, observe)
