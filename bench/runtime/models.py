"""The benchmark's models, generated offline (nothing is downloaded from a hub).

* ``mlp``: a small MLP built with the ``onnx`` helper API (32 -> 256 -> 256 -> 10, Gemm + Relu,
  fixed random weights, dynamic batch axis). Inference takes tens of microseconds, so what is
  measured is the per-request cost of each server.
* ``resnet18``: torchvision's resnet18 with random weights (no download), exported to ONNX with a
  dynamic batch axis; [N, 3, 224, 224] -> [N, 1000]. About 1.8 GFLOP per image: compute-heavy, so
  dynamic batching pays.

Also writes the request bodies every load generator POSTs (v2 JSON for all servers; the binary
tensor extension for servers that speak it) and the expected output for a correctness check.
Files are cached in the work directory and rebuilt when missing.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ModelFiles:
    name: str
    onnx: Path
    input_name: str
    output_name: str
    row_shape: tuple[int, ...]   # one request's shape without the batch axis
    json_body: Path
    binary_body: Path
    binary_header_len: int
    sample: Path                 # .npz: the request's input and the expected output


def _mlp(path: Path) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    sizes = [32, 256, 256, 10]
    inits, nodes = [], []
    prev = "input"
    last = len(sizes) - 2
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        w = (rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32)
        bias = (rng.standard_normal(b) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(bias, f"b{i}")]
        if i == last:
            nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], ["output"]))
        else:
            nodes.append(helper.make_node("Gemm", [prev, f"w{i}", f"b{i}"], [f"g{i}"]))
            nodes.append(helper.make_node("Relu", [f"g{i}"], [f"h{i}"]))
            prev = f"h{i}"
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", 10])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    tmp = path.with_suffix(".tmp")
    onnx.save(model, tmp)
    tmp.replace(path)


def _resnet18(path: Path) -> None:
    import torch
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    tmp = path.with_suffix(".tmp")
    torch.onnx.export(net, (x,), str(tmp), input_names=["input"], output_names=["output"],
                      dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                      opset_version=17, dynamo=False)
    tmp.replace(path)


BUILDERS = {"mlp": (_mlp, (32,)), "resnet18": (_resnet18, (3, 224, 224))}


def ensure_model(name: str, workdir: Path) -> ModelFiles:
    build, row_shape = BUILDERS[name]
    workdir.mkdir(parents=True, exist_ok=True)
    onnx_path = workdir / f"{name}.onnx"
    if not onnx_path.is_file():
        build(onnx_path)
    files = ModelFiles(name, onnx_path, "input", "output", row_shape,
                       workdir / f"{name}.request.json", workdir / f"{name}.request.bin", 0,
                       workdir / f"{name}.sample.npz")
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1, *row_shape)).astype(np.float32)
    # JSON: the flat row-major data, as v2 allows; floats printed with repr (round-trip exact)
    body = {"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                        "data": [float(v) for v in x.ravel()]}]}
    files.json_body.write_text(json.dumps(body, separators=(",", ":")))
    header = json.dumps({"inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "output",
                                      "parameters": {"binary_data": True}}]},
                        separators=(",", ":")).encode()
    files.binary_body.write_bytes(header + x.tobytes())
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    y = sess.run(["output"], {"input": x})[0]
    np.savez(files.sample, x=x, y=y)
    return ModelFiles(**{**files.__dict__, "binary_header_len": len(header)})
