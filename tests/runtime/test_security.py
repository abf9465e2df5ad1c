"""API keys, TLS and per-key rate limits on a real runtime process: 401 without a key and 200 with
it on both protocols (OIP over plain HTTP and tritonclient, OpenAI with the openai client over
TLS), a key rotated in the Secret directory accepted without a restart and the old one refused, a
certificate rotated and served to new connections, 429 + Retry-After past a limit."""

from __future__ import annotations

import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server, start_server
from .secrets_helpers import CA, request, wait_for, write_secret

ALICE = "alice-0123456789abcdef"
BOB = "bob-fedcba9876543210xyz"
INFER = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                "data": [1.0, 2.0, 3.0, 4.0]}]}).encode()
JSON = {"Content-Type": "application/json"}


def metrics_port(server: Server) -> int:
    wait_for(lambda: any(d.get("msg") == "metrics listening" for d in server.logs()),
             30, "the metrics listener")
    return int(next(d["port"] for d in server.logs() if d.get("msg") == "metrics listening"))


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    write_secret(tmp_path / "keys", {"alice": ALICE.encode() + b"\n", "bob": BOB.encode()})
    return tmp_path / "keys"


@pytest.fixture
def onnx_with_keys(tiny_onnx: Path, keys_dir: Path) -> Iterator[Server]:
    server = start_server(["--model-uri", str(tiny_onnx), "--name", "tiny",
                           "--api-keys-dir", str(keys_dir), "--metrics-port", "0"])
    yield server
    assert server.stop() == 0


def infer(server: Server, headers: dict[str, str]) -> tuple[int, dict[str, str], Any]:
    assert server.port is not None
    return request(server.port, "POST", "/v2/models/tiny/infer", INFER, {**JSON, **headers})


def test_oip_needs_a_key(onnx_with_keys: Server) -> None:
    server = onnx_with_keys
    assert server.port is not None
    for headers in ({}, {"Authorization": "Bearer wrong-key-0123456789"},
                    {"x-api-key": ALICE + "x"}, {"Authorization": f"Basic {ALICE}"}):
        status, got, doc = infer(server, headers)
        assert status == 401, (headers, doc)
        assert set(doc) == {"error"} and isinstance(doc["error"], str), doc  # OIP's shape
        # RFC 6750: a refused key is an invalid_token; no key (or not a bearer one) just the
        # challenge
        assert got["www-authenticate"] == 'Bearer realm="kubemaas"' + (
            ', error="invalid_token"' if len(headers) and "Basic" not in str(headers) else ""), \
            headers
        assert "x-request-id" not in got  # the caller sent none
    # the caller's request id names the refusal too; a malformed one is not echoed
    assert infer(server, {"X-Request-Id": "gw-401"})[1]["x-request-id"] == "gw-401"
    assert "x-request-id" not in infer(server, {"X-Request-Id": "two words"})[1]
    # the v1 predict route and metadata are behind the key too
    status, _, doc = request(server.port, "POST", "/v1/models/tiny:predict",
                             b'{"instances": [[1, 2, 3, 4]]}', JSON)
    assert status == 401 and set(doc) == {"error"}
    assert request(server.port, "GET", "/v2/models/tiny")[0] == 401
    assert request(server.port, "GET", "/metrics")[0] == 401
    # probes stay open for the kubelet
    assert request(server.port, "GET", "/v2/health/live")[0] == 200
    assert request(server.port, "GET", "/v2/health/ready")[0] == 200
    # both header forms are accepted
    status, _, doc = infer(server, {"Authorization": f"Bearer {ALICE}"})
    assert status == 200, doc
    assert doc["outputs"][0]["name"] in ("y", "z")
    assert infer(server, {"x-api-key": BOB})[0] == 200
    status, _, doc = request(server.port, "POST", "/v1/models/tiny:predict",
                             b'{"instances": [[1, 2, 3, 4]]}', {**JSON, "x-api-key": BOB})
    assert status == 200, doc
    # no request without a key reached the model: only the three accepted ones were counted
    text = request(metrics_port(server), "GET", "/metrics")[2].decode()
    assert 'kubemaas_requests_total{model="tiny",endpoint="infer",outcome="ok"} 2' in text
    assert 'kubemaas_auth_requests_total{key="alice",outcome="ok"} 1' in text
    assert 'kubemaas_auth_requests_total{key="bob",outcome="ok"} 2' in text
    assert 'kubemaas_auth_requests_total{key="",outcome="missing"}' in text
    assert 'kubemaas_api_keys_loaded 2' in text
    # HEAD as GET (it was 404 "no route for HEAD /metrics" on both ports), other paths refused
    status, got, _ = request(metrics_port(server), "HEAD", "/metrics")
    assert status == 200 and got["content-type"].startswith("text/plain")
    assert request(server.port, "HEAD", "/metrics", headers={"x-api-key": BOB})[0] == 200
    assert request(metrics_port(server), "GET", "/v2/models/tiny")[0] == 404


def test_metrics_without_key_opens_get_metrics_only(tiny_onnx: Path, keys_dir: Path) -> None:
    # an InferencePool's endpoint picker scrapes /metrics on the serving port with no key
    server = start_server(["--model-uri", str(tiny_onnx), "--name", "tiny",
                           "--api-keys-dir", str(keys_dir), "--metrics-without-key"])
    try:
        assert server.port is not None
        status, _, text = request(server.port, "GET", "/metrics")
        assert status == 200 and b"kubemaas_api_keys_loaded 2" in text
        assert request(server.port, "HEAD", "/metrics")[0] == 200
        # everything else still needs the key: the model, other methods, look-alike paths
        assert infer(server, {})[0] == 401
        assert request(server.port, "POST", "/metrics", b"{}", JSON)[0] == 401
        assert request(server.port, "GET", "/metrics/")[0] == 401
        assert request(server.port, "GET", "/v2/models/tiny")[0] == 401
        assert infer(server, {"x-api-key": BOB})[0] == 200
    finally:
        assert server.stop() == 0


def test_tritonclient_with_a_key(onnx_with_keys: Server) -> None:
    import numpy as np
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    client = httpclient.InferenceServerClient(f"127.0.0.1:{onnx_with_keys.port}")
    x = httpclient.InferInput("x", [1, 4], "FP32")
    x.set_data_from_numpy(np.arange(4, dtype=np.float32).reshape(1, 4))
    with pytest.raises(InferenceServerException, match="API key"):
        client.infer("tiny", [x])
    result = client.infer("tiny", [x], headers={"Authorization": f"Bearer {ALICE}"})
    assert result.as_numpy("y").shape == (1, 3)
    client.close()


def test_rotated_key_without_restart(onnx_with_keys: Server, keys_dir: Path) -> None:
    server = onnx_with_keys
    assert infer(server, {"x-api-key": ALICE})[0] == 200
    new_alice = "alice-rotated-5555555555555"
    write_secret(keys_dir, {"alice": new_alice.encode(), "carol": b"carol-77777777777777777"})
    wait_for(lambda: infer(server, {"x-api-key": new_alice})[0] == 200, 30,
             "the rotated key to be accepted")
    assert infer(server, {"x-api-key": ALICE})[0] == 401  # the old key is refused
    assert infer(server, {"x-api-key": BOB})[0] == 401  # bob left the Secret
    assert infer(server, {"x-api-key": "carol-77777777777777777"})[0] == 200
    # a broken update keeps the last good keys (and says so)
    write_secret(keys_dir, {"alice": b"short"})
    wait_for(lambda: any(d.get("msg", "").startswith("api keys not reloaded")
                         for d in server.logs()), 30, "the bad update to be refused")
    assert infer(server, {"x-api-key": new_alice})[0] == 200
    text = request(metrics_port(server), "GET", "/metrics")[2].decode()
    assert 'kubemaas_secret_reloads_total{secret="api_keys",outcome="ok"} 1' in text
    assert 'kubemaas_secret_reloads_total{secret="api_keys",outcome="error"} 1' in text
    assert server.proc.poll() is None


def test_rate_limit_429(tiny_onnx: Path, keys_dir: Path) -> None:
    server = start_server(["--model-uri", str(tiny_onnx), "--name", "tiny",
                           "--api-keys-dir", str(keys_dir), "--rate-limit-rps", "0.2",
                           "--rate-limit-burst", "2"])
    try:
        assert infer(server, {"x-api-key": ALICE})[0] == 200
        assert infer(server, {"x-api-key": ALICE})[0] == 200
        status, headers, doc = infer(server, {"x-api-key": ALICE})
        assert status == 429, doc
        assert set(doc) == {"error"} and "rate limit" in doc["error"]
        assert 1 <= int(headers["retry-after"]) <= 5
        assert infer(server, {"x-api-key": ALICE, "X-Request-Id": "gw-429"})[1][
            "x-request-id"] == "gw-429"
        assert infer(server, {"x-api-key": BOB})[0] == 200  # per key: bob has his own bucket
        text = request(server.port or 0, "GET", "/metrics", headers={"x-api-key": BOB})[2]
        text = text.decode()
        assert 'kubemaas_rate_limited_total{key="alice",limit="requests"} 2' in text
        assert 'kubemaas_rate_limit_requests_per_second{key="alice"} 0.2' in text
    finally:
        assert server.stop() == 0


def test_scrapes_and_probes_are_not_rate_limited(tiny_onnx: Path, keys_dir: Path) -> None:
    """Prometheus' scrapes of /metrics (with a key) and the kubelet's probes take nothing from
    a key's request budget and are never refused with 429 (a scraper every few seconds ate
    the budget, and got 429s that left gaps in the metrics)."""
    server = start_server(["--model-uri", str(tiny_onnx), "--name", "tiny",
                           "--api-keys-dir", str(keys_dir), "--rate-limit-rps", "0.2",
                           "--rate-limit-burst", "2"])
    port = server.port or 0
    try:
        for _ in range(4):
            assert request(port, "GET", "/metrics", headers={"x-api-key": ALICE})[0] == 200
            assert request(port, "GET", "/v2/health/ready")[0] == 200
        assert request(port, "GET", "/metrics")[0] == 401  # a key is still required
        assert infer(server, {"x-api-key": ALICE})[0] == 200  # the budget is whole
        assert infer(server, {"x-api-key": ALICE})[0] == 200
        assert infer(server, {"x-api-key": ALICE})[0] == 429
        assert request(port, "GET", "/metrics", headers={"x-api-key": ALICE})[0] == 200
    finally:
        assert server.stop() == 0


def _tls_server(args: list[str], ca: CA) -> Server:
    server = start_server(args, ready=False)
    ctx = ca.client_context()
    assert server.port is not None
    port = server.port

    def ready() -> bool:
        try:
            return request(port, "GET", "/v2/health/ready", tls=ctx)[0] == 200
        except OSError:
            return False
    try:
        wait_for(ready, 120, "the TLS server to be ready")
    except BaseException:
        server.stop()
        raise
    return server


def served_serial(port: int, ctx: ssl.SSLContext) -> int:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        cert = tls.getpeercert()
    assert cert is not None
    return int(str(cert["serialNumber"]), 16)


def test_tls_verified_and_rotated(tiny_onnx: Path, tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    tls_dir = tmp_path / "tls"
    write_secret(tls_dir, ca.issue(1001))
    server = _tls_server(["--model-uri", str(tiny_onnx), "--name", "tiny",
                          "--tls-dir", str(tls_dir)], ca)
    try:
        assert server.port is not None
        ctx = ca.client_context()
        status, _, doc = request(server.port, "POST", "/v2/models/tiny/infer", INFER, JSON,
                                 tls=ctx)
        assert status == 200, doc
        assert served_serial(server.port, ctx) == 1001
        # plain HTTP to the TLS port gets no answer from the model
        with pytest.raises((OSError, ConnectionError)):
            request(server.port, "GET", "/v2/health/ready", timeout=5)
        # a client that does not trust the CA is refused by its own verification
        with pytest.raises(ssl.SSLCertVerificationError):
            request(server.port, "GET", "/v2/health/ready", tls=ssl.create_default_context())
        # cert-manager renews: a new pair in the Secret; new connections get it
        with socket.create_connection(("127.0.0.1", server.port)) as raw, \
                ctx.wrap_socket(raw, server_hostname="127.0.0.1") as kept:
            write_secret(tls_dir, ca.issue(1002))
            wait_for(lambda: served_serial(server.port or 0, ctx) == 1002, 30,
                     "the rotated certificate")
            # the connection opened before the rotation still works
            kept.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert kept.recv(64).startswith(b"HTTP/1.1 200")
        status, _, doc = request(server.port, "POST", "/v2/models/tiny/infer", INFER, JSON,
                                 tls=ctx)
        assert status == 200, doc
    finally:
        assert server.stop() == 0


def _abandoned_stream_is_charged(bob: Any, port: int, ca: CA) -> None:
    """A stream its client abandons is charged what it generated: the charge used to come with
    the last chunk only, so closing before it made any number of tokens free."""
    stream = bob.completions.create(model="tiny", prompt="Hi", max_tokens=120, stream=True,
                                    extra_body={"ignore_eos": True})
    for i, _ in enumerate(stream):
        if i == 80:
            break
    stream.close()

    def bob_refused() -> bool:  # GET /v1/models costs no tokens: it only reads the debt
        return request(port, "GET", "/v1/models", headers={"x-api-key": BOB},
                       tls=ca.client_context())[0] == 429
    wait_for(bob_refused, 10, "bob's abandoned stream to be charged")


def test_openai_client_with_key_tls_and_token_limit(tiny_llama: Path, tmp_path: Path,
                                                     keys_dir: Path) -> None:
    import httpx2 as httpx
    import openai

    ca = CA(tmp_path / "pki")
    tls_dir = tmp_path / "tls"
    write_secret(tls_dir, ca.issue(7))
    server = _tls_server(["--model-uri", str(tiny_llama), "--format", "hf", "--name", "tiny",
                          "--kv-cache-memory", "16Mi", "--max-model-len", "128",
                          "--intra-op-threads", "1", "--log-level", "warning",
                          "--api-keys-dir", str(keys_dir), "--tls-dir", str(tls_dir),
                          "--rate-limit-tpm", "60"], ca)
    try:
        base = f"https://127.0.0.1:{server.port}/v1"
        http = httpx.Client(verify=ca.client_context())

        def client(key: str) -> openai.OpenAI:
            return openai.OpenAI(base_url=base, api_key=key, http_client=http, max_retries=0)

        with pytest.raises(openai.AuthenticationError) as err:
            client("not-a-key-at-all-0000").completions.create(
                model="tiny", prompt="Hello", max_tokens=3)
        body = err.value.body
        assert isinstance(body, dict) and body["code"] == "invalid_api_key", body
        assert body["type"] == "authentication_error"
        out = client(ALICE).completions.create(model="tiny", prompt="Hello there", max_tokens=40,
                                               temperature=0.0, extra_body={"ignore_eos": True})
        assert out.usage is not None and out.usage.total_tokens > 40
        chat = client(ALICE).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=30,
            extra_body={"ignore_eos": True})
        assert chat.usage is not None
        # alice has now used more than 60 tokens this minute: refused with Retry-After
        with pytest.raises(openai.RateLimitError) as limited:
            client(ALICE).completions.create(model="tiny", prompt="Hello", max_tokens=3)
        assert int(limited.value.response.headers["retry-after"]) >= 1
        assert isinstance(limited.value.body, dict)
        assert limited.value.body["code"] == "rate_limit_exceeded"
        # bob has his own budget
        assert client(BOB).completions.create(model="tiny", prompt="Hi", max_tokens=2).usage
        # vLLM's routes outside /v1 are refused in OpenAI's error shape too
        status, _, refused = request(server.port or 0, "POST", "/tokenize", b'{"prompt": "a"}',
                                     tls=ca.client_context())
        assert status == 401 and refused["error"]["code"] == "invalid_api_key", refused
        status, _, text = request(server.port or 0, "GET", "/metrics",
                                  headers={"Authorization": f"Bearer {BOB}"},
                                  tls=ca.client_context())
        assert status == 200
        text = text.decode()
        assert 'kubemaas_rate_limited_total{key="alice",limit="tokens"} 1' in text
        assert 'kubemaas_rate_limit_tokens_per_minute{key="alice"} 60' in text
        assert 'kubemaas_key_tokens_total{key="alice"}' in text
        _abandoned_stream_is_charged(client(BOB), server.port or 0, ca)
        http.close()
    finally:
        assert server.stop() == 0


def test_metrics_port_cuts_slow_headers_too(tiny_onnx: Path) -> None:
    # the --metrics-port listener had no header deadline: headers sent a line a second held
    # its connection for as long as the client liked (the serving port cut them)
    import time

    server = start_server(["--model-uri", str(tiny_onnx), "--name", "tiny", "--metrics-port",
                           "0", "--header-timeout-s", "1"])
    try:
        port = metrics_port(server)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(b"GET /metrics HTTP/1.1\r\n")
            start = time.monotonic()
            with pytest.raises(OSError):
                while time.monotonic() - start < 6:
                    slow.sendall(b"X-Slow: 1\r\n")
                    time.sleep(0.25)
            assert time.monotonic() - start < 4
        status, _, text = request(port, "GET", "/metrics")  # the port goes on serving
        assert status == 200
        assert 'kubemaas_connections_closed_total{reason="header_timeout"} 1' in text.decode()
    finally:
        assert server.stop() == 0
