"""bench/llm/loadgen.py against a real SSE server on 127.0.0.1 (chunked, as uvicorn and aiohttp
send it): token counting, TTFT/ITL, errors, and cutting a point at its time limit."""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench" / "llm"))

import loadgen

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _chunk(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def _event(obj: object) -> bytes:
    return b"data: " + (obj if isinstance(obj, bytes) else json.dumps(obj).encode()) + b"\n\n"


async def _read_request(reader: asyncio.StreamReader) -> dict[str, object]:
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return dict(json.loads(await reader.readexactly(length)))


def streaming(tokens: int, gap_s: float, usage: bool = True) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        body = await _read_request(reader)
        assert body["stream"] is True and body["max_tokens"] == tokens
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n")
        writer.write(_chunk(_event({"choices": [{"delta": {"role": "assistant"}}]})))
        for i in range(tokens):
            await asyncio.sleep(gap_s)
            writer.write(_chunk(_event({"choices": [{"delta": {"content": f"t{i}"}}]})))
            await writer.drain()
        if usage:
            writer.write(_chunk(_event({"choices": [], "usage": {
                "prompt_tokens": 7, "completion_tokens": tokens}})))
        writer.write(_chunk(_event(b"[DONE]")) + _chunk(b""))
        await writer.drain()
        writer.close()
    return handle


@asynccontextmanager
async def serve(handler: Handler) -> AsyncIterator[int]:
    tasks: set[asyncio.Task[None]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass  # the client went away (a cut point)
        finally:
            writer.close()

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
        await asyncio.sleep(0.01)  # let the transports finish closing


def run_point(handler: Handler, **kw: object) -> dict[str, object]:
    async def go() -> dict[str, object]:
        async with serve(handler) as port:
            args: dict[str, object] = {"concurrency": 2, "requests": 4, "warmup": 0,
                                       "max_seconds": 10.0, "max_tokens": 5, "timeout": 10.0}
            args.update(kw)
            return await loadgen.run_point(port, "/v1/chat/completions", "m",
                                           ["a", "b", "c", "d", "e", "f"], **args)  # type: ignore[arg-type]
    return asyncio.run(go())


def test_tokens_ttft_and_itl_from_the_stream() -> None:
    p = run_point(streaming(5, 0.01))
    assert (p["ok"], p["errors"], p["cut"], p["requests"]) == (4, 0, 0, 4)
    assert p["output_tokens"] == 20 and p["tokens_per_event"] == 1.0
    assert p["prompt_tokens_mean"] == 7
    assert p["sample_text"] == "t0t1t2t3t4"
    assert 8 <= float(p["ttft_p50_ms"]) < 500  # type: ignore[arg-type]
    assert 8 <= float(p["itl_p50_ms"]) < 500  # type: ignore[arg-type]


def test_without_usage_the_text_events_are_counted() -> None:
    p = run_point(streaming(5, 0.0, usage=False))
    assert p["ok"] == 4 and p["output_tokens"] == 20


def test_http_errors_and_error_events_are_errors() -> None:
    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async def mid_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(_chunk(_event({"choices": [{"delta": {"content": "x"}}]})))
        writer.write(_chunk(_event({"error": {"message": "boom"}})))
        writer.write(_chunk(_event(b"[DONE]")) + _chunk(b""))
        await writer.drain()
        writer.close()

    p = run_point(refuse)
    assert p["ok"] == 0 and p["errors"] == 4
    assert "HTTP 429" in str(p["error_samples"])
    p = run_point(mid_stream)
    assert p["ok"] == 0 and p["errors"] == 4 and "boom" in str(p["error_samples"])


def test_a_point_is_cut_at_its_time_limit_and_keeps_the_tokens_so_far() -> None:
    p = run_point(streaming(5, 0.3), max_seconds=0.5, requests=2)
    assert p["cut"] == 2 and p["ok"] == 0 and p["errors"] == 0
    assert p["output_tokens"] == 2  # one token each before the cut
    assert float(p["duration_s"]) < 2  # type: ignore[arg-type]


def test_percentile_interpolates_like_numpy() -> None:
    assert loadgen.percentile([], 50) is None
    assert loadgen.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert loadgen.percentile([0.0, 10.0], 99) == 9.9


def test_arrival_times_are_a_seeded_poisson_process() -> None:
    times = loadgen.arrival_times(4000, rate=50.0, seed=3)
    assert times == loadgen.arrival_times(4000, rate=50.0, seed=3) and times[0] == 0.0
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(g >= 0 for g in gaps)
    assert abs(sum(gaps) / len(gaps) - 0.02) < 0.002  # mean gap 1/rate
    assert loadgen.arrival_times(10, rate=50.0, seed=4) != times[:10]


def test_open_loop_sends_each_request_when_it_is_due() -> None:
    p = run_point(streaming(5, 0.0), requests=4, concurrency=4, request_rate=10.0, seed=1)
    assert p["ok"] == 4 and p["request_rate"] == 10.0
    due = [t * 1000 for t in loadgen.arrival_times(4, 10.0, seed=1)]
    sent = [p["timelines"][i][0] for i in range(4)]  # type: ignore[index]
    assert all(d - 5 <= s < d + 100 for d, s in zip(due, sent, strict=True)), (due, sent)


def test_open_loop_holds_to_the_concurrency_cap() -> None:
    # all three due at once, one seat, each answer ~100 ms: sent one after another
    p = run_point(streaming(5, 0.02), requests=3, concurrency=1, request_rate=1000.0)
    sent = sorted(p["timelines"][i][0] for i in range(3))  # type: ignore[index]
    assert p["ok"] == 3 and all(b - a >= 50 for a, b in itertools.pairwise(sent)), sent
