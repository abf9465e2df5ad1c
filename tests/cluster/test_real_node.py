"""A real node beside kwok's simulated ones (docs/real-node.md): a kubelet and containerd run
the runtime image for real, so a pod's readiness probe, `kubectl logs`, `kubectl exec` and an
inference all pass through real processes, and `kubectl apply` of a ModelDeployment ends in a
real answer from the pod's IP on our bridge.

Network safety: requests go only to pod IPs inside the node's own bridge subnet
(10.250.N.0/24, network namespaces our scripts made); `pod_url` refuses anything else.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemaas_testbed import node as real
from kubemaas_testbed import real_llm
from kubemaas_testbed.volumes import bound_host_volume
from tests.cluster.conftest import Operator
from tests.cluster.explain import pods_and_node
from tests.cluster.real_node_timings import record_first_inference
from tests.conftest import Kube
from tests.helpers import http_json, wait_for

pytestmark = pytest.mark.cluster

MODEL = "affine"
X = [1.0, 2.0, 3.0, 4.0]
Y = [3.0, 5.0, 7.0, 9.0]  # y = 2x + 1


@dataclass
class Node:
    node: real.RealNode
    slot: real.Slot  # its bridge, subnet and cgroup root on this machine
    image: str  # the runtime image, already in the node's containerd


@pytest.fixture(scope="module")
def real_node(kube: Kube) -> Iterator[Node]:
    """The real node of the session's testbed: started here (and stopped after the module)
    unless it was up already (`hack/cluster up --real-node` and KUBEMAAS_KUBECONFIG)."""
    state = Path(kube.kubeconfig).parent
    if not (state / "pki" / "ca.key").exists():
        if os.environ.get("KUBEMAAS_KUBECONFIG"):
            pytest.skip("KUBEMAAS_KUBECONFIG names a cluster that is not a local testbed: a real "
                        "node needs the testbed's CA key to join")
        pytest.fail(f"no testbed state next to {kube.kubeconfig}")
    if os.geteuid() != 0:
        pytest.fail("the real node needs root (containerd, runc, a bridge)")
    node = real.RealNode(state)
    started_here = not node.is_up()
    server = yaml.safe_load(Path(kube.kubeconfig).read_text())["clusters"][0]["cluster"]["server"]
    try:
        manifest = node.up(server, log=lambda msg: print(f"[real node] {msg}"))
    except real.NodeError as err:
        node.down(delete_node_object=True)
        pytest.fail(f"the real node did not start (hack/install-node-deps run?): {err}")
    slot = node.slot
    try:
        yield Node(node, slot, manifest["images"]["runtime"]["ref"])
    finally:
        if started_here:
            node.down(delete_node_object=True)
            assert not node.dir.exists()
            assert not Path(f"/sys/class/net/{slot.bridge}").exists()
            assert not Path(f"/sys/fs/cgroup/memory{slot.cgroup_root}").exists()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny ONNX model, y = 2x + 1 over [batch, 4], in a directory the pod can read."""
    import onnx  # the dev extra: a missing onnx fails the test rather than skipping it
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["t"]),
         helper.make_node("Add", ["t", "one"], ["y"])],
        MODEL,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor("two", TensorProto.FLOAT, [4], [2.0] * 4),
         helper.make_tensor("one", TensorProto.FLOAT, [4], [1.0] * 4)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    root = tmp_path_factory.mktemp("models")
    (root / MODEL).mkdir()
    onnx.save(model, str(root / MODEL / "model.onnx"))
    # The runtime runs as uid 65532: the store must be world-readable.
    root.chmod(0o755)
    (root / MODEL).chmod(0o755)
    (root / MODEL / "model.onnx").chmod(0o644)
    return root


# ---- helpers -------------------------------------------------------------------------

def pod_url(slot: real.Slot, ip: str, path: str, port: int = 8080) -> str:
    """A URL on a pod of the real node; any other address is refused, unsent."""
    if ipaddress.ip_address(ip) not in slot.subnet:
        raise AssertionError(f"{ip} is not on the real node's bridge ({slot.subnet}): "
                             "no request is sent to it")
    return f"http://{ip}:{port}{path}"


def infer(slot: real.Slot, ip: str, model: str, port: int = 8080) -> list[float] | None:
    """The model's answer for X, or None while the pod cannot answer."""
    try:
        status, out = http_json(pod_url(slot, ip, f"/v2/models/{model}/infer", port), {"inputs": [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": X}]})
    except OSError:
        return None
    return list(out["outputs"][0]["data"]) if status == 200 else None


def get_json(kube: Kube, *args: str) -> dict[str, Any]:
    return dict(json.loads(kube.kubectl(*args, "-o", "json").stdout))


def ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod.get("status", {}).get("conditions", []))


def container_id(pod: dict[str, Any]) -> str:
    (status,) = pod["status"]["containerStatuses"]
    return str(status["containerID"]).removeprefix("containerd://")


def containers_on_node(node: real.RealNode) -> set[str]:
    return set(node.crictl("ps", "-a", "-q").stdout.split())


def runtime_pod(name: str, namespace: str, image: str, model_dir: Path) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "nodeSelector": {real.LABEL: "true"},
            "tolerations": [real.TOLERATION],
            "automountServiceAccountToken": False,
            "containers": [{
                "name": "runtime", "image": image, "imagePullPolicy": "Never",
                "command": ["python", "-m", "kubemaas_runtime"],
                "env": [{"name": "KUBEMAAS_MODEL_URI",
                         "value": f"file:///models/{MODEL}/model.onnx"},
                        {"name": "KUBEMAAS_MODEL_NAME", "value": MODEL}],
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"},
                                   "periodSeconds": 1},
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                                    "capabilities": {"drop": ["ALL"]},
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "volumeMounts": [{"name": "models", "mountPath": "/models", "readOnly": True}],
            }],
            "volumes": [{"name": "models",
                         "hostPath": {"path": str(model_dir), "type": "Directory"}}],
        },
    }


# ---- tests ---------------------------------------------------------------------------

def test_node_registers_as_a_cpu_node(kube: Kube, real_node: Node) -> None:
    node = get_json(kube, "get", "node", real_node.node.name)
    labels = node["metadata"]["labels"]
    assert labels[real.LABEL] == "true"
    assert "nvidia.com/gpu.present" not in labels
    assert "nvidia.com/gpu" not in node["status"]["allocatable"]
    assert node["spec"]["taints"] == [real.TAINT]
    assert {"type": "InternalIP", "address": real_node.slot.gateway} in node["status"]["addresses"]
    info = node["status"]["nodeInfo"]
    assert info["kubeletVersion"] == "v1.36.3"
    assert info["containerRuntimeVersion"].startswith("containerd://")
    # kwok leaves it alone: it is not annotated as a fake node.
    assert "kwok.x-k8s.io/node" not in node["metadata"].get("annotations", {})


def test_pod_runs_for_real(kube: Kube, namespace: str, real_node: Node, model_dir: Path) -> None:
    kube.kubectl("apply", "-f", "-",
                 input=yaml.safe_dump(runtime_pod("runtime", namespace, real_node.image,
                                                  model_dir)))
    # Readiness is the kubelet probing /v2/health/ready on the pod's IP.
    pod = wait_for(lambda: (lambda p: p if ready(p) else None)(
        get_json(kube, "-n", namespace, "get", "pod", "runtime")),
        timeout=120, what="the runtime pod to become Ready on the real node",
        explain=lambda: pods_and_node(kube, namespace, real_node.node))
    assert pod is not None
    assert pod["spec"]["nodeName"] == real_node.node.name
    slot = real_node.slot
    assert pod["status"]["hostIP"] == slot.gateway
    ip = pod["status"]["podIP"]
    assert ipaddress.ip_address(ip) in slot.subnet

    assert infer(slot, ip, MODEL) == Y
    status, out = http_json(pod_url(slot, ip, f"/v2/models/{MODEL}/infer"), {"inputs": [
        {"name": "x", "shape": [2, 4], "datatype": "FP32", "data": X + [0.0] * 4}]})
    assert status == 200 and out["outputs"][0]["data"] == Y + [1.0] * 4

    logs = kube.kubectl("-n", namespace, "logs", "runtime").stdout
    assert '"msg": "ready"' in logs, logs
    uid = kube.kubectl("-n", namespace, "exec", "runtime", "--", "id", "-u").stdout.strip()
    assert uid not in ("", "0"), uid  # the image's non-root user
    listed = kube.kubectl("-n", namespace, "exec", "runtime", "--",
                          "python", "-c", f"import os; print(os.listdir('/models/{MODEL}'))")
    assert "model.onnx" in listed.stdout

    cid = container_id(pod)
    assert cid in containers_on_node(real_node.node)
    kube.kubectl("-n", namespace, "delete", "pod", "runtime", "--wait=true", "--timeout=60s")
    wait_for(lambda: cid not in containers_on_node(real_node.node), timeout=60,
             what=f"container {cid[:12]} to be gone from the node's containerd")
    # The CNI plugins ran DEL: the address went back to host-local's pool.
    wait_for(lambda: not (real_node.node.dir / "cni" / "ipam" / real.NETWORK_NAME / ip).exists(),
             timeout=60, what=f"{ip} to be released")


def test_missing_image_is_never_pulled_from_outside(kube: Kube, namespace: str,
                                                    real_node: Node, model_dir: Path) -> None:
    """An image that is not on the node fails its pull on loopback: no registry is tried."""
    pod = runtime_pod("remote", namespace, "registry.invalid.example/kubemaas/none:1", model_dir)
    pod["spec"]["containers"][0]["imagePullPolicy"] = "Always"
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(pod))

    def pull_error() -> str | None:
        p = get_json(kube, "-n", namespace, "get", "pod", "remote")
        for status in p.get("status", {}).get("containerStatuses", []):
            waiting = status.get("state", {}).get("waiting", {})
            if waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff") and \
                    waiting.get("message"):
                return str(waiting["message"])
        return None

    message = wait_for(pull_error, timeout=60, what="the pull to fail")
    assert message is not None
    assert real.NO_REGISTRY_PROXY.removeprefix("http://") in message, message
    kube.kubectl("-n", namespace, "delete", "pod", "remote", "--wait=false")


def test_modeldeployment_serves_from_the_real_node(kube: Kube, namespace: str, real_node: Node,
                                                   model_dir: Path, operator: Operator) -> None:
    """kubectl apply a CPU ModelDeployment -> the operator's Deployment -> a pod on the real
    node from the real image -> readiness through the kubelet -> a correct inference."""
    sha = hashlib.sha256((model_dir / MODEL / "model.onnx").read_bytes()).hexdigest()
    pv = f"{namespace}-models"
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(
        bound_host_volume(pv, model_dir, namespace, "models")))
    md = {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelDeployment",
          "metadata": {"name": "affine", "namespace": namespace},
          "spec": {
              "model": {"uri": f"pvc://models/{MODEL}/model.onnx", "format": "onnx",
                        "sha256": sha, "name": MODEL},
              "runtime": {"image": real_node.image, "imagePullPolicy": "Never",
                          "resources": {"cpu": "250m", "memory": "256Mi"}},
              "scheduling": {"nodeSelector": {real.LABEL: "true"},
                             "tolerations": [real.TOLERATION]},
              "replicas": 1}}
    try:
        started = time.monotonic()
        applied_at = time.time()
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(md))

        def answered() -> dict[str, Any] | None:
            pods = get_json(kube, "-n", namespace, "get", "pods", "-l",
                            "app.kubernetes.io/instance=affine")["items"]
            for p in pods:
                ip = p.get("status", {}).get("podIP")
                if ip and p["spec"].get("nodeName") == real_node.node.name \
                        and infer(real_node.slot, ip, MODEL) == Y:
                    return dict(p)
            return None

        pod = wait_for(answered, timeout=180, interval=0.1,
                       what="the ModelDeployment's pod on the real node to answer correctly",
                       explain=lambda: pods_and_node(kube, namespace, real_node.node))
        assert pod is not None
        record_first_inference(kube, namespace, pod, time.monotonic() - started, applied_at)

        name = pod["metadata"]["name"]
        wait_for(lambda: ready(get_json(kube, "-n", namespace, "get", "pod", name)),
                 timeout=60, what="the pod's readiness (the kubelet's probe)")
        wait_for(lambda: (get_json(kube, "-n", namespace, "get", "md", "affine")
                          .get("status") or {}).get("phase") == "Ready",
                 timeout=60, what="the ModelDeployment to be Ready")
        assert '"msg": "ready"' in kube.kubectl("-n", namespace, "logs", name).stdout
        uri = kube.kubectl("-n", namespace, "exec", name, "--", "printenv",
                           "KUBEMAAS_MODEL_URI").stdout.strip()
        assert uri == f"file:///models/{MODEL}/model.onnx" or uri.endswith(f"{MODEL}/model.onnx")

        cid = container_id(get_json(kube, "-n", namespace, "get", "pod", name))
        assert cid in containers_on_node(real_node.node)
        kube.kubectl("-n", namespace, "delete", "md", "affine", "--wait=true", "--timeout=60s")
        wait_for(lambda: cid not in containers_on_node(real_node.node), timeout=90,
                 what=f"the ModelDeployment's container {cid[:12]} to be gone from the node")
    finally:
        kube.kubectl("-n", namespace, "delete", "md", "affine", "--ignore-not-found",
                     "--wait=false", check=False)
        kube.kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=false", check=False)


@contextlib.contextmanager
def port_forward(kube: Kube, namespace: str, pod: str, remote: int) -> Iterator[int]:
    """`kubectl port-forward` to a pod of the real node: 127.0.0.1:PORT reaches the pod through
    the API server and the kubelet's streaming server, as a user's laptop would."""
    import subprocess

    from kubemaas_testbed.binaries import kubectl
    from kubemaas_testbed.cluster import free_port

    local = free_port()
    proc = subprocess.Popen(
        [kubectl(), f"--kubeconfig={kube.kubeconfig}", "-n", namespace, "port-forward",
         f"pod/{pod}", f"{local}:{remote}", "--address=127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:PORT -> REMOTE" once listening
        assert "Forwarding from" in line, f"kubectl port-forward: {line}{proc.stdout.read()}"
        yield local
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()


def test_authenticated_https_pod_answers_through_a_port_forward(
        kube: Kube, namespace: str, real_node: Node, model_dir: Path, operator: Operator,
        tmp_path: Path) -> None:
    """spec.serving.auth + spec.serving.tls on the real node: the kubelet mounts both Secrets,
    its HTTPS readiness probe passes, and a client through `kubectl port-forward` gets 401
    without the key and the answer with it, over TLS verified against the test's CA."""
    from tests.runtime.secrets_helpers import CA, request

    ca = CA(tmp_path / "ca")
    leaf = ca.issue(1)  # subjectAltName 127.0.0.1: what the client dials through the forward
    (tmp_path / "tls.crt").write_bytes(leaf["tls.crt"])
    (tmp_path / "tls.key").write_bytes(leaf["tls.key"])
    key = hashlib.sha256(os.urandom(32)).hexdigest()
    kube.kubectl("-n", namespace, "create", "secret", "tls", "affine-cert",
                 f"--cert={tmp_path / 'tls.crt'}", f"--key={tmp_path / 'tls.key'}")
    kube.kubectl("-n", namespace, "create", "secret", "generic", "affine-keys",
                 f"--from-literal=frontend={key}")
    pv = f"{namespace}-tls-models"
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(
        bound_host_volume(pv, model_dir, namespace, "models")))
    md = {"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelDeployment",
          "metadata": {"name": "affine-tls", "namespace": namespace},
          "spec": {
              "model": {"uri": f"pvc://models/{MODEL}/model.onnx", "format": "onnx",
                        "name": MODEL},
              "runtime": {"image": real_node.image, "imagePullPolicy": "Never",
                          "resources": {"cpu": "250m", "memory": "256Mi"}},
              "scheduling": {"nodeSelector": {real.LABEL: "true"},
                             "tolerations": [real.TOLERATION]},
              "serving": {"auth": {"secretName": "affine-keys"},
                          "tls": {"secretName": "affine-cert"}},
              "replicas": 1}}
    try:
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(md))
        wait_for(lambda: (get_json(kube, "-n", namespace, "get", "md", "affine-tls")
                          .get("status") or {}).get("phase") == "Ready",
                 timeout=180, what="the authenticated HTTPS model to be Ready (HTTPS probe)",
                 explain=lambda: pods_and_node(kube, namespace, real_node.node))
        (pod,) = get_json(kube, "-n", namespace, "get", "pods", "-l",
                          "app.kubernetes.io/instance=affine-tls")["items"]
        assert pod["spec"]["nodeName"] == real_node.node.name
        infer_body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32",
                                             "data": X}]}).encode()
        path = f"/v2/models/{MODEL}/infer"
        with port_forward(kube, namespace, pod["metadata"]["name"], 8080) as local:
            tls = ca.client_context()
            status, _, body = request(local, "POST", path, infer_body, tls=tls)
            assert status == 401, body
            assert "error" in body
            status, _, body = request(local, "POST", path, infer_body, tls=tls,
                                      headers={"Authorization": f"Bearer {key}"})
            assert status == 200, body
            assert body["outputs"][0]["data"] == Y
    finally:
        kube.kubectl("-n", namespace, "delete", "md", "affine-tls", "--ignore-not-found",
                     "--wait=false", check=False)
        kube.kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=false", check=False)


# ---- a language model (format hf) on the real node ----------------------------------------

@pytest.fixture(scope="module")
def llm_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama of the runtime's tests (hack/kubemaas_testbed/llm_models.py: a byte-level
    BPE with a chat template, random weights, ~0.85 M parameters) in a world-readable store."""
    from kubemaas_testbed.llm_models import build_llm

    root = tmp_path_factory.mktemp("llm-store")
    build_llm(root / "tiny-llm")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return root


def put_template(kube: Kube, source: str) -> None:
    """Add the LLM template to the operator's templates ConfigMap, keeping its other keys."""
    from tests.cluster.conftest import OPERATOR_NAMESPACE

    cm = ("-n", OPERATOR_NAMESPACE, "configmap", real_llm.TEMPLATES_CONFIGMAP)
    if kube.kubectl("get", *cm, check=False).returncode != 0:
        kube.kubectl("-n", OPERATOR_NAMESPACE, "create", "configmap",
                     real_llm.TEMPLATES_CONFIGMAP)
    kube.kubectl("patch", *cm, "--type=merge", "-p", real_llm.template_patch(source))


def test_llm_chat_streams_from_the_real_node(kube: Kube, namespace: str, real_node: Node,
                                             llm_store: Path, operator: Operator) -> None:
    """kubectl apply a CPU ModelDeployment of format hf -> the operator renders the kubemaas
    runtime's LLM contract (KUBEMAAS_MODEL_FORMAT=hf, /health probes, llm-d label) -> the kubelet
    runs it on the real node, its startup and readiness probes pass on /health -> the openai
    client, through `kubectl port-forward` on 127.0.0.1, gets a streamed chat completion.
    (The LLM packages come from this machine's virtualenv: kubemaas_testbed/real_llm.py.)"""
    import openai

    from kubemaas_operator.render import builtin_template

    put_template(kube, real_llm.host_packages_template(builtin_template("deployment.yaml.j2")))
    pv = f"{namespace}-llm"
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(
        bound_host_volume(pv, llm_store, namespace, "models")))
    md = real_llm.modeldeployment("tiny-llm", namespace, real_node.image, "models", "tiny-llm")
    try:
        started = time.monotonic()
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(md))
        wait_for(lambda: (get_json(kube, "-n", namespace, "get", "md", "tiny-llm")
                          .get("status") or {}).get("phase") == "Ready",
                 timeout=300, what="the language model to be Ready on the real node",
                 explain=lambda: pods_and_node(kube, namespace, real_node.node))
        ready_after = time.monotonic() - started
        (pod,) = get_json(kube, "-n", namespace, "get", "pods", "-l",
                          "app.kubernetes.io/instance=tiny-llm")["items"]
        assert pod["spec"]["nodeName"] == real_node.node.name
        assert pod["metadata"]["labels"]["llm-d.ai/engine-type"] == "vllm"
        (container,) = pod["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["KUBEMAAS_MODEL_FORMAT"] == "hf" and env["KUBEMAAS_MODEL_NAME"] == "tiny"
        assert container["readinessProbe"]["httpGet"]["path"] == "/health"
        with port_forward(kube, namespace, pod["metadata"]["name"], 8080) as local:
            client = openai.OpenAI(base_url=f"http://127.0.0.1:{local}/v1", api_key="unused",
                                   max_retries=0, timeout=60)
            assert [m.id for m in client.models.list().data] == ["tiny"]
            t0 = time.monotonic()
            stream = client.chat.completions.create(
                model="tiny", messages=[{"role": "user", "content": "Hello from the node"}],
                max_tokens=16, temperature=0, stream=True)
            chunks = list(stream)
            took = time.monotonic() - t0
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices
                  and c.choices[0].finish_reason]
        assert finish in (["length"], ["stop"]), chunks
        assert len(chunks) >= 3 and text, chunks
        print(f"\nformat hf on the real node: Ready {ready_after:.1f} s after apply; streamed "
              f"chat of {len(chunks)} chunks in {took:.2f} s through kubectl port-forward: "
              f"{text!r}")
        logs = kube.kubectl("-n", namespace, "logs", pod["metadata"]["name"]).stdout
        assert '"msg": "ready"' in logs, logs
    finally:
        kube.kubectl("-n", namespace, "delete", "md", "tiny-llm", "--ignore-not-found",
                     "--wait=false", check=False)
        kube.kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=false", check=False)
