"""torchvision resnet18 (random weights) exported to ONNX, TorchScript and torch.export, served by
the runtime with batching off and on; outputs equal the eager torch model's."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

FILES = {"onnx": "resnet18.onnx", "torchscript": "resnet18.pt", "torch-export": "resnet18.pt2"}


@pytest.mark.slow
@pytest.mark.parametrize("batching", [False, True], ids=["batching-off", "batching-on"])
@pytest.mark.parametrize("fmt", list(FILES))
def test_resnet18(runtime_server: Any, resnet18_dir: Path, fmt: str, batching: bool) -> None:
    import tritonclient.http as httpclient

    args = ["--model-uri", str(resnet18_dir / FILES[fmt]), "--name", "resnet18",
            "--intra-op-threads", "1"]
    if batching:
        args += ["--max-batch-size", "4", "--max-batch-delay-ms", "300"]
    server = runtime_server(args)
    meta = server.get_json("/v2/models/resnet18")[1]
    (inp,) = meta["inputs"]
    (out,) = meta["outputs"]
    assert inp["shape"] == [-1, 3, 224, 224] and inp["datatype"] == "FP32"
    assert out["shape"] == [-1, 1000]
    x = np.load(resnet18_dir / "input.npy")
    want = np.load(resnet18_dir / "expected.npy")

    def infer(rows: slice) -> np.ndarray:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{server.port}")
        try:
            tensor = httpclient.InferInput(inp["name"], [*x[rows].shape], "FP32")
            tensor.set_data_from_numpy(x[rows], binary_data=True)
            result: np.ndarray = client.infer("resnet18", [tensor]).as_numpy(out["name"])
            return result
        finally:
            client.close()

    np.testing.assert_allclose(infer(slice(0, 3)), want, rtol=1e-3, atol=1e-3)
    with ThreadPoolExecutor(3) as pool:
        parts = list(pool.map(infer, [slice(i, i + 1) for i in range(3)]))
    np.testing.assert_allclose(np.concatenate(parts), want, rtol=1e-3, atol=1e-3)
    if batching:
        text = server.metrics()
        count = [line for line in text.splitlines()
                 if line.startswith("kubemaas_batch_size_count")]
        total = [line for line in text.splitlines() if line.startswith("kubemaas_batch_size_sum")]
        rows = float(total[0].split()[-1])
        calls = float(count[0].split()[-1])
        assert rows == 6  # the warm-up does not go through the batcher
        assert calls <= 3, "the three concurrent single-image requests were never merged"


def test_torchscript_without_metadata(runtime_server: Any) -> None:
    from importlib.metadata import version

    from .conftest import CACHE, build_models_once

    out = CACHE / f"addmul-torch{version('torch')}"
    build_models_once(out, "small")
    server = runtime_server(["--model-uri", str(out / "addmul.pt"), "--name", "addmul",
                             "--max-batch-size", "4"])
    meta = server.get_json("/v2/models/addmul")[1]
    assert [i["name"] for i in meta["inputs"]] == ["a", "b"]  # from forward's signature
    assert meta["platform"] == "pytorch_torchscript"
    status, doc = server.post_json("/v2/models/addmul/infer", {"inputs": [
        {"name": "a", "shape": [2], "datatype": "FP32", "data": [1, 2]},
        {"name": "b", "shape": [2], "datatype": "FP32", "data": [3, 4]}]})
    assert status == 200, doc
    assert {o["name"]: o["data"] for o in doc["outputs"]} == {
        "output__0": [4.0, 6.0], "output__1": [3.0, 8.0]}
    status, doc = server.post_json("/v2/models/addmul/infer", {"inputs": [
        {"name": "a", "shape": [1], "datatype": "INT32", "data": [1]},
        {"name": "b", "shape": [1], "datatype": "FP32", "data": [1]}]})
    assert status == 400 and "datatype" in doc["error"]
    ab = [{"name": "a", "shape": [1], "datatype": "FP32", "data": [2]},
          {"name": "b", "shape": [1], "datatype": "FP32", "data": [5]}]
    status, doc = server.post_json("/v2/models/addmul/infer", {
        "inputs": ab, "outputs": [{"name": "output__1"}]})
    assert status == 200 and doc["outputs"] == [
        {"name": "output__1", "datatype": "FP32", "shape": [1], "data": [10.0]}]
    status, doc = server.post_json("/v2/models/addmul/infer", {
        "inputs": ab, "outputs": [{"name": "nope"}]})
    assert status == 400 and "no output 'nope'" in doc["error"]


def test_a_torch_export_shape_guard_is_the_client_s_error(runtime_server: Any,
                                                          torch_mlp: Path) -> None:
    # mlp.pt2 was exported for a batch of 1..1024: 1025 rows answered 500 'inference failed:
    # AssertionError: Guard failed: x.size()[0] <= 1024'
    server = runtime_server(["--model-uri", str(torch_mlp / "mlp.pt2"), "--name", "mlp"])
    for rows, status in ((1025, 400), (1024, 200)):
        got, doc = server.post_json("/v2/models/mlp/infer", {"inputs": [
            {"name": "x", "shape": [rows, 32], "datatype": "FP32", "data": [0.5] * (rows * 32)}]})
        assert got == status, doc
    got, doc = server.post_json("/v2/models/mlp/infer", {"inputs": [
        {"name": "x", "shape": [1025, 32], "datatype": "FP32", "data": [0.5] * (1025 * 32)}]})
    assert doc["error"].startswith("the model rejected the input: ") and "1024" in doc["error"]
    assert 'outcome="server_error"' not in server.metrics()
