"""A beam search against the queue limit (``--max-queue-size``): it holds its width's worth of
room from admission to its end, so it is refused at once (429) when that room is not there,
never waits for room once admitted, and leaves to ordinary requests only the room that is
really free; a search whose client goes away, or that a batch's refusal cancels, gives its
room back."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server, start_llm_server

LIMIT = 4  # the server's --max-queue-size
LONG = {"prompt": "the lazy dog", "max_tokens": 500, "ignore_eos": True}  # seconds of decoding


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    server = start_llm_server(tiny_llama, "--max-queue-size", str(LIMIT))
    yield server
    assert server.stop() == 0


class Stream:
    """A streamed completion whose response headers (sent once the engine took the request)
    have arrived; ``status`` 429 when it was refused."""

    def __init__(self, server: Server, doc: dict[str, Any]) -> None:
        assert server.port is not None
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        self.conn.request("POST", "/v1/completions", json.dumps({**doc, "stream": True}),
                          {"Content-Type": "application/json"})
        self.resp = self.conn.getresponse()
        self.status = self.resp.status
        self.headers = {k.lower(): v for k, v in self.resp.getheaders()}
        self.body = b""
        self.ended_at: float | None = None

    def read(self) -> bytes:
        self.body = self.resp.read()
        self.ended_at = time.monotonic()
        self.conn.close()
        return self.body

    def close(self) -> None:
        self.conn.close()


def beam(prompt: Any, n: int, max_tokens: int) -> dict[str, Any]:
    return {"prompt": prompt, "n": n, "max_tokens": max_tokens, "use_beam_search": True,
            "ignore_eos": True, "return_token_ids": True}


def token_ids(doc: dict[str, Any]) -> list[list[int]]:
    return [c["token_ids"] for c in doc["choices"]]


def wait_for_room(server: Server, timeout: float = 10) -> float:
    """Seconds until a beam search as wide as the whole queue is admitted (every request
    and reservation of a test has gone)."""
    start = time.monotonic()
    while True:
        status, doc = server.post_json("/v1/completions", beam("hi", LIMIT, 1))
        if status == 200:
            return time.monotonic() - start
        assert status == 429, doc
        assert time.monotonic() - start < timeout, "the queue's room did not come back"
        time.sleep(0.02)


def is_refused_at_once(status: int, doc: dict[str, Any], took: float) -> None:
    assert status == 429, doc
    assert doc["error"]["code"] == "rate_limit_exceeded", doc
    assert took < 1.0, f"the refusal took {took:.2f} s"


def test_a_beam_search_without_its_room_is_refused_at_once(server: Server) -> None:
    """With 3 of 4 places held by long requests, a search of width 2 could only wait for
    room: it is a 429 at once, and the place it did not take still serves an ordinary one."""
    wait_for_room(server)
    held = [Stream(server, LONG) for _ in range(LIMIT - 1)]
    try:
        assert [s.status for s in held] == [200] * (LIMIT - 1)
        start = time.monotonic()
        status, doc = server.post_json("/v1/completions", beam("birds sing", 2, 4))
        is_refused_at_once(status, doc, time.monotonic() - start)
        assert "2" in doc["error"]["message"], doc  # says what it needed
        status, doc = server.post_json("/v1/completions", {"prompt": "hi", "max_tokens": 2})
        assert status == 200, doc
    finally:
        for s in held:
            s.close()
    wait_for_room(server)


def test_an_admitted_beam_search_keeps_its_room(server: Server) -> None:
    """A search of width 3 holds 3 of the 4 places from its admission to its end: one long
    request takes the last place, and a client that retries meanwhile gets 429s until the
    search's places come back (its answer then written at once); the search never waits
    behind anyone (it ends long before the long request), with the answers it gives alone."""
    wait_for_room(server)
    status, alone = server.post_json("/v1/completions", beam("Once upon a time", 3, 100))
    assert status == 200, alone
    search = Stream(server, beam("Once upon a time", 3, 100))
    assert search.status == 200
    done = threading.Event()

    def read_search() -> None:
        search.read()
        done.set()

    reader = threading.Thread(target=read_search, daemon=True)
    reader.start()
    long = Stream(server, LONG)
    assert long.status == 200
    refused = 0
    while not done.is_set():
        other = Stream(server, LONG)
        other.close()
        if other.status == 200:  # the search's places came back: it has ended
            reader.join(0.5)  # its answer, not the rest of its 100 rounds
            assert done.is_set(), f"admitted beside the running search after {refused} 429s"
            break
        assert other.status == 429
        refused += 1
        time.sleep(0.01)
    reader.join(60)
    long.read()
    assert refused >= 3, "the search ended before a client could try beside it"
    assert search.ended_at is not None and long.ended_at is not None
    assert search.ended_at < long.ended_at, "the search waited for the long request's room"
    final = [json.loads(b[len(b"data: "):]) for b in search.body.split(b"\n\n")
             if b.startswith(b"data: {")]
    got = sorted((c["index"], c.get("token_ids")) for e in final for c in e["choices"]
                 if c.get("token_ids"))
    assert [ids for _, ids in got] == token_ids(alone)
    wait_for_room(server)


def test_a_client_gone_gives_the_room_back(server: Server) -> None:
    """A search as wide as the queue holds all of it (an ordinary request is refused while it
    runs); once its client goes away the whole room comes back."""
    wait_for_room(server)
    search = Stream(server, beam("the lazy dog", LIMIT, 400))
    assert search.status == 200
    start = time.monotonic()
    status, doc = server.post_json("/v1/completions", {"prompt": "hi", "max_tokens": 2})
    is_refused_at_once(status, doc, time.monotonic() - start)
    search.close()
    assert wait_for_room(server) < 5


def test_a_batch_of_searches_refused_gives_back_what_it_took(server: Server) -> None:
    """Two prompts x width 2 with one place held: the first prompt's search gets its 2
    places, the second's cannot, and the request is a 429 that keeps nothing: a search of
    width 3 is admitted next."""
    wait_for_room(server)
    held = Stream(server, LONG)
    try:
        assert held.status == 200
        start = time.monotonic()
        status, doc = server.post_json("/v1/completions",
                                       beam(["the lazy dog", "birds sing"], 2, 8))
        is_refused_at_once(status, doc, time.monotonic() - start)
        status, doc = server.post_json("/v1/completions", beam("birds sing", LIMIT - 1, 4))
        assert status == 200, doc
    finally:
        held.close()
    wait_for_room(server)
