"""Large JSON bodies are decoded off the event loop: probes stay fast while they are in flight."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import Server, save_onnx

N_STRINGS = 600_000  # a ~4.8 MB body whose decode is mostly Python (~160 ms here)
N_LARGE = 3


def make_count_onnx(path: Path) -> None:
    """text STRING [n] -> n INT64 [1] (its length): a big input, a tiny answer."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Shape", ["text"], ["n"])], "count",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["len"])],
        [helper.make_tensor_value_info("n", TensorProto.INT64, [1])])
    save_onnx(graph, path)


@pytest.mark.timeout(120)
def test_probes_stay_fast_while_large_json_bodies_decode(runtime_server: Any,
                                                         tmp_path: Path) -> None:
    model = tmp_path / "count.onnx"
    make_count_onnx(model)
    server: Server = runtime_server(["--model-uri", str(model), "--name", "count",
                                     "--warmup", "false"])
    body = json.dumps({
        "inputs": [{"name": "text", "shape": [N_STRINGS], "datatype": "BYTES",
                    "data": [f"w{i % 1000}" for i in range(N_STRINGS)]}],
        "outputs": [{"name": "n"}]}).encode()
    headers = {"Content-Type": "application/json"}

    durations: list[float] = []
    results: list[tuple[int, bytes]] = []

    def large() -> None:
        t0 = time.perf_counter()
        status, _, out = server.request("POST", "/v2/models/count/infer", body, headers,
                                        timeout=60)
        durations.append(time.perf_counter() - t0)
        results.append((status, out))

    threads = [threading.Thread(target=large) for _ in range(N_LARGE)]
    for t in threads:
        t.start()
    time.sleep(0.05)  # let the bodies go out
    probes: list[float] = []
    while any(t.is_alive() for t in threads):
        t0 = time.perf_counter()
        status, _, out = server.request("GET", "/v2/health/live", timeout=30)
        took = time.perf_counter() - t0
        assert status == 200 and json.loads(out) == {"live": True}
        if any(t.is_alive() for t in threads):  # answered while large requests were in flight
            probes.append(took)
    for t in threads:
        t.join()

    assert [s for s, _ in results] == [200] * N_LARGE, results[0][1][:300]
    assert json.loads(results[0][1])["outputs"][0]["data"] == [N_STRINGS]
    assert probes, "no probe was answered while the large requests were in flight"
    # Decoded on the event loop, a probe waits for the decodes queued before it: measured here,
    # the slowest probe took 0.85-0.93 of the slowest large request. Off the loop it waits at
    # most for one C call that holds the GIL (orjson's parse, onnxruntime's string copy) and a
    # few GIL switch intervals: 0.09-0.2 of it. Generous bound: half.
    bound = max(durations) / 2
    assert max(probes) < bound, (f"probes took up to {max(probes) * 1000:.0f} ms while large "
                                 f"requests took {[round(d * 1000) for d in durations]} ms")
