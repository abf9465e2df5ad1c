"""When the model fails during generation: a streamed answer ends with an ``error`` event and
``[DONE]`` (a streamed response with ``response.failed``), a whole answer is a 500 with
OpenAI's error object, the failed sequences' blocks are
freed, and the engine serves the next requests. In-process (the engine thread and the aiohttp
server on 127.0.0.1 in this test's event loop), because the failure is made by breaking the
loaded model's output layer, then mending it. A request whose sampling fails fails alone."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import torch
from aiohttp import web

from kubemaas_runtime.llm.engine import Engine, EngineConfig
from kubemaas_runtime.llm.loader import load_hf
from kubemaas_runtime.llm.sampling import SamplingParams
from kubemaas_runtime.logs import JsonFormatter
from kubemaas_runtime.metrics import LLMMetrics, Metrics
from kubemaas_runtime.protocol.openai import OpenAIServer
from kubemaas_runtime.protocol.openai_engine import Served


@contextlib.contextmanager
def logged(name: str) -> Iterator[list[str]]:
    """The lines the server's JSON formatter writes for this logger's records meanwhile."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    lines: list[str] = []
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        lines += out.getvalue().splitlines()


async def chat_and_completion_fail(http: aiohttp.ClientSession, base: str,
                                   doc: dict[str, object]) -> None:
    """A stream ends with an error event and [DONE], a whole answer is a 500; each failure's
    record (with its traceback) names the request it failed."""
    with logged("kubemaas.runtime.openai") as log_lines:
        async with http.post(f"{base}/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
                "stream": True}, headers={"X-Request-Id": "fail-1"}) as resp:
            assert resp.status == 200
            events = [e[len("data: "):] for e in (await resp.text()).split("\n\n") if e]
        async with http.post(f"{base}/v1/completions", json=doc,
                             headers={"X-Request-Id": "fail-2"}) as resp:
            assert resp.status == 500
            body = await resp.json()
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"
    assert "generation failed" in json.loads(events[-2])["error"]["message"]
    assert events[-1] == "[DONE]"
    assert body["error"]["type"] == "server_error"
    failures = [json.loads(line) for line in log_lines]
    assert [(r["msg"], r.get("request_id")) for r in failures] == [
        ("generation failed mid-stream", "fail-1"), ("generation failed", "fail-2")]
    assert all("Traceback" in r["exc"] for r in failures)


async def responses_fail(http: aiohttp.ClientSession, base: str) -> None:
    """The Responses API: a 500 too, or, streamed, a response.failed event last."""
    responses = {"input": "hi", "max_output_tokens": 8}
    async with http.post(f"{base}/v1/responses", json=responses) as resp:
        assert resp.status == 500
        assert (await resp.json())["error"]["type"] == "server_error"
    async with http.post(f"{base}/v1/responses", json={**responses, "stream": True}) as resp:
        blocks = [b for b in (await resp.text()).split("\n\n") if b]
    failed = json.loads(blocks[-1].split("data: ", 1)[1])
    assert failed["type"] == "response.failed"
    assert failed["response"]["status"] == "failed"
    assert "generation failed" in failed["response"]["error"]["message"]


def test_a_failing_model_is_reported_and_the_engine_recovers(tiny_llama: Path) -> None:
    torch.set_num_threads(1)
    lm = load_hf(tiny_llama, device="cpu")
    engine = Engine(lm, EngineConfig(kv_cache_bytes=4 << 20, max_model_len=256))

    async def run() -> None:
        api = OpenAIServer("tiny", Metrics(), 1 << 20)
        engine.start(asyncio.get_running_loop())
        api.served = Served(engine, LLMMetrics("tiny", 16, engine.pool.usable), lm.tokenizer,
                            256, lm.vocab_size)
        runner = web.ServerRunner(api.server)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        doc = {"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}
        good = lm.model.lm_head
        try:
            async with aiohttp.ClientSession() as http:
                lm.model.lm_head = torch.nn.Linear(3, lm.vocab_size)  # wrong shape: it raises
                await chat_and_completion_fail(http, base, doc)
                await responses_fail(http, base)
                async with http.post(f"{base}/v1/completions", json={
                        **doc, "n": 2, "use_beam_search": True}) as resp:
                    assert resp.status == 500, await resp.text()
                assert engine.pool.used == 0 and engine.num_running == 0
                assert engine.room.taken == 0  # the failed search gave its 2 places back

                lm.model.lm_head = good  # mended: the same engine serves again
                async with http.post(f"{base}/v1/completions", json=doc) as resp:
                    assert resp.status == 200, await resp.text()
                    assert (await resp.json())["usage"]["completion_tokens"] >= 1
        finally:
            lm.model.lm_head = good
            await runner.cleanup()
            engine.stop()

    asyncio.run(run())


def test_a_request_whose_sampling_fails_fails_alone(tiny_llama: Path) -> None:
    """A sampling error (here a bias for a token outside the vocabulary, which the API refuses
    before it gets this far) ends that request with the error; the requests sharing its steps
    answer as if alone, and its blocks are freed."""
    torch.set_num_threads(1)
    lm = load_hf(tiny_llama, device="cpu")
    engine = Engine(lm, EngineConfig(kv_cache_bytes=4 << 20, max_model_len=256))
    greedy = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    prompts = [[5, 6, 7, 8], [9, 10, 11]]
    alone = engine.generate_sync(prompts, greedy)
    items: dict[int, list[object]] = {}
    broken = engine.sequence([5, 6, 7, 8], replace(greedy, logit_bias=((10**6, 1.0),)))
    seqs = [engine.sequence(p, greedy) for p in prompts]
    for seq in (seqs[0], broken, seqs[1]):
        engine.scheduler.add(seq)
    while engine.scheduler.waiting or engine.scheduler.running:
        for seq, item in engine.step():
            items.setdefault(seq.rid, []).append(item)
    assert [type(i) for i in items[broken.rid]] == [IndexError]
    assert broken.finish_reason == "error"
    assert [list(s.output) for s in seqs] == alone
    assert engine.pool.used == 0 and engine.num_running == 0
