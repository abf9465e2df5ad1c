"""The contract between the operator and the runtime is the pod the operator renders. Take the
container spec the operator really wrote into the cluster (command, args, env, port, probes,
volume mounts) and start the runtime from it on this machine: it must load the model and pass
the very probes the Deployment declares, and serve an inference."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kubemaas_testbed.cluster import free_port
from kubemaas_testbed.processes import stop_child
from tests.cluster.conftest import Operator
from tests.cluster.test_operator import apply, get, md
from tests.conftest import Kube
from tests.helpers import http_json, wait_for

pytestmark = pytest.mark.cluster


def _tiny_onnx(path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "one"], ["y"])], "plus_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("one", TensorProto.FLOAT, [4], [1.0, 1.0, 1.0, 1.0])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def test_runtime_starts_from_the_rendered_container(kube: Kube, namespace: str,
                                                    operator: Operator, tmp_path: Path) -> None:
    store = tmp_path / "store"
    _tiny_onnx(store / "tiny" / "model.onnx")
    sha = hashlib.sha256((store / "tiny" / "model.onnx").read_bytes()).hexdigest()
    port = free_port()
    apply(kube, namespace, md("contract",
                              model={"uri": "pvc://store/tiny/model.onnx", "format": "onnx",
                                     "sha256": sha, "name": "tiny", "version": "2"},
                              runtime={"image": "ghcr.io/kubemaas/runtime:0.1.0",
                                       "batching": {"maxBatchSize": 4, "maxDelayMs": 2}},
                              serving={"port": port}))
    wait_for(lambda: get(kube, namespace, "deployment", "contract"), timeout=10,
             what="the Deployment")
    pod = get(kube, namespace, "deployment", "contract")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["python", "-m", "kubemaas_runtime"]
    assert container["ports"][0]["containerPort"] == port

    # Volumes become local directories; paths under a mount point follow them.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    local = {"model-store": store, "model-cache": tmp_path / "cache"}
    local["model-cache"].mkdir()
    env = {e["name"]: e["value"] for e in container["env"]}
    for key, value in list(env.items()):
        for mount, volume in mounts.items():
            if mount in value:
                env[key] = value.replace(mount, str(local[volume]))
    assert env["KUBEMAAS_MODEL_URI"] == f"file://{store}/tiny/model.onnx"

    command = [sys.executable, *container["command"][1:], *container.get("args", [])]
    log = tmp_path / "runtime.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env={"PATH": os.environ["PATH"],
                                              "HOME": str(tmp_path), **env},
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        ready = container["readinessProbe"]["httpGet"]["path"]
        live = container["livenessProbe"]["httpGet"]["path"]
        startup = container["startupProbe"]["httpGet"]["path"]
        wait_for(lambda: proc.poll() is None and http_json(base + ready)[0] == 200, timeout=60,
                 what=f"the runtime's readiness probe {ready} (log: {log})")
        assert http_json(base + live)[0] == 200 and http_json(base + startup)[0] == 200
        # The model name and version the spec asked for are the ones served (spec.model.version
        # reaches the runtime only through the rendered container).
        status, meta = http_json(f"{base}/v2/models/tiny")
        assert status == 200 and meta["name"] == "tiny" and meta["versions"] == ["2"], meta
        assert http_json(f"{base}/v2/models/tiny/versions/2")[0] == 200
        assert http_json(f"{base}/v2/models/tiny/versions/1")[0] == 404
        status, out = http_json(f"{base}/v2/models/tiny/infer", {"inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
        assert status == 200, log.read_text()
        assert out["outputs"][0]["data"] == [2.0, 3.0, 4.0, 5.0]
    finally:
        stop_child(proc)
