"""Request ids and the request log (--log-requests) on a real language-model server behind API
keys: the id comes from the X-Request-Id header, else the body's request_id, else is made; it
names the answer (cmpl-, chatcmpl-, resp_ and every streamed chunk), comes back in the response
header, and each request ends in one log record with that id, the API key's name, its status and
its tokens; a client that goes away is a 499 record; a malformed id is a 400."""

from __future__ import annotations

import json
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from .conftest import Server, start_llm_server
from .secrets_helpers import write_secret

KEY = "alice-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
CHAT = {"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4}


@pytest.fixture(scope="module")
def server(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    keys = tmp_path_factory.mktemp("keys") / "keys"
    write_secret(keys, {"alice": KEY.encode()})
    server = start_llm_server(tiny_llama, "--log-level", "info", "--log-requests",
                              "--api-keys-dir", str(keys))
    yield server
    assert server.stop() == 0


def post(server: Server, path: str, doc: Any, **headers: str) -> tuple[int, dict[str, str], Any]:
    status, got, body = server.request("POST", path, json.dumps(doc).encode(),
                                       {**AUTH, **headers})
    text = body.decode()
    return status, got, (json.loads(text) if got["content-type"].startswith(
        "application/json") else text)


def records(server: Server, rid: str, timeout: float = 10) -> list[dict[str, Any]]:
    """The request records of this id (the log is read in a thread: it may trail the answer)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [d for d in server.logs()
                 if d.get("msg") == "request" and d.get("request_id") == rid]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def test_the_header_names_the_answer_and_its_record(server: Server) -> None:
    status, headers, doc = post(server, "/v1/completions",
                                {"prompt": "Once upon", "max_tokens": 5, "ignore_eos": True},
                                **{"X-Request-Id": "gw-7f3a/1"})
    assert status == 200, doc
    assert doc["id"] == "cmpl-gw-7f3a/1" and headers["x-request-id"] == "gw-7f3a/1"
    [record] = records(server, "gw-7f3a/1")
    assert record["logger"] == "kubemaas.runtime.requests" and record["level"] == "info"
    assert record["api_key"] == "alice"
    assert {k: record[k] for k in ("method", "path", "status", "model", "stream")} == {
        "method": "POST", "path": "/v1/completions", "status": 200, "model": "tiny",
        "stream": False}
    assert record["prompt_tokens"] == doc["usage"]["prompt_tokens"]
    assert record["completion_tokens"] == doc["usage"]["completion_tokens"] == 5
    assert record["finish_reason"] == "length"
    assert 0 < record["ttft_seconds"] <= record["seconds"]
    assert "Once upon" not in json.dumps(record)  # no prompt in the log


def test_the_body_names_it_when_no_header_does(server: Server) -> None:
    status, headers, doc = post(server, "/v1/chat/completions",
                                {**CHAT, "request_id": "body-1", "n": 2})
    assert status == 200, doc
    assert doc["id"] == "chatcmpl-body-1" and headers["x-request-id"] == "body-1"
    [record] = records(server, "body-1")
    assert record["completion_tokens"] == doc["usage"]["completion_tokens"]  # both choices
    status, headers, doc = post(server, "/v1/chat/completions", {**CHAT, "request_id": "body-2"},
                                **{"X-Request-Id": "header-2"})
    assert doc["id"] == "chatcmpl-header-2" and headers["x-request-id"] == "header-2"
    assert records(server, "header-2") and not records(server, "body-2", timeout=0)


def test_an_id_is_made_when_none_is_given(server: Server) -> None:
    status, headers, doc = post(server, "/v1/completions", {"prompt": "Hi", "max_tokens": 2})
    assert status == 200
    made = headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", made) and doc["id"] == f"cmpl-{made}"
    assert records(server, made)
    status, headers, doc = post(server, "/v1/responses", {"input": "Hi", "max_output_tokens": 2},
                                **{"X-Request-Id": "resp-1"})
    assert status == 200 and doc["id"] == "resp_resp-1", doc


def test_every_chunk_of_a_stream_carries_the_id(server: Server) -> None:
    status, headers, text = post(server, "/v1/chat/completions", {**CHAT, "stream": True},
                                 **{"X-Request-Id": "stream-1"})
    assert status == 200 and headers["x-request-id"] == "stream-1"
    chunks = [json.loads(b[len("data: "):]) for b in text.split("\n\n")
              if b.startswith("data: {")]
    assert chunks and {c["id"] for c in chunks} == {"chatcmpl-stream-1"}
    [record] = records(server, "stream-1")
    assert record["stream"] is True and record["status"] == 200
    assert record["completion_tokens"] == 4


def test_the_openai_client_sends_and_reads_it(server: Server) -> None:
    with openai.OpenAI(base_url=f"{server.base}/v1", api_key=KEY, max_retries=0) as client:
        raw = client.completions.with_raw_response.create(
            model="tiny", prompt="Once", max_tokens=3, extra_headers={"X-Request-Id": "sdk-1"})
        assert raw.headers["x-request-id"] == "sdk-1"
        assert raw.parse().id == "cmpl-sdk-1"
        chat = client.chat.completions.create(model="tiny", messages=CHAT["messages"],
                                              max_tokens=3, extra_body={"request_id": "sdk-2"})
        assert chat.id == "chatcmpl-sdk-2"


@pytest.mark.parametrize(("headers", "doc", "param"), [
    ({"X-Request-Id": "has space"}, {}, "X-Request-Id"),
    ({"X-Request-Id": "x" * 257}, {}, "X-Request-Id"),
    ({"X-Request-Id": "caf\u00e9"}, {}, "X-Request-Id"),  # sent as latin-1 by http.client
    ({}, {"request_id": 5}, "request_id"),
    ({}, {"request_id": ""}, "request_id"),
    ({}, {"request_id": "a\nb"}, "request_id"),
    ({}, {"request_id": "y" * 257}, "request_id"),
])
def test_a_malformed_id_is_a_400(server: Server, headers: dict[str, str], doc: dict[str, Any],
                                 param: str) -> None:
    status, got, body = post(server, "/v1/completions",
                             {"prompt": "Hi", "max_tokens": 2, **doc}, **headers)
    assert status == 400 and body["error"]["param"] == param, body
    made = got["x-request-id"]  # the refusal is named by an id of its own, and recorded
    assert re.fullmatch(r"[0-9a-f]{32}", made)
    [record] = records(server, made)
    assert record["status"] == 400 and "prompt_tokens" not in record
    assert post(server, "/v1/completions", {"prompt": "Hi", "max_tokens": 2})[0] == 200


def test_a_client_that_goes_away_is_a_499_record(server: Server) -> None:
    assert server.port is not None
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 200, "ignore_eos": True,
                       "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nX-Request-Id: gone-1\r\n"
                     b"Authorization: Bearer " + KEY.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        received = b""
        while received.count(b"data: ") < 3:  # the stream is running
            received += sock.recv(4096)
    [record] = records(server, "gone-1")
    assert record["status"] == 499 and record["finish_reason"] == "abort", record


def test_probes_and_scrapes_are_not_recorded(server: Server) -> None:
    before = sum(d.get("msg") == "request" for d in server.logs())
    for path in ("/health", "/v2/health/ready", "/metrics"):
        assert server.request("GET", path, headers=AUTH)[0] == 200
    status, headers, _ = server.request("GET", "/v1/models", headers={
        **AUTH, "X-Request-Id": "models-1"})
    assert status == 200 and headers["x-request-id"] == "models-1"
    [record] = records(server, "models-1")
    assert sum(d.get("msg") == "request" for d in server.logs()) == before + 1
    assert record["path"] == "/v1/models" and "model" not in record
    # a malformed id refuses no probe, scrape or listing (vLLM reads none of them): a gateway
    # stamping odd ids on its health checks must not take the pod for unhealthy
    for path in ("/health", "/v2/health/ready", "/v2/health/live", "/metrics", "/v1/models",
                 "/version"):
        status, headers, _ = server.request("GET", path, headers={
            **AUTH, "X-Request-Id": "has space"})
        assert status == 200 and headers["x-request-id"] != "has space", path
