"""The engine's periodic stats record, vLLM's "Avg prompt throughput ..." line as one JSON
record: every ``--log-stats-interval-s`` while the engine has had work, the interval's length
and the prompt and generation throughput over it, the requests running and waiting, the KV cache's
usage, the prefix cache's hit rate and the preemptions. An idle engine writes nothing."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("kubemaas.runtime.llm.stats")


@dataclass
class Totals:
    """The engine's running counts at one moment."""
    at: float
    prefill: int
    sampled: int
    queried: int
    hits: int
    preemptions: int

    @classmethod
    def of(cls, engine: Any, at: float) -> Totals:
        return cls(at, engine.prefill_tokens, engine.sampled_tokens, engine.pool.queried_tokens,
                   engine.pool.hit_tokens, engine.scheduler.preemptions)


def stats_fields(before: Totals, now: Totals, running: int, waiting: int, kv_usage: float
                 ) -> dict[str, Any] | None:
    """The record of the interval from ``before`` to ``now``; None when the engine did nothing
    and holds nothing (counts that went back, a reset of the metrics, count as none)."""
    seconds = max(now.at - before.at, 1e-9)
    prefill = max(now.prefill - before.prefill, 0)
    sampled = max(now.sampled - before.sampled, 0)
    if not (prefill or sampled or running or waiting):
        return None
    queried = max(now.queried - before.queried, 0)
    hits = max(now.hits - before.hits, 0)
    return {"seconds": round(seconds, 3), "prompt_tokens_per_s": round(prefill / seconds, 1),
            "generation_tokens_per_s": round(sampled / seconds, 1),
            "running": running, "waiting": waiting,
            "kv_cache_usage_perc": round(100 * kv_usage, 1),
            "prefix_cache_hit_rate_perc": round(100 * hits / queried, 1) if queried else None,
            "preemptions": max(now.preemptions - before.preemptions, 0)}


async def log_stats(engine: Any, interval_s: float) -> None:
    """Write the stats record every ``interval_s`` until cancelled."""
    before = Totals.of(engine, time.monotonic())
    while True:
        await asyncio.sleep(interval_s)
        now = Totals.of(engine, time.monotonic())
        fields = stats_fields(before, now, engine.num_running, engine.num_waiting,
                              engine.kv_usage)
        if fields is not None:
            log.info("engine stats", extra={"fields": fields})
        before = now
