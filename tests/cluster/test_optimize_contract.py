"""spec.model.optimize through the operator: the ModelDeployment's pod gets the optimize init
container; that container, run from the written spec (its command and env, volumes moved to local
directories), fetches the MLP from a local HTTP store, quantizes it to fp16, measures it and
writes its report as its termination message; the report goes into the pod's status as the
kubelet would put it (kwok runs no containers), and the operator copies it into
status.optimization with an Event. The runtime started from the written container spec then
serves the optimized file. A guard set too tight gives a Warning and the original serves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubemaas_testbed.cluster import free_port
from tests.cluster.conftest import Operator
from tests.cluster.test_keras_contract import base_env, file_server, local_env, runtime_from
from tests.cluster.test_operator import apply, md, status
from tests.cluster.test_rollout import events_of
from tests.conftest import Kube
from tests.helpers import http_json, wait_for
from tests.runtime.conftest import PY, ort_run
from tests.runtime.test_optimize import make_mlp_onnx
from tests.runtime.test_optimize_probe import INT8_STATIC_GUARD

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


def _pod(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    def found() -> dict[str, Any] | None:
        pods = json.loads(kube.kubectl("-n", namespace, "get", "pods", "-l",
                                       f"app.kubernetes.io/instance={name}", "-o",
                                       "json").stdout)["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        return live[0] if len(live) == 1 else None
    pod: dict[str, Any] = wait_for(found, timeout=60, what=f"one pod of {name}")
    return pod


def _run_init(init: dict[str, Any], local: dict[str, Path], tmp: Path) -> str:
    """The init container's command, run here; returns its termination message."""
    import subprocess

    env = {**base_env(tmp), **local_env(init, local),
           "KUBEMAAS_TERMINATION_MESSAGE_PATH": str(tmp / "termination-log")}
    proc = subprocess.run([PY, *init["command"][1:]], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return (tmp / "termination-log").read_text()


def _report_terminated(kube: Kube, namespace: str, pod: dict[str, Any], message: str) -> None:
    """Write the init container's termination into the pod's status, as the kubelet does."""
    patch = {"status": {"initContainerStatuses": [{
        "name": "optimize", "image": pod["spec"]["initContainers"][0]["image"], "imageID": "",
        "ready": True, "restartCount": 0,
        "state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": message}}}]}}
    kube.kubectl("-n", namespace, "patch", "pod", pod["metadata"]["name"], "--subresource",
                 "status", "--type", "strategic", "-p", json.dumps(patch))


def _deploy(kube: Kube, namespace: str, name: str, store: str, port: int,
            optimize: dict[str, Any]) -> dict[str, Any]:
    apply(kube, namespace, md(name, model={"uri": f"{store}/mlp.onnx", "format": "onnx",
                                           "name": "mlp", "optimize": optimize},
                              runtime={"image": "ghcr.io/kubemaas/runtime:0.1.0",
                                       "batching": {"maxBatchSize": 4}},
                              serving={"port": port}))
    return _pod(kube, namespace, name)


def assert_fp16_mlp_served(container: dict[str, Any], env: dict[str, str], original: Path,
                           port: int, tmp_path: Path) -> None:
    """The runtime started from the written container spec answers with the fp16 model: not
    the original's outputs, within the guard's 5 % of them."""
    x = np.random.default_rng(5).standard_normal((3, 32)).astype(np.float32)
    want = ort_run(original, {"x": x})["scores"]
    with runtime_from(container, env, tmp_path / "runtime.log", port) as base:
        code, doc = http_json(f"{base}/v2/models/mlp/infer", {"inputs": [
            {"name": "x", "shape": [3, 32], "datatype": "FP32", "data": x.ravel().tolist()}]})
        assert code == 200, doc
    got = np.asarray(doc["outputs"][0]["data"], np.float32).reshape(3, 10)
    assert not np.array_equal(got, want)  # the fp16 model answered ...
    assert np.max(np.abs(got - want)) <= 0.05 * np.max(np.abs(want))  # ... within the guard


def test_status_shows_the_measured_figures(kube: Kube, namespace: str, operator: Operator,
                                           tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    make_mlp_onnx(store_dir / "mlp.onnx")
    port = free_port()
    with file_server(store_dir) as store:
        pod = _deploy(kube, namespace, "mlp-fp16", store, port, {"quantize": "fp16"})
        (init,) = pod["spec"]["initContainers"]
        (container,) = pod["spec"]["containers"]
        assert init["name"] == "optimize" and init["image"] == container["image"]
        assert init["command"] == ["python", "-m", "kubemaas_runtime.optimize"]
        local = {"model-cache": tmp_path / "cache"}
        local["model-cache"].mkdir()
        message = _run_init(init, local, tmp_path)
    _report_terminated(kube, namespace, pod, message)

    report = wait_for(lambda: status(kube, namespace, "mlp-fp16").get("optimization"),
                      timeout=60, what="status.optimization of mlp-fp16")
    assert report["serving"] == "optimized" and report["quantize"] == "fp16"
    assert report["pod"] == pod["metadata"]["name"]
    assert report["sizeBytes"]["optimized"] < report["sizeBytes"]["original"]
    assert set(report["latencyMs"]["original"]) == {"batch1", "batch4"}
    assert report["errors"]["scores"]["maxRelError"] <= 0.05
    assert report["guard"] == {"maxRelError": 0.05, "minTop1Agreement": 0.99}
    described = kube.kubectl("-n", namespace, "describe", "md", "mlp-fp16").stdout
    assert "Optimization:" in described and "Max Rel Error" in described
    optimized = wait_for(lambda: [e for e in events_of(kube, namespace, "mlp-fp16")
                                  if e["reason"] == "Optimized"] or None,
                         timeout=30, what="the Optimized Event")
    assert "size " in optimized[0]["message"] and optimized[0]["type"] == "Normal"

    # the runtime, started from the written container spec, serves what the init container left
    env = {**base_env(tmp_path), **local_env(container, local)}
    assert env["KUBEMAAS_MODEL_URI"].endswith("/optimized/serve")
    assert_fp16_mlp_served(container, env, store_dir / "mlp.onnx", port, tmp_path)


def test_guard_too_tight_warns_and_the_original_serves(kube: Kube, namespace: str,
                                                       operator: Operator,
                                                       tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    make_mlp_onnx(store_dir / "mlp.onnx")
    with file_server(store_dir) as store:
        pod = _deploy(kube, namespace, "mlp-tight", store, free_port(),
                      {"quantize": "int8-dynamic", "maxAbsError": 0})
        local = {"model-cache": tmp_path / "cache"}
        local["model-cache"].mkdir()
        message = _run_init(pod["spec"]["initContainers"][0], local, tmp_path)
    _report_terminated(kube, namespace, pod, message)
    report = wait_for(lambda: status(kube, namespace, "mlp-tight").get("optimization"),
                      timeout=60, what="status.optimization of mlp-tight")
    assert report["serving"] == "original"
    assert report["reason"].startswith("accuracy guard failed: scores: max abs error")
    warning = wait_for(lambda: [e for e in events_of(kube, namespace, "mlp-tight")
                                if e["reason"] == "OptimizationRejected"] or None,
                       timeout=30, what="the OptimizationRejected Warning")
    assert warning[0]["type"] == "Warning"
    assert "serving the original model: accuracy guard failed" in warning[0]["message"]
    served = list((local["model-cache"] / "optimized" / "serve").iterdir())
    assert [p.name for p in served] == ["model.onnx"]
    assert served[0].read_bytes() == (store_dir / "mlp.onnx").read_bytes()


def test_probe_file_named_in_the_spec_is_what_the_guard_measures(kube: Kube, namespace: str,
                                                                  operator: Operator,
                                                                  tmp_path: Path) -> None:
    store_dir = tmp_path / "store"
    store_dir.mkdir()
    make_mlp_onnx(store_dir / "mlp.onnx")
    np.savez(store_dir / "probe.npz", x=np.random.default_rng(3).standard_normal((24, 32))
             .astype(np.float32))
    with file_server(store_dir) as store:
        pod = _deploy(kube, namespace, "mlp-probe", store, free_port(),
                      {"quantize": "int8-static", "maxRelError": INT8_STATIC_GUARD,
                       "probe": {"uri": f"{store}/probe.npz"}})
        (init,) = pod["spec"]["initContainers"]
        env = {e["name"]: e["value"] for e in init["env"]}
        assert env["KUBEMAAS_OPTIMIZE_PROBE_URI"] == f"{store}/probe.npz"
        local = {"model-cache": tmp_path / "cache"}
        local["model-cache"].mkdir()
        message = _run_init(init, local, tmp_path)
    _report_terminated(kube, namespace, pod, message)
    report = wait_for(lambda: status(kube, namespace, "mlp-probe").get("optimization"),
                      timeout=60, what="status.optimization of mlp-probe")
    assert report["probe"]["file"] == "probe.npz" and report["probe"]["rows"] == 24
    assert report["serving"] == "optimized", report
    described = kube.kubectl("-n", namespace, "describe", "md", "mlp-probe").stdout
    assert "probe.npz" in described


def test_the_api_server_takes_an_hf_model_with_the_token_guard(kube: Kube, namespace: str,
                                                                operator: Operator) -> None:
    result = kube.kubectl("-n", namespace, "apply", "--dry-run=server", "-f", "-", check=False,
                          input=md("llm", model={"uri": "s3://models/llm/", "format": "hf",
                                                 "optimize": {"quantize": "int8-weight-only",
                                                              "minTokenAgreement": 0.8}}))
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("model", "says"), [
    ({"format": "onnx", "optimize": {"convert": "onnx"}},
     "model.optimize.convert onnx converts a torchscript or torch-export model"),
    ({"format": "torchscript", "optimize": {"quantize": "int8-dynamic"}},
     "model.optimize.quantize int8-dynamic, int8-static and fp16 work on ONNX models"),
    ({"format": "torchscript", "optimize": {"quantize": "int8-weight-only"}},
     "int8-weight-only works on torch-export and hf models, without convert"),
    ({"format": "onnx", "optimize": {"quantize": "fp16", "minTokenAgreement": 0.9}},
     "model.optimize.minTokenAgreement is the guard of hf language models"),
    ({"format": "hf", "uri": "s3://models/llm/",
      "optimize": {"quantize": "int8-weight-only", "maxRelError": 0.1}},
     "an hf model's guard is minTokenAgreement"),
    ({"format": "hf", "uri": "s3://models/llm/", "optimize": {"quantize": "int8-dynamic"}},
     "int8-dynamic, int8-static and fp16 work on ONNX models"),
    ({"format": "onnx", "optimize": {"quantize": "bf16"}},
     "bf16 works on torchscript, torch-export and hf models, without convert"),
    ({"format": "onnx", "optimize": {"maxAbsError": 0.1}},
     "model.optimize needs quantize and/or convert"),
    ({"format": "onnx", "optimize": {"quantize": "fp16", "probeRows": 8,
                                     "probe": {"uri": "s3://models/p.npz"}}},
     "set probe (a file with its own rows) or probeRows"),
    ({"format": "onnx", "uri": "https://h/m.onnx",
      "optimize": {"quantize": "fp16", "probe": {"uri": "s3://models/p.npz"}}},
     "the model must be on s3:// as well"),
    ({"format": "onnx", "uri": None, "cache": "resnet",
      "optimize": {"quantize": "fp16", "probe": {"uri": "s3://models/p.npz"}}},
     "the model must be on s3:// as well"),
    ({"format": "onnx", "optimize": {"quantize": "fp16", "probe": {"uri": "pvc://c/p.npz"}}},
     "model.optimize.probe.uri must be file:///PATH"),
])
def test_the_api_server_refuses_impossible_combinations(kube: Kube, namespace: str,
                                                        operator: Operator,  # CRDs installed
                                                        model: dict[str, Any],
                                                        says: str) -> None:
    result = kube.kubectl("-n", namespace, "apply", "-f", "-", check=False, input=md(
        "bad", model={k: v for k, v in {"uri": "s3://models/m.onnx", **model}.items()
                      if v is not None}))
    assert result.returncode != 0 and says in result.stderr, result.stderr
