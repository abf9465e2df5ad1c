"""The OpenAI server's HTTP lifecycle: a client that sends ``Expect: 100-continue`` and waits for
the go-ahead before its body; a SIGTERM whose drain times out with generations in flight; the
shutdown delay, not ready but serving."""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from .conftest import Server, start_llm_server
from .test_llm_bad_input import wait_for


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


def raw_post(port: int, path: str, doc: dict[str, object]) -> bytes:
    """The whole HTTP answer to one request on its own connection, read until the server closes."""
    body = json.dumps(doc).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                     f"application/json\r\nContent-Length: {len(body)}\r\nConnection: close"
                     f"\r\n\r\n".encode() + body)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def ending(answer: bytes, stream: bool) -> str:
    """How an answer ended: "finished" (its own finish, then [DONE] on a stream) or "cut" (a
    503 error object; on a stream an error event, then [DONE]); anything else fails."""
    head, _, body = answer.partition(b"\r\n\r\n")
    if not stream:
        doc = json.loads(body)
        if head.startswith(b"HTTP/1.1 200"):
            assert doc["choices"][0]["finish_reason"] == "length", doc
            return "finished"
        assert head.startswith(b"HTTP/1.1 503"), answer[:300]
        assert doc["error"]["type"] == "service_unavailable_error", doc
        return "cut"
    assert head.startswith(b"HTTP/1.1 200"), answer[:300]
    # chunked framing: the events are the lines that start with "data: "
    events = [line[6:] for line in body.split(b"\n") if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]", answer[-300:]
    last = json.loads(events[-2])
    if "error" in last:
        assert last["error"]["type"] == "service_unavailable_error", last
        assert "shutting down" in last["error"]["message"], last
        return "cut"
    assert last["choices"][0]["finish_reason"] == "length", last
    return "finished"


def test_sigterm_past_the_drain_timeout_ends_every_request_cleanly(tiny_llama: Path) -> None:
    """Generations still running when --drain-timeout-s runs out end at once: a stream with an
    error event (503, "the server is shutting down") then [DONE], a whole answer with a 503,
    and the process exits soon after. They ran on until they finished (aiohttp's own 60 s
    shutdown grace), so a pod outlived its terminationGracePeriodSeconds and was killed with
    every stream cut mid-chunk."""
    server = start_llm_server(tiny_llama, "--drain-timeout-s", "1", "--max-num-seqs", "1",
                              "--max-queue-size", "32")
    try:
        assert server.port is not None
        port, tokens = server.port, {"max_tokens": 400, "ignore_eos": True}
        cases = [("/v1/completions", {"prompt": f"story {i}", "stream": i % 2 == 0, **tokens})
                 for i in range(6)]
        cases += [("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}],
                                            "stream": True, **tokens}),
                  ("/v1/completions", {"prompt": "beams", "n": 2, "use_beam_search": True,
                                       "stream": True, **tokens})]
        with ThreadPoolExecutor(len(cases)) as pool:
            answers = [pool.submit(raw_post, port, path, {"model": "tiny", **doc})
                       for path, doc in cases]
            wait_for(lambda: "vllm:num_requests_running{model_name=\"tiny\"} 1" in
                     server.metrics())
            sent = time.monotonic()
            assert server.stop(timeout=30) == 0
            took = time.monotonic() - sent
            ends = [ending(a.result(timeout=10), bool(doc.get("stream")))
                    for a, (_, doc) in zip(answers, cases, strict=True)]
    finally:
        server.stop()
    assert took < 5, f"exited {took:.1f} s after SIGTERM with a drain timeout of 1 s"
    assert "cut" in ends, ends  # the queue held more than a second of generation


def test_the_shutdown_delay_keeps_serving_while_not_ready(tiny_llama: Path) -> None:
    """--shutdown-delay-s: after SIGTERM readiness is 503 at once (/health, /v1/models) while
    generation requests are still answered until the delay ends, so that the requests a
    Service sends before it drops the pod are served (as the v2 server does). They were
    refused with 503 "the server is shutting down" from the SIGTERM on."""
    server = start_llm_server(tiny_llama, "--shutdown-delay-s", "3", "--drain-timeout-s", "1")
    try:
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: any(d.get("msg") == "draining" for d in server.logs()))
        assert server.request("GET", "/health")[0] == 503
        assert server.request("GET", "/v1/models")[0] == 503
        for path, doc in [("/v1/completions", {"prompt": "Once upon a time"}),
                          ("/v1/chat/completions",
                           {"messages": [{"role": "user", "content": "hello"}]})]:
            status, body = server.post_json(path, {"model": "tiny", "max_tokens": 3, **doc})
            assert status == 200, body
        assert server.proc.wait(20) == 0
    finally:
        server.stop()


def test_pooling_requests_past_the_drain_timeout_get_a_503(tiny_llama: Path) -> None:
    """An embedding server's requests still queued when --drain-timeout-s runs out are answered
    503 ("the server is shutting down") and the process exits soon after; they were dropped
    with the connection, no answer at all."""
    server = start_llm_server(tiny_llama, "--runner", "pooling", "--drain-timeout-s", "1",
                              "--max-num-seqs", "1", "--max-queue-size", "4096")
    try:
        assert server.port is not None
        port = server.port
        # about 20 s of embedding here: far more than the drain timeout
        doc = {"model": "tiny", "input": ["a long story " * 40] * 128}
        with ThreadPoolExecutor(16) as pool:
            answers = [pool.submit(raw_post, port, "/v1/embeddings", doc) for _ in range(16)]
            wait_for(lambda: "vllm:num_requests_running{model_name=\"tiny\"} 1" in
                     server.metrics())
            sent = time.monotonic()
            assert server.stop(timeout=30) == 0
            took = time.monotonic() - sent
            heads = [a.result(timeout=10).partition(b"\r\n\r\n") for a in answers]
    finally:
        server.stop()
    codes = sorted(head[9:12].decode() for head, _, _ in heads)
    assert set(codes) <= {"200", "503"} and "503" in codes, codes
    assert took < 5, f"exited {took:.1f} s after SIGTERM with a drain timeout of 1 s"
    for head, _, body in heads:
        if head.startswith(b"HTTP/1.1 503"):
            error = json.loads(body)["error"]
            assert "shutting down" in error["message"], error


def test_bodies_in_flight_are_bounded(tiny_llama: Path) -> None:
    """--max-inflight-bytes bounds the bodies being read and parsed, counted as they arrive:
    clients that each hold a large body half sent could add up to any memory (16 MiB each by
    default), where the tensor server already refused past the bound."""
    server = start_llm_server(tiny_llama, "--max-request-bytes", "2048",
                              "--max-inflight-bytes", "4096")
    body = json.dumps({"model": "tiny", "prompt": "hi", "max_tokens": 2}).encode().ljust(1500)
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body))
    try:
        assert server.port is not None
        port = server.port
        partial = [socket.create_connection(("127.0.0.1", port), timeout=10)
                   for _ in range(2)]
        try:
            for conn in partial:
                conn.sendall(head + body[:1400])
            time.sleep(0.5)  # read and held by the server
            with socket.create_connection(("127.0.0.1", port), timeout=10) as third:
                third.sendall(head + body)
                busy = third.recv(4096)
            assert busy.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in busy, busy[:300]
            assert b"in flight" in busy, busy
            for conn in partial:
                conn.sendall(body[1400:])
                assert conn.recv(4096).startswith(b"HTTP/1.1 200")
        finally:
            for conn in partial:
                conn.close()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as again:
            again.sendall(head + body)  # the budget was given back
            assert again.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        assert server.stop() == 0
