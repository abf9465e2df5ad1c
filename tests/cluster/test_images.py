"""Every image the project builds, started once on the real node (docs/images.md).

hack/node/build-images builds three images from the lock: the runtime (ONNX), the runtime's
language-model variant (torch + transformers) and the operator. Here each one runs as a pod of
the real node on a private testbed and answers:

- the runtime serves a tiny ONNX model (y = 2x + 1) over Open Inference Protocol v2;
- the language-model runtime serves a tiny Llama (random weights, built here) over the OpenAI
  API: a completion and a chat completion (KUBEMAAS_LLM_IMAGE=1, as .ci/run sets it);
- the operator is installed with the chart (helm, its ServiceAccount and RBAC) and reconciles a
  ModelDeployment with that ServiceAccount's token: its health endpoint answers and the
  ModelDeployment's status is written by it (no other operator runs on this testbed).

The operator's pod runs with hostNetwork and KUBERNETES_SERVICE_HOST=127.0.0.1: pods of the real
node have no route to the API server (it listens on 127.0.0.1 only, and a Service ClusterIP
leads nowhere without kube-proxy), so the pod shares the host's network namespace and reaches the
API server where it listens. Everything else is the chart's: the ServiceAccount token mounted by
the kubelet, the CA from kube-root-ca.crt, uid 10001, a read-only root filesystem.

Network safety: requests go to pod IPs inside the real node's bridge subnet (`pod_url`) and to
127.0.0.1 (the operator's health port on the host network).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemaas_testbed import node as real
from kubemaas_testbed.cluster import free_port
from tests.chart.helm import CHART, helm
from tests.cluster.conftest import OPERATOR_NAMESPACE
from tests.cluster.explain import pods_and_node
from tests.cluster.test_real_node import MODEL, X, Y, infer, pod_url, ready, runtime_pod
from tests.conftest import Kube
from tests.helpers import http_json, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
LLM = "llama"
LABELS = ("org.opencontainers.image.version", "org.opencontainers.image.revision",
          "org.opencontainers.image.source")


@pytest.fixture(scope="module")
def testbed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kube]:
    """A testbed of its own: the chart owns cluster-wide objects (its CRD, ClusterRole) and its
    operator must be the only one acting on the ModelDeployments."""
    from kubemaas_testbed.cluster import Cluster

    cluster = Cluster(tmp_path_factory.mktemp("images-testbed"))
    try:
        cluster.up(log=lambda msg: print(f"[images testbed] {msg}"))
        yield Kube(cluster.kubeconfig, log_dir=cluster.state / "logs")
    finally:
        cluster.processes.stop_all(["kwok", "kube-scheduler", "kube-controller-manager",
                                    "kube-apiserver", "etcd"])


@pytest.fixture(scope="module")
def node(testbed: Kube) -> Iterator[real.RealNode]:
    if os.geteuid() != 0:
        pytest.fail("the real node needs root (containerd, runc, a bridge)")
    state = Path(testbed.kubeconfig).parent
    node = real.RealNode(state)
    server = _server(testbed)
    try:
        node.up(server, log=lambda msg: print(f"[real node] {msg}"))
    except real.NodeError as err:
        node.down(delete_node_object=True)
        pytest.fail(f"the real node did not start (hack/install-node-deps run?): {err}")
    try:
        yield node
    finally:
        node.down(delete_node_object=True)


def _server(kube: Kube) -> str:
    config = yaml.safe_load(Path(kube.kubeconfig).read_text())
    return str(config["clusters"][0]["cluster"]["server"])


def image(node: real.RealNode, name: str) -> str:
    """`name`'s image (runtime, runtime-llm, operator) imported into the node's containerd:
    hack/node/build-images --save NAME builds what is missing and saves its archive."""
    result = subprocess.run([str(real.BUILD_IMAGES), "--save", name],
                            capture_output=True, text=True)
    assert result.returncode == 0, f"hack/node/build-images --save {name}:\n{result.stderr}"
    entry = json.loads(Path(result.stdout.strip()).read_text())["images"][name]
    assert entry["archive"], f"build-images saved no archive for {name}: {entry}"
    if node.crictl("inspecti", entry["ref"], check=False).returncode != 0:
        node.import_image(Path(entry["archive"]))
        # the node keeps only the unpacked layers: the pod each test starts from it shows that
        # they suffice
        assert not node.unpacked_layer_blobs(), "the import left its compressed layers"
    return str(entry["ref"])


def image_config(node: real.RealNode, ref: str) -> dict[str, Any]:
    info = json.loads(node.crictl("inspecti", "-o", "json", ref).stdout)
    return dict(info["info"]["imageSpec"]["config"])


def check_labels_and_user(node: real.RealNode, ref: str) -> None:
    config = image_config(node, ref)
    labels = config.get("Labels") or {}
    missing = [label for label in LABELS if not labels.get(label)]
    assert not missing, f"{ref}: OCI labels missing: {missing}; it has {labels}"
    assert labels["org.opencontainers.image.version"] == "0.1.0", labels
    assert config.get("User") == "10001:10001", f"{ref} runs as {config.get('User')!r}"


def world_readable(root: Path) -> None:
    """The runtime runs as uid 10001: the hostPath store must be readable by it."""
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def run_pod(kube: Kube, node: real.RealNode, namespace: str, pod: dict[str, Any],
            timeout: float = 240) -> str:
    """Apply the pod, wait until it is Ready; return its IP. On timeout, say what the pod,
    its events and the node look like then."""
    kube.kubectl("apply", "-f", "-", input=json.dumps(pod))
    name = pod["metadata"]["name"]

    def ip() -> str | None:
        current = json.loads(kube.kubectl("-n", namespace, "get", "pod", name, "-o", "json").stdout)
        waiting = [s["state"]["waiting"] for s in current["status"].get("containerStatuses", [])
                   if "waiting" in s.get("state", {})]
        bad = [w for w in waiting if w.get("reason") in ("ErrImageNeverPull", "CrashLoopBackOff",
                                                          "CreateContainerError")]
        assert not bad, f"pod {name}: {bad}\n{_logs(kube, namespace, name)}"
        return str(current["status"]["podIP"]) if ready(current) else None

    return wait_for(ip, timeout, f"pod {name} Ready",
                    explain=lambda: pods_and_node(kube, namespace, node))


def _logs(kube: Kube, namespace: str, name: str) -> str:
    return kube.kubectl("-n", namespace, "logs", name, "--tail=40", check=False).stdout


@pytest.fixture
def namespace(testbed: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """The test's own namespace, deleted after it: a pod left running (the language model's
    holds a torch process) takes nothing from the next test on the node."""
    name = f"image-{request.node.name.removeprefix('test_').replace('_', '-')}"[:63].rstrip("-")
    testbed.kubectl("create", "namespace", name)
    yield name
    testbed.kubectl("delete", "namespace", name, "--wait=false", check=False)


# ---- the runtime: ONNX over Open Inference Protocol v2 ---------------------------------

def test_runtime_image_serves_a_tiny_onnx_model(testbed: Kube, node: real.RealNode,
                                                tmp_path_factory: pytest.TempPathFactory,
                                                namespace: str) -> None:
    import onnx
    from onnx import TensorProto, helper

    ref = image(node, "runtime")
    check_labels_and_user(node, ref)
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"]),
         helper.make_node("Add", ["t", "one"], ["y"])],
        MODEL, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("two", TensorProto.FLOAT, [4], [2.0] * 4),
         helper.make_tensor("one", TensorProto.FLOAT, [4], [1.0] * 4)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    root = tmp_path_factory.mktemp("onnx-models")
    (root / MODEL).mkdir()
    onnx.save(model, str(root / MODEL / "model.onnx"))
    world_readable(root)

    ip = run_pod(testbed, node, namespace, runtime_pod("runtime", namespace, ref, root))
    assert infer(node.slot, ip, MODEL) == Y, f"x={X}"


# ---- the runtime's language-model variant: a tiny Llama over the OpenAI API -------------

def test_llm_runtime_image_serves_a_tiny_llama(testbed: Kube, node: real.RealNode,
                                               tmp_path_factory: pytest.TempPathFactory,
                                               namespace: str) -> None:
    from kubemaas_testbed.llm_models import build_llm

    if os.environ.get("KUBEMAAS_LLM_IMAGE") != "1":
        pytest.skip("the language-model image (torch with its CUDA libraries; see docs/images.md "
                    "for its size and the free disk its build needs) is built and started only "
                    "with KUBEMAAS_LLM_IMAGE=1, as .ci/run sets it")
    ref = image(node, "runtime-llm")
    check_labels_and_user(node, ref)
    root = tmp_path_factory.mktemp("llm-models")
    build_llm(root / LLM)
    world_readable(root)

    pod = runtime_pod("llm", namespace, ref, root)
    container = pod["spec"]["containers"][0]
    container["args"] = ["--model-uri", f"/models/{LLM}", "--format", "hf", "--name", LLM,
                         "--kv-cache-memory", "16Mi", "--max-model-len", "512",
                         "--intra-op-threads", "1"]
    container["env"] = []
    container["resources"] = {"requests": {"cpu": "100m", "memory": "256Mi"}}
    try:
        ip = run_pod(testbed, node, namespace, pod, timeout=300)
        check_openai_answers(node, ip)
    finally:
        release_image(testbed, node, namespace, "llm", ref)


def release_image(kube: Kube, node: real.RealNode, namespace: str, pod: str, ref: str) -> None:
    """Delete the pod and take its image off the node: the language-model image holds about
    8 GB of the shared disk there (its blobs and unpacked layers), which the tests after it
    need more than it does."""
    kube.kubectl("-n", namespace, "delete", "pod", pod, "--wait=true", "--timeout=120s",
                 check=False)
    node.crictl("rmi", ref, check=False)


def check_openai_answers(node: real.RealNode, ip: str) -> None:
    status, models = http_json(pod_url(node.slot, ip, "/v1/models"))
    assert status == 200 and [m["id"] for m in models["data"]] == [LLM], models
    status, out = http_json(pod_url(node.slot, ip, "/v1/completions"), {
        "model": LLM, "prompt": "Hello", "max_tokens": 8, "temperature": 0, "ignore_eos": True})
    assert status == 200, out
    assert out["usage"]["completion_tokens"] == 8, out
    assert isinstance(out["choices"][0]["text"], str) and out["choices"][0]["text"], out
    # A chat completion: the tokenizer's chat template, the assistant's message.
    status, chat = http_json(pod_url(node.slot, ip, "/v1/chat/completions"), {
        "model": LLM, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8,
        "temperature": 0, "ignore_eos": True})
    assert status == 200, chat
    assert chat["object"] == "chat.completion" and chat["model"] == LLM, chat
    assert chat["usage"]["completion_tokens"] == 8 and chat["usage"]["prompt_tokens"] > 1, chat
    message = chat["choices"][0]["message"]
    assert message["role"] == "assistant" and isinstance(message["content"], str), chat
    assert message["content"], chat


# ---- the operator, installed by the chart --------------------------------------------------

def install_chart(testbed: Kube, ref: str) -> int:
    """helm install the chart with the operator image `ref`, on the real node's host network;
    returns the operator's health port."""
    repository, tag = ref.rsplit(":", 1)
    health, metrics = free_port(), free_port()
    api_port = _server(testbed).rsplit(":", 1)[1]
    values = {
        "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
        "nodeSelector": {real.LABEL: "true"},
        "tolerations": [real.TOLERATION],
        "operator": {"healthPort": health, "metricsPort": metrics, "extraEnv": [
            {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
            {"name": "KUBERNETES_SERVICE_PORT", "value": api_port}]},
    }
    values_file = Path(testbed.kubeconfig).parent / "operator-image-values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    helm("install", "kubemaas", str(CHART), "-n", OPERATOR_NAMESPACE, "--create-namespace",
         "-f", str(values_file), kubeconfig=testbed.kubeconfig)
    # What the chart has no value for: the host's network namespace (see the module's doc).
    testbed.kubectl("-n", OPERATOR_NAMESPACE, "patch", "deployment", "kubemaas-operator",
                    "-p", json.dumps({"spec": {"template": {"spec": {"hostNetwork": True}}}}))
    return health


def test_operator_image_reconciles_under_the_charts_service_account(
        testbed: Kube, node: real.RealNode, namespace: str) -> None:
    ref = image(node, "operator")
    check_labels_and_user(node, ref)
    health = install_chart(testbed, ref)

    def operator_pod() -> dict[str, Any] | None:
        pods = json.loads(testbed.kubectl("-n", OPERATOR_NAMESPACE, "get", "pods", "-o",
                                          "json").stdout)["items"]
        running = [p for p in pods if p["spec"].get("hostNetwork") and ready(p)
                   and p.get("metadata", {}).get("deletionTimestamp") is None]
        return running[0] if running else None

    pod = wait_for(operator_pod, 240, "the operator's pod Ready on the real node",
                   explain=lambda: pods_and_node(testbed, OPERATOR_NAMESPACE, node))
    assert pod["spec"]["nodeName"] == node.name
    assert pod["spec"]["serviceAccountName"] == "kubemaas-operator"
    status, body = http_json(f"http://127.0.0.1:{health}/healthz")
    assert status == 200, body

    model = {
        "apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "affine", "namespace": namespace},
        "spec": {"model": {"uri": "https://models.example.com/affine/model.onnx",
                           "format": "onnx"},
                 "runtime": {"image": "ghcr.io/kubemaas/runtime:0.1.0",
                             "resources": {"cpu": "100m", "memory": "128Mi"}},
                 "replicas": 1},
    }
    testbed.kubectl("apply", "-f", "-", input=json.dumps(model))

    def reconciled() -> dict[str, Any] | None:
        current = json.loads(testbed.kubectl("-n", namespace, "get", "modeldeployment",
                                             "affine", "-o", "json").stdout)
        status = current.get("status", {})
        return status if status.get("observedGeneration") == 1 else None

    status_seen = wait_for(reconciled, 120, "the ModelDeployment's status from the operator pod")
    assert status_seen.get("conditions"), status_seen
    deployment = json.loads(testbed.kubectl("-n", namespace, "get", "deployment", "-o",
                                            "json").stdout)["items"]
    assert deployment, "the operator made no Deployment"
    logs = testbed.kubectl("-n", OPERATOR_NAMESPACE, "logs", pod["metadata"]["name"]).stdout
    assert "affine" in logs, logs[-2000:]
