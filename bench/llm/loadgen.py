"""An OpenAI streaming load generator: N requests in flight, or arrivals at a rate; TTFT and ITL.

    python bench/llm/loadgen.py --port P --model NAME --prompts prompts.json \\
        --concurrency 16 --requests 48 --max-seconds 60 --max-tokens 32 --out point.json

Standard library only (asyncio streams, HTTP/1.1, one connection per request), so it starts in a
fraction of a second and costs little CPU on the load core; the harness runs it under
``taskset -c 1`` while the server has core 0. Every request is a streamed
``POST /v1/chat/completions`` (greedy, ``max_tokens``, ``stream_options.include_usage``) with the
next prompt of the list, so every server answers the same prompts in the same order.

Closed loop by default: ``--concurrency`` workers, each sending its next request when its last
one ends. ``--request-rate R`` (> 0) makes it an open loop instead, as vLLM's benchmark client
does: requests are sent at the times of a Poisson process of R per second (exponential gaps,
seeded by ``--seed``, so every server gets the same schedule), whether or not earlier ones have
ended, with at most ``--concurrency`` in flight (a request due while that many are in flight is
sent when one ends, and its TTFT counts from then).

Per request: TTFT = send -> first SSE event carrying text; ITL = the gaps between that event and
later token events: chunks with a ``content`` (chat) or ``text`` field that are not the role
chunk or the finishing one, empty text included, since a token that completes no character
(half of a UTF-8 sequence) comes as an empty chunk from servers that send one per token, as
vLLM does. ``tokens_per_event`` in the output says how close to one event per token a server
came; ``itl_text_*`` are the gaps between events with text only, as vLLM's benchmark client
counts them (there a held-back token makes one gap of two steps). Output tokens from the
final ``usage`` chunk (the count of token events when a server sends none). Per point: output
tokens/s = all output tokens of the measured requests / (last answer - first send);
percentiles over all requests (TTFT) and all gaps (ITL), as vLLM's benchmark client computes
them. ``--warmup`` requests run first at the same concurrency and are
not counted. Bounded in requests and in time: at ``--max-seconds`` the requests still in flight
are cut (their tokens so far count, they are reported as ``cut``); traffic to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
CUT = "cut at the point's time limit"


@dataclass
class Result:
    start: float
    idx: int = 0  # which prompt
    ttft: float | None = None
    end: float | None = None
    events: list[float] = field(default_factory=list)  # token events from the first text on
    text_events: list[float] = field(default_factory=list)  # events that carried text
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    text: str = ""
    error: str | None = None


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default), q in 0..100."""
    if not values:
        return None
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _is_token_chunk(obj: dict[str, Any]) -> bool:
    choices = obj.get("choices") or []
    if not choices or choices[0].get("finish_reason"):
        return False
    delta = choices[0].get("delta")
    if isinstance(delta, dict):
        return "role" not in delta and isinstance(delta.get("content"), str)
    return isinstance(choices[0].get("text"), str)


def _text_of(obj: dict[str, Any]) -> str:
    choices = obj.get("choices") or []
    if not choices:
        return ""
    c = choices[0]
    delta = c.get("delta")
    if isinstance(delta, dict):
        return str(delta.get("content") or "")
    return str(c.get("text") or "")


class _Sse:
    def __init__(self, res: Result) -> None:
        self.res, self.buf, self.done = res, b"", False

    def feed(self, data: bytes) -> None:
        self.buf += data.replace(b"\r\n", b"\n")
        while b"\n\n" in self.buf:
            event, self.buf = self.buf.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self._data(line[5:].strip())

    def _data(self, payload: bytes) -> None:
        now = time.perf_counter()
        if payload == b"[DONE]":
            self.done = True
            return
        try:
            obj = json.loads(payload)
        except ValueError:
            self.res.error = f"bad SSE data: {payload[:200]!r}"
            return
        if "error" in obj:
            self.res.error = f"error event: {str(obj['error'])[:300]}"
            return
        text = _text_of(obj)
        if text:
            if self.res.ttft is None:
                self.res.ttft = now - self.res.start
            self.res.text_events.append(now)
            self.res.text += text
        if self.res.ttft is not None and (text or _is_token_chunk(obj)):
            self.res.events.append(now)
        usage = obj.get("usage")
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            self.res.output_tokens = int(usage["completion_tokens"])
            self.res.prompt_tokens = usage.get("prompt_tokens")


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str], sse: _Sse) -> None:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readline()
            if not size_line:
                return
            size = int(size_line.split(b";")[0].strip() or b"0", 16)
            if size == 0:
                return
            sse.feed((await reader.readexactly(size + 2))[:-2])
    elif "content-length" in headers:
        sse.feed(await reader.readexactly(int(headers["content-length"])))
        sse.feed(b"\n\n")
    else:
        while chunk := await reader.read(65536):
            sse.feed(chunk)
        sse.feed(b"\n\n")


async def one_request(port: int, path: str, body: bytes, timeout: float,
                      res: Result) -> Result:
    sse = _Sse(res)
    writer = None
    try:
        reader, writer = await asyncio.open_connection(HOST, port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
                "Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        res.start = time.perf_counter()
        writer.write(head + body)
        await writer.drain()

        async def read_all() -> None:
            status = (await reader.readline()).decode("latin-1").split()
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                k, _, v = line.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
            if len(status) < 2 or status[1] != "200":
                rest = await reader.read(2000)
                res.error = f"HTTP {' '.join(status[1:])}: {rest[:300]!r}"
                return
            await _read_body(reader, headers, sse)

        await asyncio.wait_for(read_all(), timeout)
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"
    except asyncio.CancelledError:
        res.error = CUT
        raise
    finally:
        res.end = time.perf_counter()
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1)
    if res.error is None and not res.events:
        res.error = "no text in the answer"
    if res.output_tokens is None and res.error is None:
        res.output_tokens = len(res.events)
    return res


def request_body(model: str, prompt: str, max_tokens: int, ignore_eos: bool = False) -> bytes:
    doc: dict[str, Any] = {
        "model": model, "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
    }
    if ignore_eos:  # vLLM's extension: every answer is max_tokens long
        doc["ignore_eos"] = True
    return json.dumps(doc).encode()


def arrival_times(n: int, rate: float, seed: int = 0) -> list[float]:
    """When each of ``n`` requests is due, in seconds from the first: a Poisson process of
    ``rate`` per second (exponential gaps from a seeded generator)."""
    rng = random.Random(seed)
    times, t = [], 0.0
    for _ in range(n):
        times.append(t)
        t += rng.expovariate(rate)
    return times


async def run_point(port: int, path: str, model: str, prompts: list[str], concurrency: int,
                    requests: int, warmup: int, max_seconds: float, max_tokens: int,
                    timeout: float, offset: int = 0, ignore_eos: bool = False,
                    request_rate: float = 0.0, seed: int = 0) -> dict[str, Any]:
    bodies = [request_body(model, p, max_tokens, ignore_eos) for p in prompts]

    async def send(i: int, start: int, out: list[Result]) -> None:
        j = (start + i) % len(bodies)
        res = Result(start=time.perf_counter(), idx=j)
        out.append(res)
        await one_request(port, path, bodies[j], timeout, res)

    async def closed_loop(n: int, start: int, out: list[Result]) -> None:
        counter = iter(range(n))  # shared by the workers: each request is taken once

        async def worker() -> None:
            for i in counter:
                await send(i, start, out)
        await asyncio.gather(*(worker() for _ in range(concurrency)))

    async def open_loop(n: int, start: int, out: list[Result]) -> None:
        seats = asyncio.Semaphore(concurrency)
        t0 = time.perf_counter()

        async def at(i: int, due: float) -> None:
            await asyncio.sleep(max(0.0, t0 + due - time.perf_counter()))
            async with seats:
                await send(i, start, out)
        await asyncio.gather(*(at(i, due) for i, due in
                               enumerate(arrival_times(n, request_rate, seed))))

    async def drive(n: int, start: int, out: list[Result]) -> None:
        loop = open_loop if request_rate > 0 else closed_loop
        # at the time limit, requests still in flight are cut (their tokens so far count)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(loop(n, start, out), max_seconds)

    if warmup:  # prompts after the measured ones, so no measured prompt was seen before
        await drive(warmup, offset + requests, [])
    results: list[Result] = []
    t0 = time.perf_counter()
    await drive(requests, offset, results)
    point = summarize(results, t0, concurrency)
    point["request_rate"] = request_rate or None
    return point


def summarize(results: list[Result], t0: float, concurrency: int) -> dict[str, Any]:
    ok = [r for r in results if r.error is None]
    cut = [r for r in results if r.error == CUT]
    errors = [r.error for r in results if r.error not in (None, CUT)]
    t_end = max((r.end or t0) for r in results) if results else t0
    duration = t_end - t0
    streamed = ok + cut  # a cut request's tokens so far were produced inside the point
    out_tokens = sum(r.output_tokens or 0 for r in ok) + sum(len(r.events) for r in cut)
    events = sum(len(r.events) for r in streamed)
    ttft = [r.ttft for r in streamed if r.ttft is not None]
    itl = [b - a for r in streamed for a, b in zip(r.events, r.events[1:], strict=False)]
    itl_text = [b - a for r in streamed
                for a, b in zip(r.text_events, r.text_events[1:], strict=False)]
    tpot = [((r.end or 0) - r.start - (r.ttft or 0)) / (len(r.events) - 1)
            for r in ok if len(r.events) > 1]
    ms = 1000.0
    return {
        "concurrency": concurrency, "requests": len(results), "ok": len(ok), "cut": len(cut),
        "errors": len(errors), "error_samples": sorted(set(errors))[:3],
        "duration_s": round(duration, 3),
        "output_tokens": out_tokens,
        "output_tok_s": round(out_tokens / duration, 2) if duration > 0 else None,
        "req_s": round(len(ok) / duration, 3) if duration > 0 else None,
        "tokens_per_event": round(out_tokens / events, 3) if events else None,
        "prompt_tokens_mean": (round(sum(r.prompt_tokens or 0 for r in ok) / len(ok), 1)
                               if ok and all(r.prompt_tokens for r in ok) else None),
        "output_tokens_mean": round(out_tokens / len(ok), 2) if ok else None,
        "ttft_p50_ms": _ms(percentile(ttft, 50), ms), "ttft_p99_ms": _ms(percentile(ttft, 99), ms),
        "itl_p50_ms": _ms(percentile(itl, 50), ms), "itl_p99_ms": _ms(percentile(itl, 99), ms),
        "itl_text_p50_ms": _ms(percentile(itl_text, 50), ms),
        "itl_text_p99_ms": _ms(percentile(itl_text, 99), ms),
        "tpot_p50_ms": _ms(percentile(tpot, 50), ms), "tpot_p99_ms": _ms(percentile(tpot, 99), ms),
        "sample_text": ok[0].text[:200] if ok else None,
        "texts": {r.idx: r.text for r in ok},
        # per request: send, then every text event, in ms from the point's start (for reading
        # where the inter-token tail comes from)
        "timelines": {r.idx: [round((t - t0) * ms, 1) for t in (r.start, *r.events)]
                      for r in streamed},
    }


def _ms(v: float | None, scale: float) -> float | None:
    return None if v is None else round(v * scale, 3)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", default="/v1/chat/completions")
    ap.add_argument("--model", required=True)
    ap.add_argument("--prompts", type=Path, required=True, help="JSON list of prompt strings")
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--requests", type=int, required=True)
    ap.add_argument("--warmup", type=int, default=0)
    ap.add_argument("--offset", type=int, default=0, help="first prompt's index")
    ap.add_argument("--max-seconds", type=float, default=120)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=300, help="per request")
    ap.add_argument("--request-rate", type=float, default=0.0,
                    help="requests per second, Poisson arrivals (open loop); 0 = closed loop")
    ap.add_argument("--seed", type=int, default=0, help="of the open loop's arrival times")
    ap.add_argument("--out", type=Path)
    a = ap.parse_args(argv)
    prompts = json.loads(a.prompts.read_text())
    point = asyncio.run(run_point(a.port, a.path, a.model, prompts, a.concurrency, a.requests,
                                  a.warmup, a.max_seconds, a.max_tokens, a.timeout,
                                  a.offset, request_rate=a.request_rate, seed=a.seed))
    text = json.dumps(point, indent=1)
    if a.out:
        a.out.write_text(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
