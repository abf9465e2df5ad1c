"""Bad input to the OpenAI API: each a clean 4xx with OpenAI's error object, and the server keeps
serving; a client that goes away mid-stream frees its KV blocks at once; a flood far beyond the
queue limit gets 429 with Retry-After while memory stays bounded; a fuzz run with zero 5xx.
"""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Server, start_llm_server


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    # a short context keeps every fuzzed generation short; a small queue makes the flood cheap
    server = start_llm_server(tiny_llama, "--max-model-len", "64", "--max-num-seqs", "4",
                              "--max-queue-size", "8", "--max-request-bytes", "65536")
    yield server
    assert server.proc.poll() is None, "the runtime crashed"
    assert server.stop() == 0


def post(server: Server, path: str, body: bytes) -> tuple[int, dict[str, str], Any]:
    status, headers, raw = server.request("POST", path, body,
                                          {"Content-Type": "application/json"})
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = raw
    return status, headers, doc


def assert_openai_error(status: int, doc: Any, want: int) -> None:
    assert status == want, doc
    assert isinstance(doc, dict) and set(doc) == {"error"}, doc
    err = doc["error"]
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and "param" in err and "code" in err


def assert_serving(server: Server) -> None:
    status, _, doc = post(server, "/v1/completions",
                          b'{"model": "tiny", "prompt": "Hello", "max_tokens": 3}')
    assert status == 200, doc
    assert doc["usage"]["completion_tokens"] >= 1 or doc["choices"][0]["finish_reason"] == "stop"


CHAT = "/v1/chat/completions"
COMPL = "/v1/completions"
BAD: list[tuple[str, Any, int, str]] = [
    (COMPL, {"model": "gpt-4", "prompt": "hi"}, 404, "does not exist"),
    (CHAT, {"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}, 404,
     "does not exist"),
    (COMPL, {"prompt": "word " * 100, "max_tokens": 4}, 400, "maximum context length"),
    (COMPL, {"prompt": "hi", "max_tokens": 64}, 400, "maximum context length"),
    (CHAT, {"messages": [{"role": "user", "content": "word " * 100}]}, 400,
     "maximum context length"),
    (COMPL, {"prompt": "hi", "max_tokens": 0}, 400, "at least 1"),
    (COMPL, {"prompt": "hi", "max_tokens": -5}, 400, "at least 1"),
    (CHAT, {"messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0}, 400,
     "at least 1"),
    (COMPL, {"prompt": 5}, 400, "'prompt' must be"),
    (COMPL, {"prompt": "hi", "max_tokens": "10"}, 400, "must be an integer"),
    (COMPL, {"prompt": "hi", "max_tokens": 2.5}, 400, "must be an integer"),
    (COMPL, {"prompt": "hi", "temperature": "hot"}, 400, "must be a number"),
    (COMPL, {"prompt": "hi", "temperature": 7}, 400, "between"),
    (COMPL, {"prompt": "hi", "top_p": 0}, 400, "between"),
    (COMPL, {"prompt": "hi", "stream": "yes"}, 400, "must be a boolean"),
    (COMPL, {"prompt": "hi", "stop": 5}, 400, "'stop' must be"),
    (COMPL, {"prompt": "hi", "n": 0}, 400, "at least 1"),
    (COMPL, {"prompt": "hi", "n": 33}, 400, "at most 32"),
    (COMPL, {"prompt": "hi", "stream_options": {"include_usage": True}}, 400, "stream"),
    (COMPL, {"prompt": [1, 2, 99999]}, 400, "outside the vocabulary"),
    (COMPL, {"prompt": ["a", [1, 2]]}, 400, "not both"),
    (COMPL, {"prompt": ["a", ""]}, 400, "empty"),
    (COMPL, {"prompt": ["a"] * 20, "n": 32}, 400, "sequences"),
    (COMPL, {"prompt": "hi", "echo": True, "max_tokens": -1}, 400, "at least 0"),
    (COMPL, {"prompt": "hi", "prompt_logprobs": 1, "stream": True}, 400, "prompt_logprobs"),
    (CHAT, {"messages": [{"role": "user", "content": "hi"}], "echo": 1}, 400, "boolean"),
    (COMPL, {"prompt": ""}, 400, "empty"),
    (CHAT, {"messages": "hi"}, 400, "'messages' must be"),
    (CHAT, {"messages": []}, 400, "'messages' must be"),
    (CHAT, {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "role must be one of"),
    (CHAT, {"messages": [{"role": "user", "content": 3}]}, 400, "content must be"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "only text"),
    (CHAT, {"messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, 400,
     "logprobs"),
    (CHAT, [1, 2], 400, "JSON object"),
    (COMPL, {"prompt": "hi", "logit_bias": [1, 2]}, 400, "'logit_bias' must be"),
    (COMPL, {"prompt": "hi", "logit_bias": {"x": 1}}, 400, "not a token id"),
    (COMPL, {"prompt": "hi", "logit_bias": {"99999": 1}}, 400, "outside the vocabulary"),
    (CHAT, {"messages": [{"role": "user", "content": "hi"}], "logit_bias": {"5": 101}}, 400,
     "-100..100"),
    # an unpaired surrogate escape (json.dumps writes "\ud800"): not text a tokenizer can take
    (COMPL, {"prompt": "hi\ud800"}, 400, "prompt holds a lone UTF-16 surrogate"),
    (CHAT, {"messages": [{"role": "user", "content": "\udfff"}]}, 400,
     "messages[0].content holds a lone"),
    (CHAT, {"messages": [{"role": "user", "content": "hi"}], "stop": ["\ud800"]}, 400,
     "stop[0] holds a lone"),
    (CHAT, {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {
            "name": "f", "arguments": "[" * 5000 + "]" * 5000}}]}]}, 400,
     "arguments is not valid JSON"),
    (CHAT, {"messages": [{"role": "user", "content": "hi"}],
            "guided_json": "[" * 5000 + "]" * 5000}, 400, "the JSON schema is not valid JSON"),
]


@pytest.mark.parametrize(("path", "doc", "status", "text"), BAD,
                         ids=[f"{i}-{b[3][:20]}" for i, b in enumerate(BAD)])
def test_bad_requests_are_clean_4xx(server: Server, path: str, doc: Any, status: int,
                                    text: str) -> None:
    got, _, body = post(server, path, json.dumps(doc).encode())
    assert_openai_error(got, body, status)
    assert text in body["error"]["message"], body


def test_malformed_bodies_methods_and_routes(server: Server) -> None:
    deep = b'{"prompt": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"  # past json.loads' depth
    for raw in (b'{"prompt": "hi", ', b"", b"\xff\xfe", b"null", b'"text"', deep):
        status, _, doc = post(server, COMPL, raw)
        assert_openai_error(status, doc, 400)
    status, _, doc = post(server, COMPL, b'{"prompt": "' + b"a" * 70000 + b'"}')
    assert_openai_error(status, doc, 413)
    status, headers, raw = server.request("GET", COMPL)
    assert_openai_error(status, json.loads(raw), 405)
    assert headers["allow"] == "POST"  # RFC 9110: a 405 names the methods the route takes
    for method, path in (("POST", "/health"), ("OPTIONS", "/v1/models"), ("DELETE",
                                                                          "/v1/models/tiny")):
        status, headers, raw = server.request(method, path, b"{}")
        assert_openai_error(status, json.loads(raw), 405)
        assert headers["allow"] == "GET, HEAD", (method, path)
    status, _, raw = server.request("POST", "/v1/embeddings", b"{}")  # 400, as vLLM answers
    assert_openai_error(status, json.loads(raw), 400)  # a generating model's embeddings
    status, _, raw = server.request("GET", "/v1/models/other")
    assert_openai_error(status, json.loads(raw), 404)
    assert_serving(server)


def metric(server: Server, name: str) -> float:
    m = re.search(rf'^{re.escape(name)}\{{model_name="tiny"\}} (\S+)$', server.metrics(),
                  re.MULTILINE)
    assert m, name
    return float(m.group(1))


def wait_for(check: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def test_disconnect_mid_stream_frees_the_cache(server: Server) -> None:
    assert server.port is not None
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 60, "ignore_eos": True,
                       "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    received = b""
    while received.count(b"data: ") < 3:  # the stream is running
        received += sock.recv(4096)
    assert metric(server, "vllm:kv_cache_usage_perc") > 0
    aborted = server.metrics().count('finished_reason="abort"} 0')
    sock.close()
    wait_for(lambda: metric(server, "vllm:kv_cache_usage_perc") == 0
             and metric(server, "vllm:num_requests_running") == 0)
    assert aborted == 1  # the counter was 0 before...
    wait_for(lambda: 'finished_reason="abort"} 1' in server.metrics())  # ...and counts it
    assert_serving(server)


def test_disconnect_mid_stream_cancels_every_choice(server: Server) -> None:
    assert server.port is not None
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 60, "ignore_eos": True,
                       "stream": True, "n": 3}).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    received = b""
    while received.count(b"data: ") < 6:  # the three choices are streaming
        received += sock.recv(4096)
    assert metric(server, "vllm:num_requests_running") == 3
    sock.close()
    wait_for(lambda: metric(server, "vllm:kv_cache_usage_perc") == 0
             and metric(server, "vllm:num_requests_running") == 0)
    assert_serving(server)


def test_disconnect_while_waiting_for_a_whole_answer(server: Server) -> None:
    assert server.port is not None
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 60,
                       "ignore_eos": True}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: " + str(len(body)).encode()
                     + b"\r\n\r\n" + body)
        wait_for(lambda: metric(server, "vllm:num_requests_running") == 1)
    wait_for(lambda: metric(server, "vllm:kv_cache_usage_perc") == 0
             and metric(server, "vllm:num_requests_running") == 0)
    assert_serving(server)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_more_choices_than_the_queue_holds_are_refused_and_leave_nothing(server: Server
                                                                         ) -> None:
    """n = 9, or three prompts x 3, against a queue of 8 could never be served: 400 (not a 429
    to retry forever), nothing enters the engine, and n = 8 fits."""
    for doc in ({"prompt": "Once upon a time", "max_tokens": 4, "n": 9},
                {"prompt": ["Once", "upon", "a time"], "max_tokens": 4, "n": 3}):
        status, _, body = post(server, COMPL, json.dumps(doc).encode())
        assert_openai_error(status, body, 400)
        assert "9 sequences" in body["error"]["message"]
    assert metric(server, "vllm:num_requests_running") == 0
    assert metric(server, "vllm:num_requests_waiting") == 0
    status, _, body = post(server, COMPL, json.dumps(
        {"prompt": "Once upon a time", "max_tokens": 4, "n": 8}).encode())
    assert status == 200 and len(body["choices"]) == 8


def test_flood_beyond_the_queue_gets_429(server: Server) -> None:
    before = rss_kib(server.proc.pid)
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 40,
                       "ignore_eos": True}).encode()

    def one(_: int) -> tuple[int, dict[str, str], Any]:
        return post(server, COMPL, body)

    with ThreadPoolExecutor(48) as pool:
        results = list(pool.map(one, range(200)))
    statuses = [s for s, _, _ in results]
    assert set(statuses) <= {200, 429}, statuses
    assert statuses.count(429) > 0 and statuses.count(200) >= 8
    for status, headers, doc in results:
        if status == 429:
            assert_openai_error(status, doc, 429)
            assert headers["retry-after"] == "1"
    growth_mib = (rss_kib(server.proc.pid) - before) / 1024
    assert growth_mib < 100, f"RSS grew {growth_mib:.0f} MiB during the flood"
    wait_for(lambda: metric(server, "vllm:num_requests_running") == 0
             and metric(server, "vllm:kv_cache_usage_perc") == 0)
    assert re.search(r'kubemaas_llm_requests_rejected_total\{model_name="tiny"\} [1-9]',
                     server.metrics())
    assert_serving(server)


json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(
    max_size=8)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=5)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                           max_leaves=20)
small_ints = st.integers(-3, 6)
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", "developer", "bot"])
     | json_values},
    optional={"content": st.text(max_size=30) | st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url"]), "text": st.text(max_size=10)}),
        max_size=2) | json_values,
        "tool_calls": st.lists(st.fixed_dictionaries({"function": st.fixed_dictionaries(
            {"name": st.text(max_size=3), "arguments": st.sampled_from(['{"x": 1}', "{no"])})
            | json_values}), max_size=2) | json_values})
common = {
    "model": st.sampled_from(["tiny", "other"]) | json_values,
    "max_tokens": small_ints | json_values,
    "temperature": st.floats(-1, 3) | st.sampled_from([1e-300, 1e-40]) | json_values,
    "top_p": st.floats(-0.5, 1.5) | json_values, "top_k": small_ints | json_values,
    "seed": st.integers(-(2**70), 2**70) | json_values, "stop": st.text(max_size=3)
    | st.lists(st.text(max_size=3), max_size=3) | json_values,
    "stream": st.booleans() | json_values,
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()
                                                          | json_values}) | json_values,
    "logprobs": st.booleans() | small_ints | json_values, "top_logprobs": small_ints,
    "n": small_ints, "stop_token_ids": st.lists(st.integers(-5, 2000), max_size=3)
    | json_values, "ignore_eos": st.booleans() | json_values,
    "max_completion_tokens": small_ints | json_values,
    "presence_penalty": st.floats(-3, 3) | json_values,
    "frequency_penalty": st.floats(-3, 3) | json_values,
    "repetition_penalty": st.floats(-1, 11) | st.sampled_from([1e-300, 0.01]) | json_values,
    "cache_salt": st.text(max_size=4) | json_values,
    "priority": st.integers(-2, 2) | json_values,
    "use_beam_search": st.booleans() | json_values,
    "length_penalty": st.floats(-2, 3) | json_values,
    "logit_bias": st.dictionaries(st.integers(-3, 1100).map(str), st.floats(-150, 150),
                                  max_size=3) | json_values,
    "prompt_logprobs": small_ints | json_values,
    "response_format": st.sampled_from([{"type": "text"}, {"type": "json_object"},
                                        {"type": "json_schema", "json_schema": {"schema": {
                                            "type": "object", "properties": {
                                                "a": {"type": "boolean"}}}}}])
    | json_values,
    "structured_outputs": st.fixed_dictionaries({}, optional={
        "regex": st.sampled_from(["[0-9]{2}", "(a|b)+", "(", "x{3,1}"]) | st.text(max_size=6),
        "choice": st.lists(st.text(max_size=4), max_size=3),
        "grammar": st.sampled_from(['root ::= "a" | "b"', "root ::= nothing", "start: /a+/"]),
        "json": json_values}) | json_values,
    "guided_choice": st.lists(st.text(max_size=4), max_size=3) | json_values,
    "truncate_prompt_tokens": small_ints | json_values,
    "include_stop_str_in_output": st.booleans() | json_values,
    "skip_special_tokens": st.booleans() | json_values,
    "allowed_token_ids": st.lists(st.integers(-3, 1100), max_size=3) | json_values,
    "bad_words": st.lists(st.text(max_size=5), max_size=3) | json_values,
}
tool = st.fixed_dictionaries({"type": st.sampled_from(["function", "other"]) | json_values,
                              "function": st.fixed_dictionaries(
                                  {"name": st.sampled_from(["f", "g", "bad name"])},
                                  optional={"parameters": st.sampled_from([
                                      {"type": "object", "properties": {"x": {
                                          "type": "integer"}}}, {"type": "nonsense"}])
                                      | json_values}) | json_values})
completion_docs = st.fixed_dictionaries(
    {"prompt": st.text(max_size=40) | st.lists(st.integers(-3, 1100), max_size=8)
     | st.lists(st.text(max_size=10), max_size=3)
     | st.lists(st.lists(st.integers(-3, 1100), max_size=4), max_size=3) | json_values},
    optional={**common, "echo": st.booleans() | json_values})
chat_docs = st.fixed_dictionaries(
    {"messages": st.lists(message, max_size=3) | json_values},
    optional={**common, "tools": st.lists(tool, max_size=3) | json_values,
              "tool_choice": st.sampled_from(["none", "auto", "required", {
                  "type": "function", "function": {"name": "f"}}]) | json_values,
              "parallel_tool_calls": st.booleans() | json_values,
              "add_generation_prompt": st.booleans() | json_values,
              "continue_final_message": st.booleans() | json_values,
              "chat_template_kwargs": st.dictionaries(
                  st.sampled_from(["tokenize", "x", "messages", "enable_thinking"]),
                  json_values, max_size=2) | json_values,
              "reasoning_effort": st.sampled_from(["none", "low", "max", "huge"])
              | json_values, "include_reasoning": st.booleans() | json_values,
              "thinking_token_budget": small_ints | json_values,
              "documents": st.lists(st.dictionaries(st.sampled_from(["title", "text"]),
                                                    st.text(max_size=5) | json_values,
                                                    max_size=2), max_size=2) | json_values})


input_item = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(["message", "function_call", "function_call_output", "reasoning"])
    | json_values, "role": st.sampled_from(["user", "assistant", "developer", "tool"])
    | json_values, "content": st.text(max_size=20) | st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["input_text", "output_text", "input_image"]),
         "text": st.text(max_size=10)}), max_size=2) | json_values,
    "call_id": st.sampled_from(["c1", "c2"]) | json_values,
    "name": st.sampled_from(["f", "g"]) | json_values,
    "arguments": st.sampled_from(['{"x": 1}', "{no"]) | json_values,
    "output": st.text(max_size=10) | json_values})
responses_docs = st.fixed_dictionaries(
    {"input": st.text(max_size=30) | st.lists(input_item, max_size=3) | json_values},
    optional={**{k: common[k] for k in ("model", "temperature", "top_p", "top_k", "seed",
                                        "stream", "top_logprobs", "structured_outputs")},
              "max_output_tokens": small_ints | json_values,
              "instructions": st.text(max_size=10) | json_values,
              "tools": st.lists(st.fixed_dictionaries(
                  {"type": st.sampled_from(["function", "web_search"]) | json_values,
                   "name": st.sampled_from(["f", "g", "bad name"]) | json_values}), max_size=2)
              | json_values,
              "tool_choice": st.sampled_from(["none", "auto", "required", {
                  "type": "function", "name": "f"}]) | json_values,
              "text": st.fixed_dictionaries({"format": st.sampled_from([
                  {"type": "text"}, {"type": "json_object"}, {"type": "json_schema",
                                                              "name": "x", "schema": {}}])
                  | json_values}) | json_values,
              "include": st.lists(st.sampled_from(["message.output_text.logprobs", "x"]),
                                  max_size=2) | json_values,
              "metadata": st.dictionaries(st.text(max_size=3), st.text(max_size=3),
                                          max_size=3) | json_values,
              "previous_response_id": st.none() | st.text(max_size=4),
              "reasoning": st.none() | json_values | st.fixed_dictionaries({}, optional={
                  "effort": st.sampled_from(["low", "none", "odd"]) | json_values,
                  "summary": st.sampled_from(["auto", None])}),
              "truncation": json_values})


@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.tuples(st.just(COMPL), completion_docs) | st.tuples(st.just(CHAT), chat_docs)
       | st.tuples(st.just("/v1/responses"), responses_docs))
def test_fuzz_no_5xx(server: Server, case: tuple[str, Any]) -> None:
    assert_no_5xx(server, *case)


def assert_no_5xx(server: Server, path: str, doc: Any) -> None:
    """A fuzzed body: never a 5xx, and a refusal in OpenAI's error shape."""
    try:
        raw = json.dumps(doc).encode()
    except ValueError:
        return  # not expressible as JSON (NaN is: json.dumps writes it; the server rejects it)
    status, _, body = post(server, path, raw)
    assert status < 500, body
    if status != 200:
        assert_openai_error(status, body, status)


def test_still_serving_after_the_fuzz(server: Server) -> None:
    assert_serving(server)
    assert metric(server, "vllm:kv_cache_usage_perc") == 0
