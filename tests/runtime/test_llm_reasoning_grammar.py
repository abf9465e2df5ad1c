"""A reasoning model's structured output, served: the grammar holds the answer after the
``<think>`` block, not the thinking, as vLLM holds it. The model's tokenizer has ``<think>``
and ``</think>`` as tokens of their own (as Qwen3's and DeepSeek-R1's have); the
random-weight model is steered to close its block with ``logit_bias``, and thinks freely
before that."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import Server, start_llm_server, stream_events, with_chat_template
from .test_llm_reasoning import TEMPLATE
from .test_llm_responses import sse
from .tool_models import USER, WEATHER, check_weather

ANSWER = "(Paris|Oslo)\\."
OPENED = {"chat_template_kwargs": {"open_think": True}}  # the prompt ends with <think>


@pytest.fixture(scope="module")
def think_ids(server: Server) -> tuple[int, int]:
    status, doc = server.post_json("/tokenize", {"prompt": "<think></think>",
                                                 "add_special_tokens": False})
    assert status == 200 and len(doc["tokens"]) == 2, doc
    return doc["tokens"][0], doc["tokens"][1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    from kubemaas_testbed.llm_models import build_llm

    built = build_llm(tmp_path_factory.mktemp("thinking") / "built", think_tokens=True)
    model = with_chat_template(built, tmp_path_factory.mktemp("thinking") / "tiny", TEMPLATE)
    server = start_llm_server(model, "--tool-call-parser", "hermes")  # reasoning: auto
    deadline = time.monotonic() + 10  # the line follows /health's first 200 closely
    while not any(d.get("msg") == "ready" for d in server.logs()) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    ready = [d for d in server.logs() if d.get("msg") == "ready"]
    assert ready and ready[0]["grammar_after_thinking"] is True
    yield server
    assert server.stop() == 0


def chat(server: Server, **doc: Any) -> dict[str, Any]:
    status, body = server.post_json("/v1/chat/completions", {
        "messages": USER, "max_tokens": 64, "temperature": 1.0, "return_token_ids": True,
        **doc})
    assert status == 200, body
    return body["choices"][0]  # type: ignore[no-any-return]


def streamed(server: Server, **doc: Any) -> tuple[str, str]:
    events = stream_events(server, "/v1/chat/completions", {
        "messages": USER, "max_tokens": 64, "temperature": 1.0, "stream": True, **doc})
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    return ("".join(d.get("reasoning") or "" for d in deltas),
            "".join(d.get("content") or "" for d in deltas))


def test_the_grammar_holds_the_answer_after_the_thinking(server: Server,
                                                          think_ids: tuple[int, int]) -> None:
    doc = {**OPENED, "seed": 3, "logit_bias": {str(think_ids[1]): 4},
           "structured_outputs": {"regex": ANSWER}}
    answer = chat(server, **doc)
    message = answer["message"]
    assert re.fullmatch(ANSWER, message["content"]) and answer["finish_reason"] == "stop"
    # the thinking is the model's own, several tokens the grammar would never have allowed
    closed = answer["token_ids"].index(think_ids[1])
    assert closed >= 3 and message["reasoning"] and not re.fullmatch(ANSWER,
                                                                     message["reasoning"])
    assert streamed(server, **doc) == (message["reasoning"], message["content"])
    events = stream_events(server, "/v1/chat/completions", {
        "messages": USER, "max_tokens": 64, "temperature": 1.0, "stream": True,
        "return_token_ids": True, **doc})  # the reader's chunks carry their tokens too
    assert [t for e in events for c in e["choices"] for t in c.get("token_ids", [])] == \
        answer["token_ids"]


def test_the_first_token_may_open_the_block_or_start_the_answer(
        server: Server, think_ids: tuple[int, int]) -> None:
    think, end = think_ids
    # <think> barred: the grammar holds from the first token
    held = chat(server, temperature=0, logit_bias={str(think): -100},
                structured_outputs={"regex": ANSWER})
    assert re.fullmatch(ANSWER, held["message"]["content"])
    assert held["message"]["reasoning"] is None and think not in held["token_ids"]
    # <think> first (it is allowed beside the grammar's tokens), </think> next, then the answer
    opened = chat(server, temperature=0, logit_bias={str(think): 30, str(end): 40},
                  structured_outputs={"regex": ANSWER})
    assert opened["token_ids"][:2] == [think, end]
    assert re.fullmatch(ANSWER, opened["message"]["content"])


def test_a_required_tool_call_follows_the_thinking(server: Server,
                                                   think_ids: tuple[int, int]) -> None:
    answer = chat(server, **OPENED, seed=2, logit_bias={str(think_ids[1]): 4}, tools=[WEATHER],
                  tool_choice="required", max_tokens=200)
    assert answer["finish_reason"] == "tool_calls"
    message = answer["message"]
    assert message["reasoning"] and message["content"] is None
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    check_weather(call["function"]["arguments"])


def test_a_block_left_open_is_all_reasoning(server: Server, think_ids: tuple[int, int]) -> None:
    """No </think> before max_tokens: the grammar never started, the answer is empty."""
    answer = chat(server, **OPENED, seed=1, max_tokens=8, logit_bias={str(think_ids[1]): -100},
                  response_format={"type": "json_object"})
    assert answer["finish_reason"] == "length" and answer["message"]["content"] is None
    assert answer["message"]["reasoning"] and len(answer["token_ids"]) == 8


def test_the_responses_usage_counts_the_reasoning_tokens(server: Server,
                                                         think_ids: tuple[int, int]) -> None:
    """``output_tokens_details.reasoning_tokens``: the tokens up to and with ``</think>``."""
    bias = {str(think_ids[1]): 4}
    answer = chat(server, **OPENED, seed=3, logit_bias=bias,
                  structured_outputs={"regex": ANSWER})
    thought = answer["token_ids"].index(think_ids[1]) + 1
    doc = {"model": "tiny", "input": USER, "max_output_tokens": 64, "temperature": 1.0,
           "seed": 3, "logit_bias": bias, "structured_outputs": {"regex": ANSWER}, **OPENED}
    status, body = server.post_json("/v1/responses", doc)
    assert status == 200, body
    usage = body["usage"]
    assert usage["output_tokens_details"]["reasoning_tokens"] == thought
    assert usage["output_tokens"] == len(answer["token_ids"]) > thought
    events = sse(server, **{k: v for k, v in doc.items() if k != "model"})
    assert events[-1]["response"]["usage"] == usage
    # no thinking, no reasoning tokens
    status, body = server.post_json("/v1/responses", {
        **doc, "logit_bias": {str(think_ids[0]): -100}, "chat_template_kwargs": {}})
    assert status == 200 and body["usage"]["output_tokens_details"]["reasoning_tokens"] == 0


def rendered(server: Server, **doc: Any) -> str:
    status, body = server.post_json("/tokenize", {"messages": USER, **doc})
    assert status == 200, body
    status, text = server.post_json("/detokenize", {"tokens": body["tokens"]})
    assert status == 200, text
    return str(text["prompt"])


def test_reasoning_effort_and_documents_reach_the_template(server: Server) -> None:
    """As vLLM hands them over: the effort, enable_thinking from it (unless the kwargs set
    it), the documents."""
    low = rendered(server, reasoning_effort="low",
                   documents=[{"title": "Oslo", "text": "cold in winter"}])
    assert "effort low" in low and "Oslo: cold in winter" in low and "</think>" not in low
    assert rendered(server, reasoning_effort="none").endswith("<think>\n\n</think>\n\n")
    assert "</think>" not in rendered(server, reasoning_effort="none",
                                      chat_template_kwargs={"enable_thinking": True})
    for bad in ({"reasoning_effort": "huge"}, {"documents": [{"title": 3}]},
                {"documents": "text"}):
        status, body = server.post_json("/v1/chat/completions", {"messages": USER, **bad})
        assert status == 400 and body["error"]["param"] == next(iter(bad)), body


def test_include_reasoning_false_drops_the_reasoning(server: Server,
                                                     think_ids: tuple[int, int]) -> None:
    doc = {**OPENED, "seed": 3, "logit_bias": {str(think_ids[1]): 4}}
    shown = chat(server, **doc)["message"]
    hidden = chat(server, **doc, include_reasoning=False)["message"]
    assert shown["reasoning"] and shown["content"]
    assert (hidden["reasoning"], hidden["content"]) == (None, shown["content"])
    assert streamed(server, **doc, include_reasoning=False) == ("", shown["content"])
    # and a grammar holds from the first token, as in vLLM: no thinking at all
    held = chat(server, **doc, include_reasoning=False, structured_outputs={"regex": ANSWER})
    assert re.fullmatch(ANSWER, held["message"]["content"])
    assert think_ids[1] not in held["token_ids"]
    # reasoning_effort "none" means the same
    effortless = chat(server, **doc, reasoning_effort="none")["message"]
    assert effortless["reasoning"] is None


def test_a_named_tool_call_follows_the_thinking(server: Server,
                                                think_ids: tuple[int, int]) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    doc = {**OPENED, "seed": 2, "logit_bias": {str(think_ids[1]): 4}, "tools": [WEATHER],
           "tool_choice": named, "max_tokens": 200}
    answer = chat(server, **doc)
    message = answer["message"]
    assert answer["finish_reason"] == "stop"  # asked for, as a named call always finishes
    assert message["reasoning"] and message["content"] is None
    (call,) = message["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    check_weather(call["function"]["arguments"])
    events = stream_events(server, "/v1/chat/completions", {
        "messages": USER, "temperature": 1.0, "stream": True, **doc})
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    heads = [c for d in deltas for c in d.get("tool_calls", []) if "id" in c]
    assert len(heads) == 1 and heads[0]["function"]["name"] == "get_weather"
    assert "".join(d.get("reasoning") or "" for d in deltas) == message["reasoning"]
    assert "".join(c["function"]["arguments"] for d in deltas
                   for c in d.get("tool_calls", [])) == call["function"]["arguments"]
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    # the Responses API: a reasoning item, then the call
    status, body = server.post_json("/v1/responses", {
        "model": "tiny", "input": USER, "temperature": 1.0, "seed": 2, **OPENED,
        "logit_bias": doc["logit_bias"], "max_output_tokens": 200,
        "tools": [{"type": "function", **WEATHER["function"]}],
        "tool_choice": {"type": "function", "name": "get_weather"}})
    assert status == 200, body
    assert [item["type"] for item in body["output"]] == ["reasoning", "function_call"]
    assert body["output"][1]["arguments"] == call["function"]["arguments"]


def test_the_thinking_token_budget_closes_the_block(server: Server,
                                                    think_ids: tuple[int, int]) -> None:
    """vLLM's thinking_token_budget: past it, </think> is the only token allowed."""
    end = think_ids[1]
    for budget in (0, 3):
        answer = chat(server, **OPENED, temperature=0, max_tokens=12,
                      thinking_token_budget=budget)
        assert answer["token_ids"].index(end) == budget
        assert bool(answer["message"]["reasoning"]) == (budget > 0)
    held = chat(server, **OPENED, temperature=0, thinking_token_budget=2,
                structured_outputs={"regex": ANSWER})
    assert held["token_ids"].index(end) == 2
    assert re.fullmatch(ANSWER, held["message"]["content"])
    unbounded = chat(server, **OPENED, temperature=0, max_tokens=12)
    assert end not in unbounded["token_ids"]  # without the budget, the model never closes it
    for bad in ({"thinking_token_budget": -1}, {"thinking_token_budget": 2,
                                                 "include_reasoning": False}):
        status, body = server.post_json("/v1/chat/completions", {"messages": USER, **bad})
        assert status == 400 and body["error"]["param"] == "thinking_token_budget", body
