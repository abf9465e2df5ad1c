"""Short streams in a closed loop, long prompts arriving among them: the load of a mixed point.

    taskset -c 1 .venv/bin/python bench/llm/mixed_load.py --port P --model NAME \\
        --short short.json --long long.json --concurrency 8 --long-at 5,15,25 \\
        --seconds 40 --out mixed.json

``--concurrency`` workers send streamed chat requests of the ``--short`` prompts (each worker
its next one when its last ends, as ``loadgen.py``'s closed loop) until ``--seconds`` have
passed; meanwhile one request of each ``--long`` prompt is sent at the ``--long-at`` times
(seconds from the start, ``--long-max-tokens`` each). Nothing is summarised here: the output
keeps every request's send, first-token and token-event times on one clock (seconds from the
point's start), so the harness (``long_prompts.py``) can tell the short streams' gaps that
overlapped a long prompt's prefill from the others. Standard library only; bounded in time
(the short loop stops sending at ``--seconds``; a request still running ``--timeout`` seconds
after its send is cut); traffic to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loadgen  # noqa: E402

PATH = "/v1/chat/completions"


def record(res: loadgen.Result, t0: float, kind: str) -> dict[str, Any]:
    """One request on the point's clock (seconds from its start)."""
    first = None if res.ttft is None else res.start + res.ttft
    return {
        "kind": kind, "prompt": res.idx, "error": res.error,
        "send": round(res.start - t0, 6),
        "first": None if first is None else round(first - t0, 6),
        "end": None if res.end is None else round(res.end - t0, 6),
        "events": [round(t - t0, 6) for t in res.events],
        "output_tokens": res.output_tokens, "prompt_tokens": res.prompt_tokens,
    }


async def run_mixed(port: int, model: str, short: list[str], long: list[str], concurrency: int,
                    long_at: list[float], seconds: float, max_tokens: int,
                    long_max_tokens: int, timeout: float, offset: int = 0
                    ) -> list[dict[str, Any]]:
    short_bodies = [loadgen.request_body(model, p, max_tokens) for p in short]
    long_bodies = [loadgen.request_body(model, p, long_max_tokens) for p in long]
    done: list[tuple[loadgen.Result, str]] = []
    next_short = itertools.count(offset)
    t0 = time.perf_counter()

    async def send(body: bytes, idx: int, kind: str) -> None:
        res = loadgen.Result(start=time.perf_counter(), idx=idx)
        done.append((res, kind))
        await loadgen.one_request(port, PATH, body, timeout, res)

    async def worker() -> None:
        while time.perf_counter() - t0 < seconds:
            i = next(next_short)
            await send(short_bodies[i % len(short_bodies)], i % len(short_bodies), "short")

    async def long_one(k: int, due: float) -> None:
        await asyncio.sleep(max(0.0, t0 + due - time.perf_counter()))
        await send(long_bodies[k % len(long_bodies)], k % len(long_bodies), "long")

    await asyncio.gather(*(worker() for _ in range(concurrency)),
                         *(long_one(k, due) for k, due in enumerate(long_at)))
    return [record(res, t0, kind) for res, kind in done]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--short", type=Path, required=True, help="JSON list of prompt strings")
    ap.add_argument("--long", type=Path, help="JSON list of prompt strings")
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--long-at", default="", help="seconds from the start, comma-separated")
    ap.add_argument("--seconds", type=float, required=True, help="the short loop's span")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--long-max-tokens", type=int, default=16)
    ap.add_argument("--offset", type=int, default=0, help="first short prompt's index")
    ap.add_argument("--timeout", type=float, default=120, help="per request")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    long_at = [float(x) for x in a.long_at.split(",") if x.strip()]
    if long_at and a.long is None:
        ap.error("--long-at needs --long")
    short = json.loads(a.short.read_text())
    long = json.loads(a.long.read_text()) if a.long else []
    requests = asyncio.run(run_mixed(a.port, a.model, short, long, a.concurrency, long_at,
                                     a.seconds, a.max_tokens, a.long_max_tokens, a.timeout,
                                     a.offset))
    a.out.write_text(json.dumps({"concurrency": a.concurrency, "long_at": long_at,
                                 "seconds": a.seconds, "requests": requests}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
