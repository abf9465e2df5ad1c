"""How a streamed answer reaches the client: token chunks written as the engine delivers them
(protocol/openai_direct.py) on HTTP/1.1, the handler's writes on HTTP/1.0 (no chunked framing),
and a long answer written while its client reads nothing, read whole afterwards. (Whether the
deltas go back to the handler when the connection backs up is tested on a transport with small
socket buffers, tests/unit/test_llm_direct_stream.py: on loopback the kernel's buffers here
take the whole answer.)"""

from __future__ import annotations

import http.client
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import wait_for

from .conftest import Server, start_llm_server

MESSAGES = [{"role": "user", "content": "the quick brown fox"}]


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    server = start_llm_server(tiny_llama, "--max-model-len", "2048")
    yield server
    assert server.stop() == 0


def answer(server: Server, max_tokens: int) -> str:
    status, body = server.post_json("/v1/chat/completions", {
        "model": "tiny", "messages": MESSAGES, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": True})
    assert status == 200, body
    return str(body["choices"][0]["message"]["content"])


def events(body: bytes) -> list[Any]:
    blocks = [b for b in body.decode().split("\n\n") if b.strip()]
    assert all(b.startswith("data: ") for b in blocks), blocks[:3]
    assert blocks[-1] == "data: [DONE]"
    return [json.loads(b[len("data: "):]) for b in blocks[:-1]]


def check_stream(evs: list[Any], text: str, tokens: int) -> None:
    """Role first, one chunk per token, the finish, the usage; the text is the answer's. (A
    last token that completes no character has no chunk of its own: the finish carries it.)"""
    assert evs[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    token_events = [e for e in evs[1:] if e["choices"] and e["choices"][0]["finish_reason"]
                    is None]
    assert tokens - 1 <= len(token_events) <= tokens
    assert "".join(e["choices"][0]["delta"]["content"] for e in token_events) == text
    assert evs[-2]["choices"][0]["finish_reason"] == "length"
    assert evs[-1]["usage"]["completion_tokens"] == tokens


def stream_body(max_tokens: int, include_usage: bool = True) -> bytes:
    return json.dumps({"model": "tiny", "messages": MESSAGES, "max_tokens": max_tokens,
                       "temperature": 0, "ignore_eos": True, "stream": True,
                       "stream_options": {"include_usage": include_usage}}).encode()


def test_an_http10_client_gets_the_whole_stream_unchunked(server: Server) -> None:
    assert server.port is not None
    body = stream_body(24)
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                     % (len(body), body))
        raw = b""
        while chunk := sock.recv(65536):  # the server closes the connection at the end
            raw += chunk
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200"), head
    assert b"chunked" not in head.lower()
    check_stream(events(payload), answer(server, 24), 24)


def running(server: Server) -> float:
    m = re.search(r'^vllm:num_requests_running\{model_name="tiny"\} (\S+)$', server.metrics(),
                  re.MULTILINE)
    assert m
    return float(m.group(1))


def test_a_long_answer_read_after_it_was_written_is_whole_and_in_order(server: Server) -> None:
    """The client reads nothing until the engine has finished the whole answer (~1,500
    chunks, ~300 KB, each written as the engine delivered it): every chunk arrives, framed,
    in order."""
    assert server.port is not None
    tokens = 1500
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(60)
    sock.connect(("127.0.0.1", server.port))
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    conn.sock = sock
    try:
        conn.request("POST", "/v1/chat/completions", body=stream_body(tokens),
                     headers={"Content-Type": "application/json"})
        wait_for(lambda: running(server) == 1, 60, "the request admitted", interval=0.02)
        wait_for(lambda: running(server) == 0, 120, "every token generated and delivered",
                 interval=0.02)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
        body = resp.read()
    finally:
        conn.close()
    check_stream(events(body), answer(server, tokens), tokens)
