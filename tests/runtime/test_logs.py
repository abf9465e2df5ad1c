"""The server's log is one JSON object per line, from its first line to its last (docs/runtime.md,
"Logs"): torch's own log handler, transformers' progress bars and the leak reports of triton's
bindings at the interpreter's teardown used to put other lines between and after the records."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO, Server, start_llm_server, start_server, stream_events

LIFECYCLE = ["listening", "ready", "draining", "stopped"]


def records_of(server: Server) -> list[dict[str, object]]:
    """Every line the process wrote (stdout and stderr), each parsed as one JSON object."""
    records = []
    for line in server.lines:
        try:
            doc = json.loads(line)
        except ValueError:
            raise AssertionError(f"not a JSON record: {line[:300]!r}") from None
        assert isinstance(doc, dict) and {"ts", "level", "logger", "msg"} <= doc.keys(), line
        records.append(doc)
    return records


def test_a_language_model_servers_whole_log_is_json_records(tiny_llama: Path) -> None:
    server = start_llm_server(tiny_llama, "--log-level", "info")
    try:
        status, _ = server.post_json("/v1/completions",
                                     {"model": "tiny", "prompt": "Once", "max_tokens": 4})
        assert status == 200
        events = stream_events(server, "/v1/chat/completions", {
            "model": "tiny", "max_tokens": 4, "stream": True,
            "messages": [{"role": "user", "content": "Hello"}]})
        assert events
    finally:
        assert server.stop() == 0
    msgs = [r["msg"] for r in records_of(server)]
    assert [m for m in msgs if m in LIFECYCLE] == LIFECYCLE
    assert msgs[-1] == "stopped"
    assert "model loaded" in msgs


def test_a_tensor_servers_whole_log_is_json_records(tiny_onnx: Path) -> None:
    server = start_server(["--model-uri", str(tiny_onnx), "--name", "tiny", "--log-level", "debug"])
    try:
        status, _ = server.post_json("/v2/models/tiny/infer", {"inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
        assert status == 200
    finally:
        assert server.stop() == 0
    msgs = [r["msg"] for r in records_of(server)]
    assert [m for m in msgs if m in LIFECYCLE] == LIFECYCLE


def test_a_tensor_servers_request_records(tiny_onnx: Path) -> None:
    """--log-requests on the v2 server: one record per request, named by the caller's
    X-Request-Id (echoed back) when it is a valid one; probes and scrapes have none."""
    server = start_server(["--model-uri", str(tiny_onnx), "--name", "tiny", "--log-requests"])
    infer = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                    "data": [1, 2, 3, 4]}]}).encode()
    try:
        for rid, want in (("trace-1", 200), ("has space", 200), (None, 200)):
            status, headers, _ = server.request("POST", "/v2/models/tiny/infer", infer, {
                "Content-Type": "application/json", **({"X-Request-Id": rid} if rid else {})})
            assert status == want and headers.get("x-request-id") == (
                rid if rid == "trace-1" else None)
        assert server.request("POST", "/v2/models/other/infer", infer,
                              {"X-Request-Id": "trace-2"})[0] == 404
        gone_mid_body(server, "/v2/models/tiny/infer", infer, "gone-1")
        gone_mid_body(server, "/v1/models/tiny:predict", b'{"instances": [[1, 2, 3, 4]]}',
                      "gone-2")
        for path in ("/v2/health/ready", "/v2/health/live", "/metrics"):
            assert server.request("GET", path)[0] == 200
        metrics = server.request("GET", "/metrics")[2].decode()
    finally:
        assert server.stop() == 0
    got = [r for r in records_of(server) if r["msg"] == "request"]
    assert [(r.get("request_id"), r["method"], r["path"], r["status"]) for r in got] == [
        ("trace-1", "POST", "/v2/models/tiny/infer", 200),
        (None, "POST", "/v2/models/tiny/infer", 200),
        (None, "POST", "/v2/models/tiny/infer", 200),
        ("trace-2", "POST", "/v2/models/other/infer", 404),
        ("gone-1", "POST", "/v2/models/tiny/infer", 499),  # the client left mid-body
        ("gone-2", "POST", "/v1/models/tiny:predict", 499)]
    # not the server's failure: no error record, no server_error in the metrics
    assert not [r for r in records_of(server) if r["level"] == "error"]
    assert 'outcome="server_error"' not in metrics
    assert all(r["logger"] == "kubemaas.runtime.requests" and r["seconds"] >= 0 for r in got)


def gone_mid_body(server: Server, path: str, body: bytes, rid: str) -> None:
    """A request whose client closes the connection after part of its body."""
    assert server.port is not None
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nX-Request-Id: {rid}\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body) + 100}"
                     "\r\n\r\n".encode() + body[:20])
        time.sleep(0.3)  # the handler is reading the body
    deadline = time.monotonic() + 10
    while not [r for r in server.logs() if r.get("request_id") == rid]:
        assert time.monotonic() < deadline, f"no record of {rid}"
        time.sleep(0.05)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_torch_records_go_through_the_servers_handler(fmt: str) -> None:
    """torch gives its loggers a stderr handler of its own when it is imported; after
    route_torch_logs their records are written by the server's one handler, in its format."""
    code = f"""
import logging, torch
from kubemaas_runtime.logs import route_torch_logs, setup_logging
setup_logging("info", {fmt!r})
route_torch_logs()
logging.getLogger("torch.utils._pytree").warning("from torch")
logging.getLogger("torch").info("below torch's own level")
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=REPO, timeout=120, check=True)
    lines = out.stderr.splitlines()
    assert len(lines) == 1, lines  # once, not twice (torch's handler is gone, not kept beside)
    if fmt == "json":
        doc = json.loads(lines[0])
        assert (doc["level"], doc["logger"], doc["msg"]) == (
            "warning", "torch.utils._pytree", "from torch")
    else:
        assert lines[0].endswith("WARNING torch.utils._pytree: from torch"), lines
