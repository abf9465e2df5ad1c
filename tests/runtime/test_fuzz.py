"""Fuzz the REST endpoints with hypothesis: zero 5xx, zero crashes, every error is JSON.

Bounded: a few hundred examples against one runtime process on 127.0.0.1 (with batching on, so the
batcher sees the odd shapes too), then the server must still answer a valid request.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import Server, start_server

DATATYPES = ["BOOL", "UINT8", "UINT64", "INT8", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"]
PATHS = ["/v2/models/tiny/infer", "/v2/models/tiny/versions/1/infer", "/v1/models/tiny:predict",
         "/v2/models/other/infer", "/v2/models/tiny", "/v2/models/tiny/ready", "/v2",
         "/v2/health/ready", "/v2/models/tiny/versions/x/infer", "/v1/models/tiny"]

json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(
    max_size=8)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=6)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                           max_leaves=30)
shapes = st.lists(st.integers(-2, 9), max_size=4) | st.lists(st.integers(0, 2**40), max_size=3)
numbers = st.integers(-300, 300) | st.floats(allow_nan=True, allow_infinity=True) | st.booleans()
tensor = st.fixed_dictionaries(
    {"name": st.sampled_from(["x", "y", ""]) | st.text(max_size=4),
     "shape": shapes | json_values,
     "datatype": st.sampled_from(DATATYPES) | st.text(max_size=5)},
    optional={"data": st.lists(numbers, max_size=40) | st.lists(st.lists(numbers, max_size=5),
                                                                max_size=8) | json_values,
              "parameters": st.fixed_dictionaries(
                  {}, optional={"binary_data_size": st.integers(-5, 80) | json_values})})
requested = st.lists(st.fixed_dictionaries(
    {"name": st.sampled_from(["y", "z", "nope"]) | json_values},
    optional={"parameters": st.fixed_dictionaries({"binary_data": st.booleans() | json_values})}),
    max_size=3)
documents = st.fixed_dictionaries(
    {"inputs": st.lists(tensor, max_size=3) | json_values},
    optional={"outputs": requested | json_values, "id": st.text(max_size=5) | json_values,
              "parameters": st.fixed_dictionaries(
                  {}, optional={"binary_data_output": st.booleans() | json_values}) | json_values,
              "instances": st.lists(st.lists(numbers, max_size=5), max_size=4) | json_values})


@pytest.fixture(scope="module")
def fuzz_server(tiny_onnx: Path) -> Iterator[Server]:
    server = start_server(["--model-uri", str(tiny_onnx), "--name", "tiny", "--max-batch-size",
                           "8", "--max-request-bytes", "4096", "--log-level", "warning"])
    yield server
    assert server.proc.poll() is None, "the runtime crashed during the fuzz run"
    assert server.stop() == 0


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def send(self, method: str, path: str, body: bytes,
             headers: dict[str, str]) -> tuple[int, bytes]:
        try:
            self.conn.request(method, path, body=body, headers=headers)
            resp = self.conn.getresponse()
            data = resp.read()
            if resp.getheader("Connection", "").lower() == "close":
                self.conn.close()
            return resp.status, data
        except (http.client.HTTPException, ConnectionError):
            self.conn.close()
            raise


# Bytes that are not valid HTTP (say a control character in a header value) are refused by
# aiohttp's parser with a plain-text 400 before any handler runs; the generators stay inside HTTP
# so that every answer here comes from our endpoints.
def check(status: int, body: bytes) -> None:
    assert status < 500, body[:500]
    if status >= 400:
        assert "error" in json.loads(body)


@settings(max_examples=250, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(doc=documents, path=st.sampled_from(PATHS), method=st.sampled_from(["POST", "GET"]),
       tail=st.binary(max_size=64), header_len=st.none() | st.integers(-3, 400) | st.text(
           alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=4))
def test_fuzz_infer_documents(fuzz_server: Server, doc: Any, path: str, method: str, tail: bytes,
                              header_len: Any) -> None:
    assert fuzz_server.port is not None
    client = Client(fuzz_server.port)
    try:
        header = json.dumps(doc).encode()
        headers = {"Content-Type": "application/json"}
        body = header
        if header_len is not None:
            body = header + tail
            value = str(len(header)) if header_len == 0 else str(header_len)
            headers["Inference-Header-Content-Length"] = value
        status, data = client.send(method, path, body, headers)
        check(status, data)
    finally:
        client.conn.close()


@settings(max_examples=100, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=st.binary(max_size=300), path=st.sampled_from(PATHS) | st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126), max_size=30).map(
        lambda s: "/" + s))
def test_fuzz_raw_bodies(fuzz_server: Server, body: bytes, path: str) -> None:
    assert fuzz_server.port is not None
    client = Client(fuzz_server.port)
    try:
        status, data = client.send("POST", path, body, {})
        check(status, data)
    finally:
        client.conn.close()


def test_still_serving_after_fuzz(fuzz_server: Server) -> None:
    status, doc = fuzz_server.post_json("/v2/models/tiny/infer", {"inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    assert status == 200, doc
    assert 'outcome="server_error"' not in fuzz_server.metrics()
