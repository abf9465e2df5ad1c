"""spec.model.optimize, runtime side: `python -m kubemaas_runtime.optimize` as a real process on
real models (a two-layer MLP, resnet18 with random weights), the optimized model then served by
a real runtime process and its answers compared with the original's."""

from __future__ import annotations

import json
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import PY, ort_run, save_onnx

pytestmark = pytest.mark.timeout(600)


def make_mlp_onnx(path: Path) -> None:
    """x FP32 [batch, 32] -> relu(x W1 + b1) W2 + b2 = scores FP32 [batch, 10] (seeded)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array((rng.standard_normal(s) / np.sqrt(s[0])).astype(np.float32),
                                     n) for n, s in (("W1", (32, 64)), ("W2", (64, 10)))]
    inits += [numpy_helper.from_array(np.zeros(n, np.float32) + 0.01, f"b{i}")
              for i, n in ((1, 64), (2, 10))]
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W1"], ["h0"]), helper.make_node("Add", ["h0", "b1"],
                                                                            ["h1"]),
         helper.make_node("Relu", ["h1"], ["h"]), helper.make_node("MatMul", ["h", "W2"], ["s0"]),
         helper.make_node("Add", ["s0", "b2"], ["scores"])],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10])], inits)
    save_onnx(graph, path)


@pytest.fixture(scope="module")
def mlp_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    make_mlp_onnx(path)
    return path


def optimize(model: Path, out: Path, *args: str) -> dict[str, Any]:
    """Run the optimize step; returns its report (stdout's JSON line, which it also wrote to
    the termination message file)."""
    msg = out.parent / f"{out.name}.{uuid.uuid4().hex}.termination-log"  # one per "pod"
    proc = subprocess.run([PY, "-m", "kubemaas_runtime.optimize", "--model-uri", str(model),
                           "--out", str(out), "--termination-message-path", str(msg), *args],
                          capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(msg.read_text()) == report
    return report


def _infer(server: Any, name: str, out_name: str, x: np.ndarray) -> np.ndarray:
    status, doc = server.post_json(f"/v2/models/{name}/infer", {"inputs": [
        {"name": server.input_name, "shape": list(x.shape), "datatype": "FP32",
         "data": x.ravel().tolist()}]})
    assert status == 200, doc
    out = next(o for o in doc["outputs"] if o["name"] == out_name)
    return np.asarray(out["data"], dtype=np.float32).reshape(out["shape"])


def serve_and_compare(runtime_server: Any, out: Path, input_name: str, out_name: str,
                      x: np.ndarray, want: np.ndarray, report: dict[str, Any]) -> np.ndarray:
    """Serve ``out/serve`` with a real runtime; its answers must keep the report's guard."""
    server = runtime_server(["--model-uri", str(out / "serve"), "--name", "m",
                             "--max-batch-size", "4"])
    server.input_name = input_name
    got = _infer(server, "m", out_name, x)
    assert got.shape == want.shape
    guard = report["guard"]
    if "maxRelError" in guard:
        assert np.max(np.abs(got - want)) <= guard["maxRelError"] * np.max(np.abs(want)) + 1e-6
    if "minTop1Agreement" in guard:
        assert np.mean(got.argmax(1) == want.argmax(1)) >= guard["minTop1Agreement"]
    return got


@pytest.mark.parametrize(("quantize", "max_rel"),
                         [("int8-dynamic", "0.05"), ("int8-static", "0.1"), ("fp16", "0.01")])
def test_mlp_quantized_serves_within_the_guard(runtime_server: Any, mlp_onnx: Path,
                                               tmp_path: Path, quantize: str,
                                               max_rel: str) -> None:
    # an explicit guard: with the default (top-1 agreement 0.99 on 64 probe rows, i.e. no flip)
    # int8 flips one near-tie of this random MLP and the original would serve; int8-static's
    # ranges, calibrated on other random rows, give up to ~7 % relative error here
    report = optimize(mlp_onnx, tmp_path / "opt", "--quantize", quantize, "--repeats", "3",
                      "--max-rel-error", max_rel, "--min-top1-agreement", "0.95")
    assert report["serving"] == "optimized", report
    assert report["quantize"] == quantize and report["cached"] is False
    assert report["sizeBytes"]["optimized"] < report["sizeBytes"]["original"]
    assert set(report["latencyMs"]["optimized"]) == {"batch1", "batch8"}
    assert report["errors"]["scores"]["top1Agreement"] >= 0.95
    assert [p.name for p in (tmp_path / "opt" / "serve").iterdir()] == ["model.onnx"]
    x = np.random.default_rng(11).standard_normal((4, 32)).astype(np.float32)
    want = ort_run(mlp_onnx, {"x": x})["scores"]
    got = serve_and_compare(runtime_server, tmp_path / "opt", "x", "scores", x, want, report)
    assert not np.array_equal(got, want)  # it is the optimized model that answered


def test_guard_too_tight_serves_the_original(runtime_server: Any, mlp_onnx: Path,
                                             tmp_path: Path) -> None:
    report = optimize(mlp_onnx, tmp_path / "opt", "--quantize", "int8-dynamic",
                      "--max-abs-error", "0", "--repeats", "1")
    assert report["serving"] == "original"
    assert report["reason"].startswith("accuracy guard failed: scores: max abs error")
    assert report["errors"]["scores"]["maxAbsError"] > 0  # the figures are still reported
    assert report["guard"] == {"maxAbsError": 0.0}
    x = np.random.default_rng(12).standard_normal((3, 32)).astype(np.float32)
    want = ort_run(mlp_onnx, {"x": x})["scores"]
    server = runtime_server(["--model-uri", str(tmp_path / "opt" / "serve"), "--name", "m"])
    server.input_name = "x"
    np.testing.assert_array_equal(_infer(server, "m", "scores", x), want)


def test_replicas_sharing_the_directory_optimize_once(mlp_onnx: Path, tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(lambda _: optimize(mlp_onnx, tmp_path / "opt", "--quantize",
                                                   "fp16", "--repeats", "1"), range(2)))
    assert sorted(r["cached"] for r in reports) == [False, True]
    assert reports[0]["errors"] == reports[1]["errors"]
    again = optimize(mlp_onnx, tmp_path / "opt", "--quantize", "fp16", "--repeats", "1",
                     "--max-rel-error", "0.01")  # other options: another cache entry
    assert again["cached"] is False and again["guard"] == {"maxRelError": 0.01}


def test_impossible_combination_is_refused(mlp_onnx: Path, tmp_path: Path) -> None:
    proc = subprocess.run([PY, "-m", "kubemaas_runtime.optimize", "--model-uri", str(mlp_onnx),
                           "--out", str(tmp_path / "o"), "--convert", "onnx",
                           "--termination-message-path", str(tmp_path / "msg")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "--convert onnx takes a torchscript or torch-export model, not onnx" in proc.stderr
    assert "--convert onnx" in (tmp_path / "msg").read_text()


RESNET_CASES = [("resnet18.onnx", ["--quantize", "int8-static"], "logits"),
                ("resnet18.onnx", ["--quantize", "int8-dynamic"], "logits"),
                ("resnet18.onnx", ["--quantize", "fp16"], "logits"),
                ("resnet18.pt", ["--convert", "onnx"], "output__0"),
                ("resnet18.pt2", ["--convert", "onnx"], "output__0"),
                ("resnet18.pt2", ["--convert", "onnx", "--quantize", "int8-static"], "output__0")]


@pytest.mark.parametrize(("name", "args", "out_name"), RESNET_CASES,
                         ids=lambda v: "-".join(v) if isinstance(v, list) else str(v))
def test_resnet18_optimized_serves_within_the_guard(runtime_server: Any, resnet18_dir: Path,
                                                    tmp_path: Path, name: str, args: list[str],
                                                    out_name: str) -> None:
    report = optimize(resnet18_dir / name, tmp_path / "opt", *args, "--probe-rows", "16",
                      "--max-batch-size", "4", "--repeats", "1")
    assert report["serving"] == "optimized", report
    assert report["errors"][out_name]["top1Agreement"] >= 0.99
    if "--quantize" in args:
        assert report["sizeBytes"]["optimized"] < 0.55 * report["sizeBytes"]["original"]
    x = np.load(resnet18_dir / "input.npy")
    want = np.load(resnet18_dir / "expected.npy")  # the eager torch model's answers
    serve_and_compare(runtime_server, tmp_path / "opt", "input" if name.endswith(".onnx")
                      or name.endswith(".pt") else "x", out_name, x, want, report)
