"""spec.model.optimize: parsing and refusals, the rendered init container, status.optimization
from a pod's termination message, and the runtime's pure measures (probe inputs, errors, guard)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest

from kubemaas_operator import optimization_status
from kubemaas_operator.api import SpecError, parse_spec
from kubemaas_operator.render import CACHE_DIR, conversion, optimization, runtime_env
from kubemaas_runtime.backends.base import TensorSpec
from kubemaas_runtime.optimize import measure


def spec(fmt: str = "onnx", **optimize: Any) -> Any:
    return parse_spec({"model": {"uri": "s3://b/m", "format": fmt, "optimize": optimize},
                       "runtime": {"image": "img", "batching": {"maxBatchSize": 8}}})


def test_parsed_with_its_guard() -> None:
    opt = spec(quantize="int8-static", minTop1Agreement=0.98, probeRows=128).model.optimize
    assert (opt.quantize, opt.convert, opt.min_top1_agreement, opt.probe_rows) == (
        "int8-static", None, 0.98, 128)
    assert spec("torch-export", convert="onnx", quantize="fp16").model.optimize.convert == "onnx"
    assert spec("torch-export", quantize="int8-weight-only").model.optimize.quantize == (
        "int8-weight-only")
    assert spec("torchscript", quantize="bf16").model.optimize.convert is None


@pytest.mark.parametrize(("fmt", "optimize", "path", "says"), [
    ("onnx", {}, "spec.model.optimize", "set quantize and/or convert"),
    ("onnx", {"convert": "onnx"}, "spec.model.optimize.convert", "not onnx"),
    ("keras", {"quantize": "fp16"}, "spec.model.optimize.quantize", "not keras"),
    ("torchscript", {"quantize": "int8-dynamic"}, "spec.model.optimize.quantize",
     "needs convert: onnx"),
    ("onnx", {"quantize": "int4"}, "spec.model.optimize.quantize", "not one of"),
    ("torchscript", {"quantize": "int8-weight-only"}, "spec.model.optimize.quantize",
     "int8-weight-only works on torch-export, hf models without convert, not on torchscript"),
    ("torch-export", {"quantize": "bf16", "convert": "onnx"}, "spec.model.optimize.quantize",
     "not on torch-export with convert: onnx"),
    ("onnx", {"quantize": "bf16"}, "spec.model.optimize.quantize", "not on onnx"),
    ("onnx", {"quantize": "fp16", "minTop1Agreement": 1.5}, "spec.model.optimize.minTop1Agreement",
     "between 0 and 1"),
    ("onnx", {"quantize": "fp16", "maxAbsError": "x"}, "spec.model.optimize.maxAbsError",
     "must be a number"),
])
def test_impossible_combinations_are_refused(fmt: str, optimize: dict[str, Any], path: str,
                                             says: str) -> None:
    with pytest.raises(SpecError) as err:
        spec(fmt, **optimize)
    assert err.value.path == path and says in err.value.message


def test_rendered_init_container_and_runtime_env() -> None:
    s = spec("torchscript", convert="onnx", quantize="int8-dynamic", maxRelError=0.02)
    (init,) = conversion.init_containers(s, "s3://b/m", CACHE_DIR, None, [], {
        "requests": {"cpu": "2", "nvidia.com/gpu": "1"}, "limits": {}})
    env = {e["name"]: e["value"] for e in init["env"]}
    assert init["name"] == optimization.INIT_CONTAINER == optimization_status.INIT_CONTAINER
    assert init["image"] == "img"
    assert env["KUBEMAAS_OPTIMIZE_QUANTIZE"] == "int8-dynamic"
    assert env["KUBEMAAS_OPTIMIZE_CONVERT"] == "onnx"
    assert env["KUBEMAAS_OPTIMIZE_MAX_REL_ERROR"] == "0.02"
    assert env["KUBEMAAS_MAX_BATCH_SIZE"] == "8" and env["KUBEMAAS_MODEL_FORMAT"] == "torchscript"
    assert "KUBEMAAS_OPTIMIZE_MIN_TOP1_AGREEMENT" not in env
    assert init["resources"] == {"requests": {"cpu": "2", "nvidia.com/gpu": "1"}}
    runtime = {e["name"]: e["value"] for e in runtime_env(s, "m", "s3://b/m")}
    assert runtime["KUBEMAAS_MODEL_URI"] == f"file://{CACHE_DIR}/optimized/serve"
    assert "KUBEMAAS_MODEL_FORMAT" not in runtime and "KUBEMAAS_MODEL_SHA256" not in runtime


def _pod(name: str, message: str, exit_code: int = 0) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": {"initContainerStatuses": [
        {"name": "optimize", "state": {"terminated": {"exitCode": exit_code,
                                                      "message": message}}}]}}


REPORT = {"serving": "original", "reason": "accuracy guard failed: y: max abs error 0.1 > 0",
          "quantize": "int8-dynamic", "sizeBytes": {"original": 100, "optimized": 30},
          "latencyMs": {"original": {"batch1": 2.0}, "optimized": {"batch1": 1.0}},
          "errors": {"y": {"maxAbsError": 0.1}}, "cached": True}


def test_status_from_the_termination_message() -> None:
    assert optimization_status.report_of_pod(_pod("a", "x", exit_code=1)) == ""
    message = optimization_status.report_of_pod(_pod("a", json.dumps(REPORT)))
    pods = [("old", "r1", json.dumps({**REPORT, "serving": "optimized"})), ("new", "r2", message),
            ("pending", "r2", "")]
    got = optimization_status.status_of(pods, "r2")
    assert got is not None and got["pod"] == "new" and "cached" not in got
    assert optimization_status.status_of([("p", "r", "optimize: error: boom")], "r") == {
        "pod": "p", "serving": "unknown",
        "reason": "unreadable report: Expecting value: line 1 column 1 (char 0)"}
    assert optimization_status.status_of([("p", "r", "")], "r") is None
    (event,) = optimization_status.events(None, got)
    assert event[:2] == ("Warning", "OptimizationRejected")
    assert "accuracy guard failed" in event[2] and "size 100 -> 30 bytes" in event[2]
    assert "batch1 2.0 -> 1.0 ms" in event[2]
    assert optimization_status.events(got, {**got, "pod": "other"}) == []  # same figures


def test_probe_inputs_are_seeded_and_follow_the_metadata() -> None:
    specs = [TensorSpec("x", "FP32", (-1, 3, -1)), TensorSpec("ids", "INT64", (-1, 4)),
             TensorSpec("m", "BOOL", (-1,))]
    a, b = measure.probe_inputs(specs, 5), measure.probe_inputs(specs, 5)
    assert a["x"].shape == (5, 3, measure.DYNAMIC_DIM) and a["x"].dtype == np.float32
    assert a["ids"].dtype == np.int64 and a["ids"].max() < 10 and a["m"].dtype == np.bool_
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    with pytest.raises(Exception, match="known shape"):
        measure.probe_inputs([TensorSpec("s", "BYTES", (-1,))], 2)


def test_errors_and_the_guard() -> None:
    ref = {"scores": np.array([[1.0, 2.0], [3.0, -4.0]], np.float32)}
    got = {"scores": np.array([[1.0, 2.5], [3.0, -4.0]], np.float32)}
    errs = measure.errors(ref, got)
    assert errs == {"scores": {"maxAbsError": 0.5, "maxRelError": 0.125, "top1Agreement": 1.0}}
    assert measure.check(measure.Guard(), errs) == [
        "scores: max rel error 0.125 > 0.05"]  # the default guard
    assert measure.check(measure.Guard(min_top1_agreement=0.99), errs) == []
    flipped = measure.errors(ref, {"scores": np.array([[3.0, 2.0], [3.0, -4.0]], np.float32)})
    assert measure.check(measure.Guard(min_top1_agreement=0.99), flipped) == [
        "scores: top-1 agreement 0.5 < 0.99"]


def test_report_fits_a_termination_message() -> None:
    from kubemaas_runtime.optimize.__main__ import MESSAGE_LIMIT, compact

    small = {"serving": "optimized", "errors": {"y": {"maxAbsError": 0.1}}}
    assert json.loads(compact(small)) == small
    big = {"serving": "optimized", "reason": "r",
           "errors": {f"out{i}": {"maxAbsError": 0.123456} for i in range(300)}}
    text = compact(big)
    assert len(text.encode()) <= MESSAGE_LIMIT
    assert json.loads(text) == {"serving": "optimized", "reason": "r", "truncated": True}
