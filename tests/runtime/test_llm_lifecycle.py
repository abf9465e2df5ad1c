"""The OpenAI server's HTTP lifecycle under clients that do what HTTP allows but few do: a client
that sends ``Expect: 100-continue`` and waits for the go-ahead before its body."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Server, start_llm_server


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    server = start_llm_server(tiny_llama)
    yield server
    assert server.stop() == 0


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions", "/tokenize"])
def test_expect_100_continue_is_answered(server: Server, path: str) -> None:
    """A client that waits for ``100 Continue`` before its body (curl does, 1 s, for bodies over
    1 MiB; some wait until their own timeout) gets it at once, then its answer; it got nothing
    until the body watchdog closed the connection."""
    doc = {"model": "tiny", "max_tokens": 3, "prompt": "Once upon a time",
           "messages": [{"role": "user", "content": "hello"}]}
    if path == "/v1/completions":
        del doc["messages"]
    else:
        del doc["prompt"]
    body = json.dumps(doc).encode()
    assert server.port is not None
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     f"application/json\r\nExpect: 100-continue\r\nContent-Length: "
                     f"{len(body)}\r\nConnection: close\r\n\r\n".encode())
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])


def test_an_oversized_body_is_refused_before_the_go_ahead(server: Server) -> None:
    """A Content-Length over the limit is a 413 without 100 Continue: the body is never sent."""
    assert server.port is not None
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue"
                     b"\r\nContent-Length: 999999999\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 413")
