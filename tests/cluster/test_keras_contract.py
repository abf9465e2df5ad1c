"""Keras and TensorFlow models through the operator: a ModelDeployment with format keras reaches
Ready, and the runtime started from the container spec the operator wrote (command, env, port,
probes, volume mounts) loads the .keras file, a real TensorFlow 2.21 build, and answers as
TensorFlow's own model.predict does, through the v1 predict route and Open Inference Protocol
v2. With format tf-savedmodel (a SavedModel directory on a claim) the ModelDeployment reaches
Ready too, the tfconvert init container the operator wrote runs first (in the TensorFlow side
virtualenv, as in the converter image) and the runtime serves what it wrote."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubemaas_testbed.cluster import free_port
from kubemaas_testbed.processes import stop_child
from tests.cluster.conftest import Operator
from tests.cluster.test_operator import apply, get, md, model_store, wait_phase
from tests.conftest import Kube
from tests.helpers import http_json, wait_for
from tests.runtime import keras_models

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


@pytest.fixture(scope="module")
def keras_dir() -> Path:
    return keras_models.keras_models_dir()


@contextlib.contextmanager
def file_server(root: Path) -> Iterator[str]:
    """http://127.0.0.1:PORT serving ``root`` (the model store the runtime downloads from)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def local_env(container: dict[str, Any], local: dict[str, Path]) -> dict[str, str]:
    """The container's env with every path under a volume mount moved to that volume's local
    directory."""
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    env = {e["name"]: e["value"] for e in container["env"]}
    for key, value in list(env.items()):
        for mount, volume in mounts.items():
            if mount in value:
                env[key] = value.replace(mount, str(local[volume]))
    return env


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path)}
    if "PYTHONPATH" in os.environ:  # this tree's packages, as the test process imports them
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return env


@contextlib.contextmanager
def runtime_from(container: dict[str, Any], env: dict[str, str], log: Path,
                 port: int) -> Iterator[str]:
    """Start the runtime from the container's command and args; yield its base URL once the
    container's own readiness probe passes."""
    command = [sys.executable, *container["command"][1:], *container.get("args", [])]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        ready = container["readinessProbe"]["httpGet"]["path"]
        wait_for(lambda: proc.poll() is None and http_json(base + ready)[0] == 200,
                 timeout=240, what=f"the runtime's readiness probe {ready} (log: {log})")
        yield base
    finally:
        stop_child(proc)


def assert_answers_as_tensorflow(base: str, name: str, x: np.ndarray,
                                 want: np.ndarray) -> None:
    status, meta = http_json(f"{base}/v2/models/{name}")
    assert status == 200, meta
    (inp,) = meta["inputs"]
    assert inp["shape"] == [-1, *x.shape[1:]] and inp["datatype"] == "FP32", meta
    status, doc = http_json(f"{base}/v1/models/{name}:predict", {"instances": x.tolist()})
    assert status == 200, doc
    np.testing.assert_allclose(np.asarray(doc["predictions"], np.float32), want,
                               rtol=1e-4, atol=1e-5)
    status, doc = http_json(f"{base}/v2/models/{name}/infer", {"inputs": [
        {"name": inp["name"], "shape": list(x.shape), "datatype": "FP32",
         "data": x.reshape(-1).tolist()}]})
    assert status == 200, doc
    got = np.asarray(doc["outputs"][0]["data"], np.float32).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_keras_model_is_ready_and_answers_as_tensorflow(
        kube: Kube, namespace: str, operator: Operator, keras_dir: Path,
        tmp_path: Path) -> None:
    sha = hashlib.sha256((keras_dir / "mnist.keras").read_bytes()).hexdigest()
    port = free_port()
    with file_server(keras_dir) as store:
        apply(kube, namespace, md("mnist-keras", model={
            "uri": f"{store}/mnist.keras", "format": "keras", "sha256": sha, "name": "mnist"},
            runtime={"image": "ghcr.io/kubemaas/runtime:0.1.0-keras",
                     "batching": {"maxBatchSize": 8, "maxDelayMs": 2}},
            serving={"port": port}))
        wait_phase(kube, namespace, "mnist-keras", "Ready", timeout=120)
        pod = get(kube, namespace, "deployment", "mnist-keras")["spec"]["template"]["spec"]
        assert "initContainers" not in pod
        (container,) = pod["containers"]
        cache = tmp_path / "cache"
        cache.mkdir()
        env = local_env(container, {"model-cache": cache})
        assert env["KUBEMAAS_MODEL_FORMAT"] == "keras"
        assert env["KUBEMAAS_MODEL_URI"] == f"{store}/mnist.keras"
        with runtime_from(container, {**base_env(tmp_path), **env}, tmp_path / "runtime.log",
                          port) as base:
            for probe in ("livenessProbe", "startupProbe"):
                assert http_json(base + container[probe]["httpGet"]["path"])[0] == 200
            assert_answers_as_tensorflow(base, "mnist", np.load(keras_dir / "mnist_x.npy"),
                                         np.load(keras_dir / "mnist_want.npy"))


def _ready_savedmodel_pod(kube: Kube, namespace: str, name: str, port: int,
                         model: dict[str, Any]) -> dict[str, Any]:
    """A tf-savedmodel ModelDeployment of `model` on the claim model-store, Ready; the pod
    spec the operator wrote for it."""
    # a real claim (statically bound PV): the pod is scheduled and kwok runs it to Ready
    kube.kubectl("apply", "-f", "-", input=model_store(namespace))
    try:
        apply(kube, namespace, md(name, model={**model, "format": "tf-savedmodel"},
                                  runtime={"image": "ghcr.io/kubemaas/runtime:0.1.0"},
                                  serving={"port": port}))
        wait_phase(kube, namespace, name, "Ready", timeout=120)
        return dict(get(kube, namespace, "deployment", name)["spec"]["template"]["spec"])
    finally:
        kube.kubectl("delete", "pv", f"model-store-{namespace}", "--wait=false", check=False)


def test_savedmodel_converted_by_the_rendered_init_container(
        kube: Kube, namespace: str, operator: Operator, keras_dir: Path,
        tmp_path: Path) -> None:
    proc = keras_models.tfconvert(["--digest", str(keras_dir / "mnist_savedmodel")])
    assert proc.returncode == 0, proc.stderr
    digest = proc.stdout.strip()
    port = free_port()
    pod = _ready_savedmodel_pod(kube, namespace, "mnist-tf", port, {
        "uri": "pvc://model-store/mnist_savedmodel", "sha256": digest, "name": "mnist"})
    (init,) = pod["initContainers"]
    (container,) = pod["containers"]
    local = {"model-store": keras_dir, "model-cache": tmp_path / "cache"}
    local["model-cache"].mkdir()

    # the init container: its command with the TensorFlow venv's python (the converter image)
    init_env = local_env(init, local)
    assert init["command"] == ["python", "-m", "kubemaas_runtime.tfconvert"]
    converted = keras_models.tfconvert([], init_env)
    assert converted.returncode == 0, converted.stderr[-2000:]

    env = local_env(container, local)
    assert env["KUBEMAAS_MODEL_FORMAT"] == "onnx"
    assert Path(env["KUBEMAAS_MODEL_URI"].removeprefix("file://")).is_file()
    with runtime_from(container, {**base_env(tmp_path), **env}, tmp_path / "runtime.log",
                      port) as base:
        assert_answers_as_tensorflow(base, "mnist", np.load(keras_dir / "mnist_x.npy"),
                                     np.load(keras_dir / "mnist_want.npy"))


def test_a_named_signature_is_converted_and_served_under_its_name(
        kube: Kube, namespace: str, operator: Operator, tmp_path: Path) -> None:
    """A SavedModel saved with signatures predict and classify, no serving_default: the
    converter refused it ('which one to serve is unknown') and no field could choose.
    spec.model.signature reaches the converter the operator renders and the runtime's v1 route;
    the API server refuses the field on another format."""
    from tests.runtime.test_keras_models import NO_DEFAULT, save_signatures

    refused = kube.kubectl("-n", namespace, "apply", "-f", "-", check=False, input=md(
        "not-tf", model={"uri": "s3://b/m.onnx", "format": "onnx", "signature": "predict"}))
    assert refused.returncode != 0 and "it needs model.format tf-savedmodel" in refused.stderr
    store = tmp_path / "store"
    save_signatures(NO_DEFAULT, store / "no_default")
    port = free_port()
    pod = _ready_savedmodel_pod(kube, namespace, "two-sigs", port, {
        "uri": "pvc://model-store/no_default", "signature": "predict", "name": "m"})
    (init,) = pod["initContainers"]
    (container,) = pod["containers"]
    local = {"model-store": store, "model-cache": tmp_path / "cache"}
    local["model-cache"].mkdir()
    converted = keras_models.tfconvert([], local_env(init, local))
    assert converted.returncode == 0, converted.stderr[-2000:]
    env = local_env(container, local)
    with runtime_from(container, {**base_env(tmp_path), **env}, tmp_path / "runtime.log",
                      port) as base:
        for doc in ({"instances": [[1.0, 2.0, 3.0]]},
                    {"signature_name": "predict", "instances": [[1.0, 2.0, 3.0]]}):
            status, answer = http_json(f"{base}/v1/models/m:predict", doc)
            assert (status, answer) == (200, {"predictions": [[100.0, 200.0, 300.0]]}), answer
