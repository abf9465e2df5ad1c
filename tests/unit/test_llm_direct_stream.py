"""Token chunks written from the engine's delivery (protocol/openai_direct.py): which deltas a
stream hands its direct writer, and when the writer hands them back to the handler, on a real
asyncio transport over a socket pair."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any, cast

from kubemaas_runtime.llm.detok import Detokenizer
from kubemaas_runtime.llm.engine import Engine
from kubemaas_runtime.llm.request_stream import Delta, RequestStream
from kubemaas_runtime.llm.sampling import SamplingParams
from kubemaas_runtime.llm.scheduler import Sequence
from kubemaas_runtime.protocol.openai_direct import BUFFER_LIMIT, DirectTokens
from kubemaas_runtime.protocol.openai_schema import parse_request
from kubemaas_runtime.protocol.openai_stream import ChunkFormat


def delta(text: str, token: int, reason: str | None = None) -> Delta:
    return Delta(text, (token,), (), reason, 3, token, time.monotonic())


def stream() -> RequestStream:
    seq = Sequence(1, [1, 2, 3], SamplingParams(max_tokens=8), sink=lambda _: None,
                   detok=Detokenizer(None))
    return RequestStream(cast(Engine, None), seq)  # put() never calls the engine


async def read_all(s: RequestStream) -> list[Delta]:
    return [d async for d in s]


def test_a_direct_writer_takes_the_deltas_before_the_last() -> None:
    async def run() -> None:
        s, taken = stream(), []
        s.direct = lambda d: taken.append(d) is None
        reader = asyncio.ensure_future(read_all(s))
        await asyncio.sleep(0)
        for i in range(3):
            s.put(delta(f"t{i}", i))
        s.put(delta("", 3, "length"))  # the last one: the handler's
        assert [d.text for d in taken] == ["t0", "t1", "t2"]
        assert [d.finish_reason for d in await reader] == ["length"]
        assert s.finished and s.direct is None
    asyncio.run(run())


def test_once_the_writer_refuses_every_later_delta_queues_in_order() -> None:
    async def run() -> None:
        s, taken = stream(), []
        s.direct = lambda d: d.text != "t1" and taken.append(d) is None
        reader = asyncio.ensure_future(read_all(s))
        await asyncio.sleep(0)
        for i in range(4):
            s.put(delta(f"t{i}", i))
        s.put(delta("", 4, "stop"))
        assert [d.text for d in taken] == ["t0"]  # t1 refused: t2 and t3 queue behind it
        assert [d.text for d in await reader] == ["t1", "t2", "t3", ""]
    asyncio.run(run())


def test_nothing_is_written_directly_while_deltas_wait_for_the_handler() -> None:
    s, taken = stream(), []
    s.put(delta("t0", 0))  # no writer yet: queued
    s.direct = lambda d: taken.append(d) is None
    s.put(delta("t1", 1))  # behind t0, or the client would see t1 first
    s.put(RuntimeError("engine failed"))
    assert taken == [] and s.direct is None


def fmt(**fields: Any) -> ChunkFormat:
    req = parse_request({"messages": [{"role": "user", "content": "hi"}], "stream": True,
                         **fields}, True, 100)
    return ChunkFormat({"id": "chatcmpl-1", "created": 0, "model": "tiny"}, req, None)


def test_a_chunk_written_directly_is_the_handlers_chunk_framed_for_http() -> None:
    """Over a real socket: the bytes are one HTTP/1.1 chunk holding the event the handler
    writes for the same delta; the metrics' observer sees every delta."""
    async def run() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        observed: list[Delta] = []
        chunks = fmt()
        writer = DirectTokens(cast(asyncio.Transport, transport), chunks, observed.append)
        for d in (delta("héllo", 1), delta("", 2)):  # an incomplete character: empty text
            assert writer(d)
        await asyncio.sleep(0.05)
        got = theirs.recv(65536)
        want = b"".join(b"%x\r\n%b\r\n" % (len(c), c)
                        for c in (chunks.token("héllo", (), 0), chunks.token("", (), 0)))
        assert got == want and len(observed) == 2
        event = json.loads(chunks.token("héllo", (), 0)[len(b"data: "):])
        assert event["choices"][0]["delta"] == {"content": "héllo"}
        transport.close()
        theirs.close()
    asyncio.run(run())


def test_a_client_that_stops_reading_sends_the_deltas_back_to_the_handler() -> None:
    """The peer reads nothing: once the transport holds more than BUFFER_LIMIT unsent the
    writer refuses (the handler then waits for the client, as aiohttp's writer does); a
    closed connection is refused too."""
    async def run() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        for sock, opt in ((ours, socket.SO_SNDBUF), (theirs, socket.SO_RCVBUF)):
            sock.setsockopt(socket.SOL_SOCKET, opt, 4096)
        transport, _ = await loop.connect_accepted_socket(asyncio.Protocol, ours)
        writer = DirectTokens(cast(asyncio.Transport, transport), fmt(), lambda _: None)
        written = 0
        while writer(delta("x" * 200, written)):
            written += 1
            assert written < 10_000, "the writer never refused"
        assert transport.get_write_buffer_size() > BUFFER_LIMIT
        transport.close()
        assert not writer(delta("y", 0))
        theirs.close()
    asyncio.run(run())
