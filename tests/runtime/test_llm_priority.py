"""Priority scheduling, served (``--scheduling-policy priority``, vLLM's): of the requests
waiting behind a running one, the one with the lower ``priority`` is admitted first, whatever
their order of arrival; a server in arrival order refuses a priority."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import Server, start_llm_server


@pytest.fixture(scope="module")
def server(tiny_llama: Path) -> Iterator[Server]:
    server = start_llm_server(tiny_llama, "--scheduling-policy", "priority",
                              "--max-num-seqs", "1", "--max-model-len", "2048")
    yield server
    assert server.stop() == 0


def gauge(server: Server, name: str) -> float:
    found = re.search(rf'^vllm:{name}\{{model_name="tiny"\}} (\S+)$', server.metrics(), re.M)
    assert found, name
    return float(found.group(1))


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.01)


def waiting(server: Server, count: int) -> Callable[[], bool]:
    return lambda: gauge(server, "num_requests_waiting") == count


def test_the_lower_priority_value_is_served_first(server: Server) -> None:
    finished: dict[str, float] = {}

    def complete(name: str, **doc: object) -> None:
        status, body = server.post_json("/v1/completions", {
            "prompt": f"request {name}", "temperature": 0, "ignore_eos": True, **doc})
        assert status == 200, body
        finished[name] = time.monotonic()

    long = threading.Thread(target=complete, args=("long",), kwargs={"max_tokens": 1500})
    long.start()
    wait_until(lambda: gauge(server, "num_requests_running") == 1, "the long one runs")
    threads = []
    # arriving in this order; each answer long enough (tens of milliseconds) that the order
    # in which the client threads see them end is the order in which they were served (with
    # 4 tokens, the one served after the long request once ended before the long request's
    # thread had read its 1,500-token body)
    for name, priority in (("later", 10), ("sooner", -10)):
        threads.append(threading.Thread(target=complete, args=(name,),
                                        kwargs={"max_tokens": 64, "priority": priority}))
        threads[-1].start()
        wait_until(waiting(server, len(threads)), "queued")
    assert "long" not in finished, "the long request ended before both others were queued"
    for thread in (long, *threads):
        thread.join(timeout=60)
    assert finished["long"] < finished["sooner"] < finished["later"]


def test_a_priority_is_checked(server: Server) -> None:
    status, body = server.post_json("/v1/completions", {"prompt": "a", "priority": "high"})
    assert status == 400 and body["error"]["param"] == "priority"
