"""What the security gate (runtime/kubemaas_runtime/security/gate.py) adds per request, in
process: the same trivial handler called directly and through the gate with no keys, with four
API keys, and with four keys and a requests/s limit. Best of three rounds.

    .venv/bin/python bench/runtime/gate_overhead.py [--calls 200000]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from kubemaas_runtime.security.auth import KeySet
from kubemaas_runtime.security.gate import Gate, SecurityMetrics
from kubemaas_runtime.security.ratelimit import Limits, RateLimiter

RESP = web.Response(body=b"{}")


async def handler(request: web.BaseRequest) -> web.StreamResponse:
    return RESP


class Keys:
    def __init__(self, keys: KeySet) -> None:
        self.keys = keys

    def match(self, presented: str) -> str | None:
        return self.keys.match(presented)


async def run(calls: int) -> None:
    request = make_mocked_request("POST", "/v2/models/m/infer",
                                  headers={"Authorization": "Bearer " + "a" * 20})
    digests = {f"k{i}": hashlib.sha256(b"x%d" % i * 8).digest() for i in range(3)}
    keys: Any = Keys(KeySet({**digests, "alice": hashlib.sha256(b"a" * 20).digest()}))
    cases: dict[str, Any] = {
        "handler alone": handler,
        "gate, no keys": Gate(handler, None, None, False, SecurityMetrics()),
        "gate, 4 keys": Gate(handler, keys, None, False, SecurityMetrics()),
        "gate, 4 keys + requests/s limit": Gate(handler, keys, RateLimiter(Limits(1e9, 1e9)),
                                                False, SecurityMetrics()),
    }
    for name, call in cases.items():
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(calls):
                await call(request)
            best = min(best, (time.perf_counter() - start) / calls)
        print(f"{name}: {best * 1e6:.2f} us per request")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=200_000)
    asyncio.run(run(parser.parse_args().calls))


if __name__ == "__main__":
    main()
