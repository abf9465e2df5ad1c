"""The local control plane is a real Kubernetes: its scheduler, controllers,
garbage collector and RBAC all act, and kwok plays the kubelets."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubemaas_testbed import topology
from tests.conftest import Kube
from tests.helpers import holds, wait_for

pytestmark = pytest.mark.cluster

H100 = "NVIDIA-H100-80GB-HBM3"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def pod_manifest(name: str, namespace: str, *, gpus: int = 0, product: str | None = None,
                 labels: dict[str, str] | None = None,
                 resources: dict[str, str] | None = None) -> dict[str, Any]:
    limits = dict(resources or {})
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    spec: dict[str, Any] = {
        "containers": [{"name": "server", "image": "kubemaas/runtime:test",
                        "resources": {"limits": limits} if limits else {}}],
    }
    if limits:
        spec["tolerations"] = [GPU_TOLERATION]
    if product:
        spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "nvidia.com/gpu.product", "operator": "In", "values": [product]}]}]}}}
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": spec}


def apply(kube: Kube, manifest: dict[str, Any]) -> None:
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(manifest))


def get_pod(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return json.loads(kube.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions", []):
        if cond["type"] == kind:
            return dict(cond)
    return None


def is_ready(pod: dict[str, Any]) -> bool:
    cond = condition(pod, "Ready")
    return bool(cond and cond["status"] == "True")


def ready_pod(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    pod = get_pod(kube, namespace, name)
    return pod if is_ready(pod) else None


def test_nodes_match_the_default_topology(kube: Kube) -> None:
    expected = {n["metadata"]["name"]: n
                for n in topology.node_manifests(topology.load("default"))}
    nodes = {n["metadata"]["name"]: n for n in
             json.loads(kube.kubectl("get", "nodes", "-o", "json").stdout)["items"]}
    assert set(expected) <= set(nodes)
    for name, want in expected.items():
        got = nodes[name]
        assert is_ready(got), f"{name} is not Ready"
        for key, value in want["metadata"]["labels"].items():
            assert got["metadata"]["labels"].get(key) == value, (name, key)
        assert got["status"]["allocatable"].get("nvidia.com/gpu") == \
            want["status"]["allocatable"].get("nvidia.com/gpu")
    h100 = nodes["gpu-h100-0"]
    assert h100["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    assert h100["metadata"]["labels"]["nvidia.com/gpu.product"] == H100
    assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in \
        h100["spec"]["taints"]
    assert nodes["gpu-mig-0"]["status"]["allocatable"]["nvidia.com/mig-1g.10gb"] == "28"
    assert "nvidia.com/gpu" not in nodes["cpu-0"]["status"]["allocatable"]
    # What a person sees.
    table = kube.kubectl("get", "nodes").stdout
    for name in expected:
        assert name in table


def test_scheduler_places_a_gpu_pod_on_the_requested_product(kube: Kube, namespace: str) -> None:
    apply(kube, pod_manifest("two-h100", namespace, gpus=2, product=H100))
    pod = wait_for(lambda: ready_pod(kube, namespace, "two-h100"),
                   timeout=30, what="the 2-GPU pod to become Ready")
    assert pod["spec"]["nodeName"].startswith("gpu-h100-")
    assert pod["status"]["phase"] == "Running"


def test_a_pod_larger_than_any_node_stays_pending_with_the_scheduler_reason(
        kube: Kube, namespace: str) -> None:
    apply(kube, pod_manifest("sixteen-gpus", namespace, gpus=16))

    def unschedulable() -> dict[str, Any] | None:
        cond = condition(get_pod(kube, namespace, "sixteen-gpus"), "PodScheduled")
        return cond if cond and cond.get("reason") == "Unschedulable" else None

    cond = wait_for(unschedulable, timeout=30, what="PodScheduled=False/Unschedulable")
    assert cond["status"] == "False"
    assert "Insufficient nvidia.com/gpu" in cond["message"]
    assert get_pod(kube, namespace, "sixteen-gpus")["status"]["phase"] == "Pending"


def test_a_mig_slice_request_lands_on_the_mig_node(kube: Kube, namespace: str) -> None:
    apply(kube, pod_manifest("mig", namespace, resources={"nvidia.com/mig-1g.10gb": "1"}))
    pod = wait_for(lambda: ready_pod(kube, namespace, "mig"),
                   timeout=30, what="the MIG pod to become Ready")
    assert pod["spec"]["nodeName"] == "gpu-mig-0"


def test_cpu_pods_stay_off_tainted_gpu_nodes(kube: Kube, namespace: str) -> None:
    apply(kube, pod_manifest("cpu-only", namespace))
    pod = wait_for(lambda: ready_pod(kube, namespace, "cpu-only"),
                   timeout=30, what="the CPU pod to become Ready")
    assert pod["spec"]["nodeName"].startswith("cpu-")


def test_controller_manager_creates_pods_and_garbage_collects_them(
        kube: Kube, namespace: str) -> None:
    kube.kubectl("create", "deployment", "web", "-n", namespace, "--replicas=3",
                 "--image=kubemaas/runtime:test")

    def pods() -> list[dict[str, Any]]:
        return list(json.loads(kube.kubectl("get", "pods", "-n", namespace, "-l", "app=web",
                                            "-o", "json").stdout)["items"])

    wait_for(lambda: len(pods()) == 3 and all(is_ready(p) for p in pods()), timeout=60,
             what="3 ready pods of the Deployment")
    for pod in pods():
        assert pod["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    kube.kubectl("delete", "deployment", "web", "-n", namespace, "--cascade=background")
    wait_for(lambda: not pods(), timeout=60, what="the garbage collector to remove the pods")


def test_failure_label_not_ready_runs_but_never_becomes_ready(
        kube: Kube, namespace: str) -> None:
    apply(kube, pod_manifest("never-ready", namespace,
                             labels={"kubemaas.io/fake-failure": "not-ready"}))
    apply(kube, pod_manifest("healthy", namespace))
    wait_for(lambda: get_pod(kube, namespace, "never-ready")["status"].get("phase") == "Running",
             timeout=30, what="the pod to run")
    # kwok's pod-ready stage acts at once (the testbed's "fast" stages have no delay): a healthy
    # pod created beside it is Ready first, then the failing one must stay Running and not Ready
    # for a period several times longer than that took.
    started = time.monotonic()
    wait_for(lambda: is_ready(get_pod(kube, namespace, "healthy")), timeout=30,
             what="the healthy pod Ready (kwok's pod-ready stage at work)")
    period = max(3.0, 3 * (time.monotonic() - started))

    def running_not_ready() -> bool:
        pod = get_pod(kube, namespace, "never-ready")
        return pod["status"]["phase"] == "Running" and not is_ready(pod) and condition(
            pod, "Ready")["reason"] == "ContainersNotReady"  # type: ignore[index]
    holds(running_not_ready, period, "the not-ready pod Running and not Ready")


def test_failure_label_crash_fails_after_running(kube: Kube, namespace: str) -> None:
    apply(kube, pod_manifest("crasher", namespace, labels={"kubemaas.io/fake-failure": "crash"}))
    wait_for(lambda: is_ready(get_pod(kube, namespace, "crasher")), timeout=30,
             what="the pod to run and become Ready first")

    def crash_looping() -> dict[str, Any] | None:
        status = get_pod(kube, namespace, "crasher")["status"]["containerStatuses"][0]
        waiting = status.get("state", {}).get("waiting", {})
        return status if waiting.get("reason") == "CrashLoopBackOff" else None

    status = wait_for(crash_looping, timeout=30, what="CrashLoopBackOff")
    assert status["restartCount"] > 0
    assert status["lastState"]["terminated"]["exitCode"] == 1
    assert not is_ready(get_pod(kube, namespace, "crasher"))


def test_failure_label_image_pull_never_starts(kube: Kube, namespace: str) -> None:
    apply(kube, pod_manifest("no-image", namespace,
                             labels={"kubemaas.io/fake-failure": "image-pull"}))

    def pull_backoff() -> bool:
        statuses = get_pod(kube, namespace, "no-image")["status"].get("containerStatuses", [])
        return bool(statuses) and \
            statuses[0]["state"].get("waiting", {}).get("reason") == "ImagePullBackOff"

    wait_for(pull_backoff, timeout=30, what="ImagePullBackOff")

    def pending_not_ready() -> bool:
        pod = get_pod(kube, namespace, "no-image")
        return pod["status"]["phase"] == "Pending" and not is_ready(pod) and pull_backoff()
    # kwok's pod-ready stage (no delay) would have made it Ready within a second; watch 3 s.
    holds(pending_not_ready, 3.0, "the image-pull pod Pending in ImagePullBackOff")


def test_failure_label_waiting_reasons_never_start(kube: Kube, namespace: str) -> None:
    """The label's value is the container's waiting reason: the kubelet's other reasons why a
    container cannot start (each one a rollback trigger for the operator)."""
    from kubemaas_testbed.cluster import WAITING_REASONS

    for reason in WAITING_REASONS:
        apply(kube, pod_manifest(reason.lower(), namespace,
                                 labels={"kubemaas.io/fake-failure": reason}))

    def waiting() -> dict[str, str]:
        out = {}
        for reason in WAITING_REASONS:
            pod = get_pod(kube, namespace, reason.lower())
            statuses = pod["status"].get("containerStatuses") or [{}]
            state = statuses[0].get("state", {}).get("waiting", {})
            if pod["status"].get("phase") == "Pending" and not is_ready(pod):
                out[reason] = state.get("reason", "")
        return out if out == {r: r for r in WAITING_REASONS} else {}
    wait_for(waiting, timeout=30, what="every pod waiting with its label's reason")
    pod = get_pod(kube, namespace, "runcontainererror")
    assert "RunContainerError" in pod["status"]["containerStatuses"][0]["state"]["waiting"][
        "message"]
    holds(waiting, 3.0, "the pods waiting, Pending and not Ready")  # pod-ready has no delay


def test_failure_label_failed_fails_after_running(kube: Kube, namespace: str) -> None:
    apply(kube, pod_manifest("failing", namespace, labels={"kubemaas.io/fake-failure": "failed"}))
    wait_for(lambda: is_ready(get_pod(kube, namespace, "failing")), timeout=30,
             what="the pod to run and become Ready first")
    pod = wait_for(lambda: (lambda p: p if p["status"].get("phase") == "Failed" else None)(
        get_pod(kube, namespace, "failing")), timeout=30, what="phase Failed")
    terminated = pod["status"]["containerStatuses"][0]["state"]["terminated"]
    assert terminated["exitCode"] == 1 and not is_ready(pod)


def test_rbac_is_enforced(kube: Kube, namespace: str, tmp_path: Any) -> None:
    from kubemaas_testbed.kubeconfig import write_token

    kube.kubectl("create", "serviceaccount", "reader", "-n", namespace)
    token = kube.kubectl("create", "token", "reader", "-n", namespace).stdout.strip()
    server = kube.api.configuration.host
    ca = kube.api.configuration.ssl_ca_cert
    config_path = write_token(tmp_path / "reader.kubeconfig", server, ca, token, "reader")

    from kubernetes import config

    core = client.CoreV1Api(config.new_client_from_config(str(config_path)))
    with pytest.raises(client.ApiException) as denied:
        core.list_namespaced_pod(namespace)
    assert denied.value.status == 403
    assert 'cannot list resource "pods"' in json.loads(denied.value.body)["message"]

    kube.kubectl("create", "role", "pod-reader", "-n", namespace, "--verb=list",
                 "--resource=pods")
    kube.kubectl("create", "rolebinding", "reader-pods", "-n", namespace, "--role=pod-reader",
                 f"--serviceaccount={namespace}:reader")
    wait_for(lambda: core.list_namespaced_pod(namespace) is not None, timeout=10,
             what="the RoleBinding to take effect")
    # The grant is exactly what was bound: secrets stay forbidden.
    with pytest.raises(client.ApiException) as still_denied:
        core.list_namespaced_secret(namespace)
    assert still_denied.value.status == 403
