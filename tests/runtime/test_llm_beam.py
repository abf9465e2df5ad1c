"""vLLM's beam search (``use_beam_search``, ``n`` the width): the answers a reference beam
search over the model's own forward gives, best first, through the openai client and
streamed; width 1 is greedy decoding; what it does not apply is a 400; a client that goes
away mid-search leaves no blocks behind."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import torch

from . import llm_reference as ref
from .conftest import Server, start_llm_server, stream_events


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    server = start_llm_server(tiny_llama)
    yield server
    assert server.stop() == 0


def metric(server: Server, name: str) -> float:
    line = next(x for x in server.metrics().splitlines() if x.startswith(name + "{"))
    return float(line.rsplit(" ", 1)[1])


@pytest.mark.parametrize(("text", "width", "penalty"), [
    ("Once upon a time", 3, 1.0), ("the lazy dog", 4, 0.0), ("birds sing", 2, 2.0)])
def test_the_answers_of_a_reference_beam_search(server: Server, client: openai.OpenAI,
                                                tiny_llama: Path, text: str, width: int,
                                                penalty: float) -> None:
    ids = ref.prompt_ids(tiny_llama, text)
    want = ref.beam_search(tiny_llama, ids, width, 12, penalty)
    got = client.completions.create(model="tiny", prompt=text, max_tokens=12, n=width,
                                    extra_body={"use_beam_search": True,
                                                "length_penalty": penalty,
                                                "return_token_ids": True})
    tok, _ = ref.load(tiny_llama)
    assert [c.index for c in got.choices] == list(range(width))
    for choice, (tokens, stopped) in zip(got.choices, want, strict=True):
        assert choice.token_ids == tokens  # type: ignore[attr-defined]
        assert choice.text == tok.decode(tokens, skip_special_tokens=True)
        assert choice.finish_reason == ("stop" if stopped else "length")
    assert got.usage is not None and got.usage.prompt_tokens == len(ids)
    assert got.usage.completion_tokens == sum(len(t) for t, _ in want)


def test_width_one_is_greedy_decoding(server: Server, tiny_llama: Path) -> None:
    ids = ref.prompt_ids(tiny_llama, "Once upon a time")
    status, doc = server.post_json("/v1/completions", {
        "prompt": ids, "max_tokens": 10, "use_beam_search": True, "ignore_eos": True,
        "return_token_ids": True})
    assert status == 200, doc
    _, model = ref.load(tiny_llama)
    greedy: list[int] = []  # the most likely token each step, EOS or not (ignore_eos)
    with torch.inference_mode():
        for _ in range(10):
            greedy.append(int(model(torch.tensor([ids + greedy])).logits[0, -1].argmax()))
    assert doc["choices"][0]["token_ids"] == greedy


def test_a_chat_streamed_comes_whole_in_one_chunk(server: Server) -> None:
    doc = {"messages": [{"role": "user", "content": "the lazy dog"}], "n": 2,
           "max_tokens": 8, "use_beam_search": True}
    status, whole = server.post_json("/v1/chat/completions", doc)
    assert status == 200, whole
    events = stream_events(server, "/v1/chat/completions", {**doc, "stream": True})
    texts = ["", ""]
    finishes: list[Any] = [None, None]
    for event in events:
        for choice in event["choices"]:
            texts[choice["index"]] += choice["delta"].get("content") or ""
            finishes[choice["index"]] = choice["finish_reason"] or finishes[choice["index"]]
    assert texts == [c["message"]["content"] for c in whole["choices"]]
    assert finishes == [c["finish_reason"] for c in whole["choices"]]


@pytest.mark.parametrize(("doc", "param"), [
    ({"use_beam_search": True, "stop": ["x"]}, "stop"),
    ({"use_beam_search": True, "logprobs": 2}, "logprobs"),
    ({"use_beam_search": True, "presence_penalty": 0.5}, "presence_penalty"),
    ({"use_beam_search": True, "structured_outputs": {"regex": "[ab]+"}}, "structured_outputs"),
    ({"use_beam_search": "yes"}, "use_beam_search"),
    ({"length_penalty": 0.5}, "length_penalty"),  # only with use_beam_search
])
def test_what_beam_search_does_not_apply_is_refused(server: Server, doc: dict[str, Any],
                                                    param: str) -> None:
    status, body = server.post_json("/v1/completions", {"prompt": "hi", "max_tokens": 4, **doc})
    assert status == 400 and body["error"]["param"] == param, body


def test_a_client_gone_mid_search_stops_it(server: Server) -> None:
    """Each step of a search is a round of one-token engine requests (each counted in the
    prefix cache's queries): once its client has gone, no round starts and no block is held."""
    assert server.port is not None
    queries = "vllm:prefix_cache_queries_total"
    before = metric(server, queries)
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 400, "n": 4,
                       "use_beam_search": True, "ignore_eos": True, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    deadline = time.monotonic() + 30
    while metric(server, queries) < before + 200:  # the search is a few rounds in
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sock.close()
    time.sleep(0.5)  # the server sees the connection close; a round under way ends
    stopped = metric(server, queries)
    time.sleep(1.0)
    assert metric(server, queries) == stopped, "the search went on without its client"
    for gauge in ("vllm:kv_cache_usage_perc", "vllm:num_requests_running",
                  "vllm:num_requests_waiting"):
        assert metric(server, gauge) == 0, gauge
