"""Browsers on other origins (CORS), with vLLM's flags, on real runtime processes: a preflight
is answered without an API key, the allowed origin's answers (the gate's 401 and a streamed
chat among them) say so, other origins' do not, and without --allowed-origins nothing changes.
The requests are what a browser sends (the Fetch standard's preflight and Origin headers)."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Server, start_llm_server, start_server
from .secrets_helpers import request, write_secret

APP = "https://app.example"
KEY = "alice-0123456789abcdef"
INFER = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                "data": [1.0, 2.0, 3.0, 4.0]}]}).encode()


def preflight(server: Server, path: str, origin: str, method: str = "POST",
              headers: str | None = None) -> tuple[int, dict[str, str], object]:
    assert server.port is not None
    asked = {"Origin": origin, "Access-Control-Request-Method": method}
    if headers is not None:
        asked["Access-Control-Request-Headers"] = headers
    return request(server.port, "OPTIONS", path, None, asked)


@pytest.fixture
def onnx_for_app(tiny_onnx: Path, tmp_path: Path) -> Iterator[Server]:
    write_secret(tmp_path / "keys", {"alice": KEY.encode()})
    server = start_server(["--model-uri", str(tiny_onnx), "--name", "tiny",
                           "--api-keys-dir", str(tmp_path / "keys"),
                           "--allowed-origins", f'["{APP}"]', "--allow-credentials"])
    yield server
    assert server.stop() == 0


def test_the_allowed_origin_calls_with_its_key(onnx_for_app: Server) -> None:
    server = onnx_for_app
    assert server.port is not None
    status, headers, body = preflight(server, "/v2/models/tiny/infer", APP,
                                      headers="Authorization, Content-Type")
    assert (status, body) == (200, b"OK")  # no key: browsers send none with a preflight
    assert headers["access-control-allow-origin"] == APP
    assert headers["access-control-allow-credentials"] == "true"
    assert headers["access-control-allow-headers"] == "authorization, content-type"
    assert "POST" in headers["access-control-allow-methods"]
    assert headers["access-control-max-age"] == "600" and headers["vary"] == "Origin"

    status, headers, doc = request(server.port, "POST", "/v2/models/tiny/infer", INFER,
                                   {"Origin": APP, "Content-Type": "application/json"})
    assert status == 401 and headers["access-control-allow-origin"] == APP  # readable
    status, headers, doc = request(server.port, "POST", "/v2/models/tiny/infer", INFER,
                                   {"Origin": APP, "Authorization": f"Bearer {KEY}"})
    assert status == 200, doc
    assert headers["access-control-allow-origin"] == APP and headers["vary"] == "Origin"
    assert headers["access-control-allow-credentials"] == "true"
    status, headers, _ = request(server.port, "GET", "/v2/health/ready", None, {"Origin": APP})
    assert status == 200 and headers["access-control-allow-origin"] == APP


def test_other_origins_are_not_let_in(onnx_for_app: Server) -> None:
    server = onnx_for_app
    assert server.port is not None
    status, headers, body = preflight(server, "/v2/models/tiny/infer", "https://evil.example")
    assert (status, body) == (400, b"Disallowed CORS origin")
    assert "access-control-allow-origin" not in headers
    # the answer is made (a browser keeps it from the page), without the header
    status, headers, _ = request(server.port, "POST", "/v2/models/tiny/infer", INFER,
                                 {"Origin": "https://evil.example",
                                  "Authorization": f"Bearer {KEY}"})
    assert status == 200 and "access-control-allow-origin" not in headers
    status, headers, _ = request(server.port, "POST", "/v2/models/tiny/infer", INFER,
                                 {"Authorization": f"Bearer {KEY}"})  # not a browser
    assert status == 200 and "access-control-allow-origin" not in headers


def test_any_origin_and_a_streamed_chat(tiny_llama: Path) -> None:
    server = start_llm_server(tiny_llama, "--allowed-origins", "*", "--allowed-methods",
                              '["POST"]', "--allowed-headers", '["Authorization"]')
    try:
        assert server.port is not None
        status, headers, _ = preflight(server, "/v1/chat/completions", APP,
                                       headers="authorization, content-type")
        assert status == 200 and headers["access-control-allow-origin"] == "*"
        assert headers["access-control-allow-methods"] == "POST"
        assert preflight(server, "/v1/models", APP, method="DELETE")[2] == \
            b"Disallowed CORS method"
        assert preflight(server, "/v1/chat/completions", APP, headers="x-custom")[2] == \
            b"Disallowed CORS headers"
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:  # the headers go out before the first event: set as the stream is prepared
            conn.request("POST", "/v1/chat/completions", json.dumps({
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                "stream": True}), {"Origin": APP, "Content-Type": "application/json"})
            resp = conn.getresponse()
            events = resp.read().decode()
            assert resp.status == 200 and resp.getheader("Content-Type", "").startswith(
                "text/event-stream")
            assert resp.getheader("Access-Control-Allow-Origin") == "*"
            assert resp.getheader("Access-Control-Allow-Credentials") is None
            assert events.rstrip().endswith("data: [DONE]")
        finally:
            conn.close()
        status, headers, _ = request(server.port, "GET", "/v1/models", None, {"Origin": APP})
        assert status == 200 and headers["access-control-allow-origin"] == "*"
    finally:
        assert server.stop() == 0


def test_without_allowed_origins_nothing_changes(tiny_onnx: Path) -> None:
    server = start_server(["--model-uri", str(tiny_onnx), "--name", "tiny"])
    try:
        assert server.port is not None
        status, headers, _ = preflight(server, "/v2/models/tiny/infer", APP)
        assert status == 405 and "access-control-allow-origin" not in headers
        status, headers, _ = request(server.port, "POST", "/v2/models/tiny/infer", INFER,
                                     {"Origin": APP})
        assert status == 200 and "access-control-allow-origin" not in headers
    finally:
        assert server.stop() == 0
