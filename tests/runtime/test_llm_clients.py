"""Real clients, unchanged, against the runtime's OpenAI API: the ``openai`` Python client (sync
and async, streaming and not, chat and completions) and guidellm, an LLM load generator (in a
side virtualenv; bounded in requests and time; traffic to 127.0.0.1 only).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from .conftest import Server, start_llm_server
from .venvs import GUIDELLM, ensure_venv


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    server = start_llm_server(tiny_llama)
    yield server
    assert server.stop() == 0


def test_openai_sync_completions_and_chat(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]
    done = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=12,
                                     temperature=0)
    assert done.object == "text_completion" and done.choices[0].finish_reason in ("stop",
                                                                                  "length")
    assert done.usage is not None and done.usage.completion_tokens >= 1
    streamed = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=12,
                                         temperature=0, stream=True)
    assert "".join(ch.choices[0].text for ch in streamed if ch.choices) == done.choices[0].text

    messages = [{"role": "user", "content": "Hello! How are you today?"}]
    chat = client.chat.completions.create(model="tiny", messages=messages,  # type: ignore[arg-type]
                                          max_tokens=12, temperature=0)
    assert chat.choices[0].message.role == "assistant"
    assert chat.usage is not None and chat.usage.prompt_tokens > 0
    chunks = list(client.chat.completions.create(
        model="tiny", messages=messages, max_tokens=12, temperature=0,  # type: ignore[arg-type]
        stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == chat.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == chat.usage.completion_tokens
    two = client.chat.completions.create(model="tiny", messages=messages,  # type: ignore[arg-type]
                                         max_tokens=12, temperature=0, n=2)
    assert [ch.index for ch in two.choices] == [0, 1]
    assert [ch.message.content for ch in two.choices] == [chat.choices[0].message.content] * 2
    both = ["", ""]
    for chunk in client.chat.completions.create(
            model="tiny", messages=messages, max_tokens=12, temperature=0,  # type: ignore[arg-type]
            n=2, stream=True):
        for ch in chunk.choices:
            both[ch.index] += ch.delta.content or ""
    assert both == [chat.choices[0].message.content] * 2
    # the second request of the same prompt: its full blocks (16 tokens) came from the cache
    details = chunks[-1].usage.prompt_tokens_details
    assert details is not None and details.cached_tokens == \
        (chat.usage.prompt_tokens - 1) // 16 * 16


def test_openai_client_sees_errors_as_its_exceptions(client: openai.OpenAI, tiny_llama: Path
                                                     ) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.completions.create(model="other", prompt="hi", max_tokens=2)
    assert "does not exist" in str(missing.value)
    with pytest.raises(openai.BadRequestError) as long:
        client.completions.create(model="tiny", prompt="word " * 600, max_tokens=2)
    assert long.value.code == "context_length_exceeded"
    # over 4096 characters: tokenized in a worker thread (the tokenizer's own call), counted
    from transformers import AutoTokenizer

    longer = "word " * 1000
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="tiny", prompt=longer, max_tokens=2)
    n = len(AutoTokenizer.from_pretrained(str(tiny_llama))(longer)["input_ids"])
    assert refused.value.code == "context_length_exceeded"
    assert f"({n} in the prompt" in str(refused.value)


def test_openai_async_client(server: Server) -> None:
    async def run() -> tuple[list[str], list[str]]:
        c = openai.AsyncOpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0)
        prompts = [f"Story number {i}:" for i in range(6)]

        async def plain(p: str) -> str:
            r = await c.completions.create(model="tiny", prompt=p, max_tokens=10, temperature=0)
            return r.choices[0].text

        async def streamed(p: str) -> str:
            s = await c.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": p}], max_tokens=10,
                temperature=0, stream=True)
            return "".join([ch.choices[0].delta.content or "" async for ch in s
                            if ch.choices])

        async def chat(p: str) -> str:
            r = await c.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": p}], max_tokens=10,
                temperature=0)
            return r.choices[0].message.content or ""

        await asyncio.gather(*(plain(p) for p in prompts))
        streams = await asyncio.gather(*(streamed(p) for p in prompts))
        whole = await asyncio.gather(*(chat(p) for p in prompts))
        await c.close()
        return list(streams), list(whole)

    streams, whole = asyncio.run(run())
    assert streams == whole


def test_guidellm_load_generator(server: Server, tiny_llama: Path, tmp_path: Path) -> None:
    python = ensure_venv("guidellm", GUIDELLM)
    report = tmp_path / "guidellm.json"
    proc = subprocess.run(
        [str(python.parent / "guidellm"), "run",
         "--backend", f"kind=openai_http,target={server.base}",
         "--profile", "kind=concurrent,streams=4",
         "--data", "kind=synthetic_text,prompt_tokens=32,output_tokens=16",
         "--tokenizer", f"kind=huggingface_auto,model={tiny_llama}",
         "--constraint", "kind=max_requests,count=24",
         "--constraint", "kind=max_duration,seconds=90",
         "--output", f"kind=json,path={report}", "--disable-progress"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    bench = json.loads(report.read_text())["benchmarks"][0]["metrics"]
    totals = bench["request_totals"]
    # guidellm stops at the count (its last requests may land outside the measured window)
    assert totals["errored"] == 0 and totals["incomplete"] == 0, totals
    assert 16 <= totals["successful"] <= 24, totals
    assert "vllm:num_requests_running" in server.metrics()
