"""An idle engine lets a burst of requests land before it reads their prompts
(``--arrival-window-ms``): requests posted within ``arrival_gap`` of each other are read in one
step and decode in step, a lone request waits one gap, never the whole window, and a stream of
arrivals longer than the window is cut at the window. Each request's first delta carries the
time of the step that produced it, so requests read in the same step share that time.

In-process with the tiny Llama; the gaps and windows are tenths of a second, far above a step of
this model (milliseconds), so a slow machine does not change which step a request lands in."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import torch

from kubemaas_runtime.llm.engine import Engine, EngineConfig
from kubemaas_runtime.llm.loader import LanguageModel, load_hf
from kubemaas_runtime.llm.sampling import SamplingParams


@pytest.fixture(scope="module")
def lm(tiny_llama: Path) -> LanguageModel:
    torch.set_num_threads(1)
    return load_hf(tiny_llama, device="cpu")


def first_tokens(lm: LanguageModel, window: float, gap: float, spacing: float,
                 count: int) -> tuple[list[float], list[float]]:
    """Submit ``count`` requests ``spacing`` seconds apart to an idle engine; return when each
    was submitted and when its first token's step ran (time.monotonic())."""
    engine = Engine(lm, EngineConfig(kv_cache_bytes=4 << 20, max_model_len=256,
                                     arrival_window=window, arrival_gap=gap))

    async def run() -> tuple[list[float], list[float]]:
        engine.start(asyncio.get_running_loop())
        params = SamplingParams(max_tokens=2, temperature=0.0)
        sent, streams = [], []
        for i in range(count):
            sent.append(time.monotonic())
            streams.append(engine.submit([5 + i, 6, 7, 8], params))
            await asyncio.sleep(spacing)
        firsts = []
        for stream in streams:
            deltas = [delta async for delta in stream]
            assert deltas[-1].finish_reason == "length"
            firsts.append(deltas[0].at)
        return sent, firsts

    try:
        return asyncio.run(run())
    finally:
        engine.stop()


def test_a_burst_is_read_in_one_step(lm: LanguageModel) -> None:
    _, firsts = first_tokens(lm, window=5.0, gap=0.5, spacing=0.02, count=4)
    assert len(set(firsts)) == 1, firsts


def test_without_a_window_each_request_is_read_at_once(lm: LanguageModel) -> None:
    sent, firsts = first_tokens(lm, window=0.0, gap=0.5, spacing=0.3, count=2)
    assert firsts[0] < sent[1] < firsts[1]


def test_a_lone_request_waits_one_gap_not_the_window(lm: LanguageModel) -> None:
    sent, firsts = first_tokens(lm, window=5.0, gap=0.2, spacing=0.0, count=1)
    assert 0.2 <= firsts[0] - sent[0] < 2.0


def test_arrivals_longer_than_the_window_are_cut_at_the_window(lm: LanguageModel) -> None:
    sent, firsts = first_tokens(lm, window=0.3, gap=1.0, spacing=0.05, count=12)
    in_first_step = firsts.count(min(firsts))
    assert 2 <= in_first_step < 12, firsts
    assert min(firsts) - sent[0] < 1.0  # the window, not the gap after the last arrival
