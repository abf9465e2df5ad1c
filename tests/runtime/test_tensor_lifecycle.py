"""The tensor server's lifecycle past the happy path: SIGTERM's drain timing out with requests
waiting in the batcher or inside a model call, and clients that hang up while they wait."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.helpers import wait_for

from .conftest import Server
from .test_batching import _infer_in_threads


def test_drain_timeout_answers_waiting_requests_503(runtime_server: Any,
                                                    tiny_onnx: Path) -> None:
    # requests wait 8 s in the batcher; the drain gives them 0.5 s: each gets a clean 503 (was:
    # the connection closed without an answer when aiohttp cancelled its handler)
    server: Server = runtime_server(["--model-uri", str(tiny_onnx), "--name", "tiny",
                                     "--max-batch-size", "64", "--max-batch-delay-ms", "8000",
                                     "--drain-timeout-s", "0.5"])
    threads, results = _infer_in_threads(server, 3)
    wait_for(lambda: 'kubemaas_inflight_requests{model="tiny"} 3' in server.metrics(),
             timeout=10, interval=0.02, what="three requests waiting in the batcher")
    signalled = time.monotonic()
    server.proc.send_signal(15)
    for t in threads:
        t.join(10)
    assert [status for status, _ in results] == [503, 503, 503]
    assert all("shutting down" in doc["error"] for _, doc in results)
    assert server.proc.wait(10) == 0
    assert time.monotonic() - signalled < 4  # the drain timeout, not the batch delay


def _make_slow_onnx(path: Path, layers: int) -> None:
    """x FP32 [batch, 512] -> y: ``layers`` MatMuls by the identity, seconds for 4096 rows."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("MatMul", ["x" if i == 0 else f"h{i - 1}", "W"], [f"h{i}"])
             for i in range(layers)]
    nodes.append(helper.make_node("Identity", [f"h{layers - 1}"], ["y"]))
    graph = helper.make_graph(
        nodes, "slow", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 512])],
        [numpy_helper.from_array(np.eye(512, dtype=np.float32), "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_a_model_call_cut_at_the_drain_timeout_does_not_hold_the_exit(
        runtime_server: Any, tmp_path: Path) -> None:
    # one call takes tens of seconds here; the drain gives it 0.5 s. Its client got the 503 at
    # the drain timeout, but the process waited for the call's worker thread before exiting
    # (31 s after SIGTERM for a 24 s call, past any terminationGracePeriodSeconds)
    _make_slow_onnx(tmp_path / "slow.onnx", 2000)
    server: Server = runtime_server(["--model-uri", str(tmp_path / "slow.onnx"),
                                     "--name", "slow", "--drain-timeout-s", "0.5"])
    header = (b'{"inputs":[{"name":"x","shape":[4096,512],"datatype":"FP32",'
              b'"parameters":{"binary_data_size":%d}}]}' % (4096 * 512 * 4))
    body = header + np.ones((4096, 512), dtype=np.float32).tobytes()
    results: list[tuple[int, bytes]] = []
    client = threading.Thread(target=lambda: results.append(server.request(
        "POST", "/v2/models/slow/infer", body,
        {"Inference-Header-Content-Length": str(len(header))}, timeout=60)[::2]))
    client.start()
    wait_for(lambda: 'vllm:num_requests_running{model_name="slow"} 1' in server.metrics(),
             timeout=20, interval=0.05, what="the model call running")
    signalled = time.monotonic()
    server.proc.send_signal(15)
    assert server.proc.wait(30) == 0
    assert time.monotonic() - signalled < 5
    client.join(10)
    assert results and results[0][0] == 503 and b"shutting down" in results[0][1]


def test_the_drain_cut_skips_a_request_timeout_already_firing() -> None:
    # a request whose own timeout fired in the loop iteration of the cut: rescheduling it
    # raised RuntimeError('Cannot change state of expiring Timeout') out of the drain
    from kubemaas_runtime.dataplane import DataPlane

    dataplane = DataPlane("m", "1", 30.0)
    errors: list[Exception] = []

    def cut() -> None:
        try:
            dataplane.cut()
        except Exception as exc:
            errors.append(exc)

    async def scenario() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0) as limit:  # fires at the next loop iteration
                dataplane._limits.add(limit)
                asyncio.get_running_loop().call_soon(cut)  # after the timeout's callback
                await asyncio.sleep(1)

    try:
        asyncio.run(scenario())
    finally:
        dataplane.close()
    assert errors == [] and dataplane.cutting


def test_a_client_gone_while_waiting_frees_its_place(runtime_server: Any,
                                                    tiny_onnx: Path) -> None:
    # the request waits 3 s in the batcher for company; its client hangs up after 0.3 s (was:
    # it stayed admitted and counted as waiting for the whole 3 s, then ran the model for no
    # one, and its request counted as ok)
    server: Server = runtime_server(["--model-uri", str(tiny_onnx), "--name", "tiny",
                                     "--max-batch-size", "8", "--max-batch-delay-ms", "3000"])
    body = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
    assert server.port is not None
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:
        conn.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: t\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        wait_for(lambda: 'vllm:num_requests_waiting{model_name="tiny"} 1' in server.metrics(),
                 timeout=10, interval=0.02, what="the request waiting in the batcher")
    wait_for(lambda: 'kubemaas_inflight_requests{model="tiny"} 0' in server.metrics(),
             timeout=1.5, interval=0.02, what="the gone client's request leaving the queue")
    text = server.metrics()
    assert 'vllm:num_requests_waiting{model_name="tiny"} 0' in text
    time.sleep(3)  # past the batch delay: no model call was made for it
    text = server.metrics()
    assert 'kubemaas_batch_size_count{model="tiny"}' not in text
    assert 'outcome="ok"' not in text
