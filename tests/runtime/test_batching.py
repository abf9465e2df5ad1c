"""Dynamic batching, admission control, timeouts and SIGTERM drain, on real ONNX models."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubemaas_runtime.backends.onnx import OnnxModel
from kubemaas_runtime.batching import Batcher, padded_batch_rows
from kubemaas_runtime.errors import Unavailable
from kubemaas_runtime.metrics import Metrics
from tests.helpers import wait_for

from .conftest import Server, assert_as_reference, ort_run


def _histogram(text: str, name: str) -> tuple[float, float]:
    total = float(re.search(rf"^{name}_sum{{[^}}]*}} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    count = float(re.search(rf"^{name}_count{{[^}}]*}} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return total, count


def _infer(server: Server, name: str, inputs: dict[str, np.ndarray]) -> tuple[int, Any]:
    dts = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64", np.dtype(np.bool_): "BOOL"}
    return server.post_json(f"/v2/models/{name}/infer", {"inputs": [
        {"name": k, "shape": list(v.shape), "datatype": dts[v.dtype], "data": v.ravel().tolist()}
        for k, v in inputs.items()]})



def _infer_in_threads(server: Server, n: int) -> tuple[list[threading.Thread],
                                                       list[tuple[int, Any]]]:
    """``n`` started threads, each sending model tiny one [1, 4] FP32 row of ones; their
    (status, document) answers are appended to the list as they come."""
    results: list[tuple[int, Any]] = []
    x = np.ones((1, 4), dtype=np.float32)
    threads = [threading.Thread(target=lambda: results.append(_infer(server, "tiny", {"x": x})))
               for _ in range(n)]
    for t in threads:
        t.start()
    return threads, results

def test_concurrent_requests_are_merged_and_split_back(runtime_server: Any,
                                                       tiny_onnx: Path) -> None:
    server = runtime_server(["--model-uri", str(tiny_onnx), "--name", "tiny",
                             "--max-batch-size", "8", "--max-batch-delay-ms", "40"])
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal((1 + i % 2, 4)).astype(np.float32) for i in range(24)]
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(lambda x: _infer(server, "tiny", {"x": x}), xs))
    for x, (status, doc) in zip(xs, results, strict=True):
        assert status == 200, doc
        want = ort_run(tiny_onnx, {"x": x})
        for out in doc["outputs"]:
            got = np.array(out["data"], dtype=np.float32).reshape(out["shape"])
            assert_as_reference(got, want[out["name"]], exact=False)
    rows, calls = _histogram(server.metrics(), "kubemaas_batch_size")
    assert rows == sum(len(x) for x in xs)
    assert calls < len(xs), "no request was merged with another"


@pytest.mark.parametrize("instances", [1, 2])
def test_incompatible_shapes_are_never_mixed(runtime_server: Any, seq_onnx: Path,
                                             instances: int) -> None:
    server = runtime_server(["--model-uri", str(seq_onnx), "--name", "seq",
                             "--max-batch-size", "16", "--max-batch-delay-ms", "30",
                             "--instances", str(instances)])
    rng = np.random.default_rng(4)
    reqs = []
    for i in range(20):
        length = 3 if i % 2 else 5
        reqs.append({"ids": rng.integers(-50, 50, (1, length), dtype=np.int64),
                     "mask": rng.integers(0, 2, (1, length)).astype(np.bool_)})
    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(lambda r: _infer(server, "seq", r), reqs))
    for req, (status, doc) in zip(reqs, results, strict=True):
        assert status == 200, doc
        want = ort_run(seq_onnx, req)["total"]
        assert doc["outputs"][0]["data"] == want.ravel().tolist()
        assert doc["outputs"][0]["datatype"] == "INT64"


class WrappedModel:
    """The real tiny ONNX model behind a wrapper whose ``run`` a test can instrument."""

    def __init__(self, model: OnnxModel) -> None:
        self.inner = model
        self.platform, self.device = model.platform, model.device
        self.inputs, self.outputs = model.inputs, model.outputs

    @property
    def batchable(self) -> bool:
        return self.inner.batchable

    def run(self, inputs: Any, output_names: Any) -> dict[str, np.ndarray]:
        return self.inner.run(inputs, output_names)

    def warmup(self) -> None:
        self.inner.warmup()

    def close(self) -> None:
        self.inner.close()


class GatedModel(WrappedModel):
    """Calls wait at a gate, so that a test can hold requests in flight."""

    def __init__(self, model: OnnxModel) -> None:
        super().__init__(model)
        self.gate = threading.Event()

    def run(self, inputs: Any, output_names: Any) -> dict[str, np.ndarray]:
        assert self.gate.wait(10)
        return super().run(inputs, output_names)


@pytest.mark.parametrize("max_batch_size", [1, 4])
def test_full_queue_answers_unavailable(tiny_onnx: Path, max_batch_size: int) -> None:
    model = GatedModel(OnnxModel(tiny_onnx, device="cpu"))
    metrics = Metrics()
    batcher = Batcher(model, model_name="tiny", metrics=metrics, max_batch_size=max_batch_size,
                      max_queue_size=3)
    x = np.ones((1, 4), dtype=np.float32)

    async def scenario() -> None:
        held = [asyncio.ensure_future(batcher.infer({"x": x}, None)) for _ in range(3)]
        await asyncio.sleep(0.05)
        with pytest.raises(Unavailable) as info:
            await batcher.infer({"x": x}, None)
        assert info.value.status == 503 and info.value.retry_after_s >= 1
        model.gate.set()
        outs = await asyncio.gather(*held)
        want = ort_run(tiny_onnx, {"x": x})
        for out in outs:
            np.testing.assert_array_equal(out["y"], want["y"])
        assert batcher.admitted == 0
        await batcher.infer({"x": x}, None)  # room again

    try:
        asyncio.run(scenario())
    finally:
        batcher.close()
    assert metrics.queue_rejections.values == {("tiny",): 1.0}


def test_request_timeout_is_a_clean_503(runtime_server: Any, tiny_onnx: Path) -> None:
    # a batch that waits 3 s for company cannot finish within a 0.3 s request timeout
    server = runtime_server(["--model-uri", str(tiny_onnx), "--name", "tiny",
                             "--max-batch-size", "4", "--max-batch-delay-ms", "3000",
                             "--request-timeout-s", "0.3"])
    start = time.monotonic()
    status, headers, body = server.request(
        "POST", "/v2/models/tiny/infer",
        b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}')
    assert status == 503 and b"did not finish" in body
    assert headers["retry-after"] == "1"
    assert time.monotonic() - start < 2.5


def _wait_draining(server: Server) -> None:
    """Until the runtime logs that SIGTERM reached it ("draining": readiness is 503 from the
    same moment on)."""
    wait_for(lambda: any(doc.get("msg") == "draining" for doc in server.logs()), timeout=10,
             interval=0.01, what="the runtime's draining log line after SIGTERM")


def test_sigterm_drains_in_flight_requests(runtime_server: Any, tiny_onnx: Path) -> None:
    # requests wait 1.5 s in the batcher: they are in flight when SIGTERM arrives
    server: Server = runtime_server(["--model-uri", str(tiny_onnx), "--name", "tiny",
                                     "--max-batch-size", "64", "--max-batch-delay-ms", "2000"])
    threads, results = _infer_in_threads(server, 3)
    deadline = time.monotonic() + 10
    while 'kubemaas_inflight_requests{model="tiny"} 3' not in server.metrics():
        assert time.monotonic() < deadline, "the requests never arrived"
        time.sleep(0.02)
    server.proc.send_signal(15)
    _wait_draining(server)
    assert server.request("GET", "/v2/health/ready")[0] == 503  # out of the Service at once
    for t in threads:
        t.join(10)
    assert [status for status, _ in results] == [200, 200, 200]
    assert server.proc.wait(10) == 0
    msgs = [doc.get("msg") for doc in server.logs()]
    assert "draining" in msgs and msgs[-1] == "stopped"


def test_shutdown_delay_keeps_serving_while_not_ready(runtime_server: Any,
                                                      tiny_onnx: Path) -> None:
    server: Server = runtime_server(["--model-uri", str(tiny_onnx), "--name", "tiny",
                                     "--shutdown-delay-s", "1.5"])
    server.proc.send_signal(15)
    _wait_draining(server)
    assert server.request("GET", "/v2/health/ready")[0] == 503
    status, doc = _infer(server, "tiny", {"x": np.ones((1, 4), dtype=np.float32)})
    assert status == 200, doc  # a late request from a stale endpoint list is still answered
    assert server.proc.wait(10) == 0


def test_request_bytes_in_flight_are_bounded(runtime_server: Any, tiny_onnx: Path) -> None:
    # two 1.5 KB requests wait 1 s in the batcher; a third would put 4.5 KB in flight > 4 KB
    server: Server = runtime_server(["--model-uri", str(tiny_onnx), "--name", "tiny",
                                     "--max-batch-size", "64", "--max-batch-delay-ms", "1000",
                                     "--max-request-bytes", "2048",
                                     "--max-inflight-bytes", "4096"])
    body = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
    body = body.ljust(1500)  # JSON allows trailing whitespace
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(
        server.request("POST", "/v2/models/tiny/infer", body)[0])) for _ in range(2)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    while 'kubemaas_inflight_requests{model="tiny"} 2' not in server.metrics():
        assert time.monotonic() < deadline, "the requests never arrived"
        time.sleep(0.02)
    status, headers, reply = server.request("POST", "/v2/models/tiny/infer", body)
    assert status == 503 and headers["retry-after"] == "1" and b"in flight" in reply
    for t in threads:
        t.join(10)
    assert results == [200, 200]
    assert server.request("POST", "/v2/models/tiny/infer", body)[0] == 200  # budget released


def test_bodies_still_arriving_count_in_flight(runtime_server: Any, tiny_onnx: Path) -> None:
    # two clients have sent 1.4 KB of 1.5 KB bodies: a third 1.5 KB request would put 4.3 KB in
    # flight > 4 KB. Only complete bodies were counted, so any number of clients could each hold
    # up to --max-request-bytes unread by withholding their last byte
    server: Server = runtime_server(["--model-uri", str(tiny_onnx), "--name", "tiny",
                                     "--max-request-bytes", "2048",
                                     "--max-inflight-bytes", "4096"])
    body = b'{"inputs":[{"name":"x","shape":[1,4],"datatype":"FP32","data":[1,2,3,4]}]}'
    body = body.ljust(1500)
    assert server.port is not None
    partial = [socket.create_connection(("127.0.0.1", server.port), timeout=10)
               for _ in range(2)]
    try:
        for conn in partial:
            conn.sendall(b"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: t\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:1400]))
        time.sleep(0.5)  # read and held by the server
        status, headers, reply = server.request("POST", "/v2/models/tiny/infer", body)
        assert status == 503 and headers["retry-after"] == "1" and b"in flight" in reply
        for conn in partial:
            conn.sendall(body[1400:])
            assert conn.recv(4096).startswith(b"HTTP/1.1 200")
    finally:
        for conn in partial:
            conn.close()
    assert server.request("POST", "/v2/models/tiny/infer", body)[0] == 200  # budget released


class ThreadRecordingModel(WrappedModel):
    """Records which thread ran each call and the shape it saw (and is optionally slow)."""

    def __init__(self, model: OnnxModel, delay_s: float = 0.0) -> None:
        super().__init__(model)
        self.delay_s = delay_s
        self.threads: list[str] = []
        self.shapes: list[tuple[int, ...]] = []

    def run(self, inputs: Any, output_names: Any) -> dict[str, np.ndarray]:
        self.threads.append(threading.current_thread().name)
        self.shapes.append(inputs["x"].shape)
        if self.delay_s:
            time.sleep(self.delay_s)
        return super().run(inputs, output_names)


def _calls_on(model: ThreadRecordingModel, inline_max_s: float,
              shapes: list[tuple[int, int]]) -> list[str]:
    batcher = Batcher(model, model_name="tiny", metrics=Metrics(), inline_max_s=inline_max_s)

    async def scenario() -> list[str]:
        loop_thread = threading.current_thread().name
        for shape in shapes:
            x = np.arange(shape[0] * shape[1], dtype=np.float32).reshape(shape)
            out = await batcher.infer({"x": x}, None)
            np.testing.assert_array_equal(out["y"], model.inner.run({"x": x}, None)["y"])
        return ["loop" if name == loop_thread else "worker" for name in model.threads]

    try:
        return asyncio.run(scenario())
    finally:
        batcher.close()


def test_calls_measured_cheaper_than_the_hand_off_run_on_the_loop(tiny_onnx: Path) -> None:
    # the first call of each input shape runs in a worker and is timed; later ones of a shape
    # that took under the limit run on the loop, and a new shape goes to a worker first again
    model = ThreadRecordingModel(OnnxModel(tiny_onnx, device="cpu"))
    where = _calls_on(model, 0.05, [(1, 4), (1, 4), (1, 4), (3, 4), (3, 4)])
    assert where == ["worker", "loop", "loop", "worker", "loop"]


def test_slow_calls_and_a_zero_limit_always_use_a_worker(tiny_onnx: Path) -> None:
    slow = ThreadRecordingModel(OnnxModel(tiny_onnx, device="cpu"), delay_s=0.002)
    assert _calls_on(slow, 0.001, [(1, 4)] * 4) == ["worker"] * 4
    fast = ThreadRecordingModel(OnnxModel(tiny_onnx, device="cpu"))
    assert _calls_on(fast, 0.0, [(1, 4)] * 4) == ["worker"] * 4


def test_a_shape_that_turns_slow_goes_back_to_a_worker(tiny_onnx: Path) -> None:
    # inline calls are timed too: once their moving average passes the limit, a worker again
    # (a 10 ms limit: the first, fast call must stay under it on a machine busy with the rest
    # of the suite, where 1 ms was once not enough)
    model = ThreadRecordingModel(OnnxModel(tiny_onnx, device="cpu"))
    batcher = Batcher(model, model_name="tiny", metrics=Metrics(), inline_max_s=0.01)
    x = np.ones((1, 4), dtype=np.float32)

    async def scenario() -> list[str]:
        loop_thread = threading.current_thread().name
        await batcher.infer({"x": x}, None)  # a worker, measured fast
        model.delay_s = 0.1
        for _ in range(3):
            await batcher.infer({"x": x}, None)
        return ["loop" if name == loop_thread else "worker" for name in model.threads]

    try:
        assert asyncio.run(scenario()) == ["worker", "loop", "worker", "worker"]
    finally:
        batcher.close()


def test_padded_batches_show_the_model_one_shape(tiny_onnx: Path) -> None:
    # requests of 1 and 2 rows, merged or alone, reach the model as 8 rows; answers are cut back
    model = ThreadRecordingModel(OnnxModel(tiny_onnx, device="cpu"), delay_s=0.01)
    batcher = Batcher(model, model_name="tiny", metrics=Metrics(), max_batch_size=8, pad_to=8)
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((1 + i % 2, 4)).astype(np.float32) for i in range(9)]

    async def scenario() -> list[dict[str, np.ndarray]]:
        return list(await asyncio.gather(*(batcher.infer({"x": x}, None) for x in xs)))

    try:
        outs = asyncio.run(scenario())
    finally:
        batcher.close()
    for x, out in zip(xs, outs, strict=True):
        np.testing.assert_array_equal(out["y"], model.inner.run({"x": x}, None)["y"])
    assert set(model.shapes) == {(8, 4)}
    assert len(model.shapes) < len(xs), "no request was merged with another"


def test_which_models_get_padded_batches(tiny_onnx: Path) -> None:
    cpu = OnnxModel(tiny_onnx, device="cpu")
    assert padded_batch_rows(cpu, 16, "auto") is None  # the CPU provider takes any shape well
    assert padded_batch_rows(cpu, 16, "always") == 16
    assert padded_batch_rows(cpu, 1, "always") is None  # batching off: nothing to pad
    cuda_like = ThreadRecordingModel(cpu)
    cuda_like.device = "cuda"
    assert padded_batch_rows(cuda_like, 16, "auto") == 16
    assert padded_batch_rows(cuda_like, 16, "never") is None


def test_queue_and_running_gauges_use_vllm_names(runtime_server: Any, tiny_onnx: Path) -> None:
    """The autoscaling signals: three requests held in a batch group (not in a model call) are
    vllm:num_requests_waiting; once answered, waiting and running are back to 0."""
    server: Server = runtime_server(["--model-uri", str(tiny_onnx), "--name", "tiny",
                                     "--max-batch-size", "64", "--max-batch-delay-ms", "1500"])
    threads, results = _infer_in_threads(server, 3)
    wait_for(lambda: 'vllm:num_requests_waiting{model_name="tiny"} 3' in server.metrics(),
             timeout=10, interval=0.02, what="3 requests waiting in the batcher")
    assert 'vllm:num_requests_running{model_name="tiny"} 0' in server.metrics()
    for t in threads:
        t.join(10)
    assert [status for status, _ in results] == [200, 200, 200]
    text = server.metrics()
    assert 'vllm:num_requests_waiting{model_name="tiny"} 0' in text
    assert 'vllm:num_requests_running{model_name="tiny"} 0' in text
    assert "# TYPE vllm:num_requests_waiting gauge" in text
