"""What `kubectl get md` says (against the real control plane): an autoscaled model starts at
minReplicas and is not Ready below it; the Reason column tells "can never fit"
(GPURequestTooLarge, UnknownGPUProduct: phase Failed) from "not now" (InsufficientGPU: Pending),
and a missing PriorityClass, ServiceAccount or template is phase Failed with what to fix."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import OPERATOR_NAMESPACE, Operator
from tests.conftest import Kube, delete_namespace_and_its_pods
from tests.helpers import Poller, wait_for

pytestmark = pytest.mark.cluster

H100 = "NVIDIA-H100-80GB-HBM3"
TEMPLATES = "kubemaas-templates"  # the operator's templates ConfigMap (its default name)


def md(name: str, **spec: Any) -> str:
    body: dict[str, Any] = {"model": {"uri": "s3://models/m.onnx", "format": "onnx"},
                            "runtime": {"image": "ghcr.io/kubemaas/runtime:0.1.0"}}
    body.update(spec)
    return yaml.safe_dump({"apiVersion": "serving.kubemaas.io/v1alpha1",
                           "kind": "ModelDeployment", "metadata": {"name": name}, "spec": body})


def table(lines: list[str]) -> list[dict[str, str]]:
    """kubectl's table output (a header line, then rows) -> one {column header: cell} per row;
    cells are cut at the header's column positions, since an empty cell leaves no word."""
    if not lines:
        return []
    header = lines[0]
    names = header.split()
    starts = [header.index(n) for n in names]
    return [dict(zip(names, [line[s:e].strip() for s, e in zip(
        starts, [*starts[1:], None], strict=True)], strict=True)) for line in lines[1:]
        if line.strip() and line != header]


def rows(kube: Kube, namespace: str) -> dict[str, dict[str, str]]:
    """`kubectl get md -o wide` as a user sees it: name -> {column header: cell}."""
    out = kube.kubectl("-n", namespace, "get", "md", "-o", "wide").stdout.splitlines()
    return {row["NAME"]: row for row in table(out)}


def row_where(kube: Kube, namespace: str, name: str, reason: str,
              timeout: float = 30) -> dict[str, str]:
    return wait_for(lambda: (lambda r: r if r and r["REASON"].startswith(reason) else None)(
        rows(kube, namespace).get(name)), timeout=timeout,
        what=f"{name}: {reason} in the Reason column")


@pytest.fixture
def gpu_ns(kube: Kube, namespace: str, operator: Operator) -> Iterator[str]:
    """Its GPU pods are gone before the next test counts free GPUs."""
    yield namespace
    delete_namespace_and_its_pods(kube, namespace)


def test_an_autoscaled_model_starts_at_min_replicas(kube: Kube, namespace: str,
                                                    operator: Operator) -> None:
    """Watched with `kubectl get md -w` from creation: it is never Ready below minReplicas, and
    the Deployment is at minReplicas long before the autoscaler's first sync (15 s)."""
    from kubemaas_testbed.binaries import kubectl as kubectl_bin

    watch = subprocess.Popen([kubectl_bin(), f"--kubeconfig={kube.kubeconfig}", "-n", namespace,
                              "get", "md", "--watch", "--output-watch-events=false"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        kube.kubectl("-n", namespace, "apply", "-f", "-", input=md(
            "auto", runtime={"image": "ghcr.io/kubemaas/runtime:0.1.0",
                             "resources": {"cpu": "100m"}},
            autoscaling={"minReplicas": 3, "maxReplicas": 5}))
        wait_for(lambda: (lambda r: r if r and r["READY"] == "True" else None)(
            rows(kube, namespace).get("auto")), timeout=30, what="auto Ready")
        dep = json.loads(kube.kubectl("-n", namespace, "get", "deployment", "auto", "-o",
                                      "json", "--show-managed-fields").stdout)
        assert dep["spec"]["replicas"] == 3
        owners = [f["manager"] for f in dep["metadata"]["managedFields"]
                  if "f:replicas" in json.dumps(f.get("fieldsV1", {}).get("f:spec", {}))]
        assert owners == ["kubemaas-autoscaling-floor"], owners
    finally:
        watch.terminate()
        out, _ = watch.communicate(timeout=10)
    print(out)
    seen = [r for r in table(out.splitlines()) if r["NAME"] == "auto"]
    assert seen, out
    # Every line that says Ready has 3/3; every count is out of 3 (never 1/1).
    ready = [r for r in seen if r["READY"] == "True"]
    assert ready and all(r["REPLICAS"] == "3/3" for r in ready), out
    assert all(r["REPLICAS"].endswith("/3") for r in seen if r["REPLICAS"]), out


@dataclass
class ReplicasSampler(Poller):
    """spec.replicas of one Deployment, every 50 ms."""

    kube: Kube
    namespace: str
    name: str
    seen: list[int] = field(default_factory=list)

    def poll(self) -> None:
        from kubernetes import client

        try:
            dep = client.AppsV1Api(self.kube.api).read_namespaced_deployment(self.name,
                                                                             self.namespace)
        except client.exceptions.ApiException:
            return
        self.seen.append(int(dep.spec.replicas))


def test_switching_autoscaling_on_keeps_the_replicas(kube: Kube, namespace: str,
                                                     operator: Operator) -> None:
    """spec.replicas: 4 -> autoscaling 2..5: the Deployment stays at 4 (the floor's field
    manager takes the count over before the operator's apply drops it), never reset to 1."""
    runtime = {"image": "ghcr.io/kubemaas/runtime:0.1.0", "resources": {"cpu": "100m"}}
    kube.kubectl("-n", namespace, "apply", "-f", "-", input=md("grow", runtime=runtime,
                                                               replicas=4))
    row_where(kube, namespace, "grow", "Ready")
    with ReplicasSampler(kube, namespace, "grow") as sampler:
        kube.kubectl("-n", namespace, "apply", "-f", "-", input=md(
            "grow", runtime=runtime, autoscaling={"minReplicas": 2, "maxReplicas": 5}))
        wait_for(lambda: kube.kubectl("-n", namespace, "get", "hpa", "grow",
                                      check=False).returncode == 0, timeout=30,
                 what="the HorizontalPodAutoscaler")
        row = row_where(kube, namespace, "grow", "Ready")
        last = len(sampler.seen)
        wait_for(lambda: len(sampler.seen) >= last + 10, timeout=10, what="more samples")
    print(f"replicas seen: {sorted(set(sampler.seen))} in {len(sampler.seen)} samples")
    assert sampler.seen and min(sampler.seen) == 4 == sampler.seen[-1], sampler.seen
    assert row["REPLICAS"] == "4/4", row
    dep = json.loads(kube.kubectl("-n", namespace, "get", "deployment", "grow", "-o", "json",
                                  "--show-managed-fields").stdout)
    owners = [f["manager"] for f in dep["metadata"]["managedFields"]
              if "f:replicas" in json.dumps(f.get("fieldsV1", {}).get("f:spec", {}))]
    assert "kubemaas-operator" not in owners and "kubemaas-autoscaling-floor" in owners, owners


def test_never_and_not_now_are_told_apart(kube: Kube, gpu_ns: str) -> None:
    ns = gpu_ns
    docs = [md("too-large", gpu={"count": 9, "products": [H100]}),
            md("no-such-gpu", gpu={"count": 1, "products": ["NVIDIA-B200"]}),
            # 3 x 8 H100: each replica fits a node, but the cluster has two such nodes.
            md("not-now", gpu={"count": 8, "products": [H100]}, replicas=3)]
    kube.kubectl("-n", ns, "apply", "-f", "-", input="---\n".join(docs))
    too_large = row_where(kube, ns, "too-large", "GPURequestTooLarge")
    assert too_large["REASON"] == ("GPURequestTooLarge: needs 9 gpu per replica, the largest "
                                   "node has 8 (gpu-h100-1)"), too_large
    assert too_large["PHASE"] == "Failed" and too_large["READY"] == "False"
    unknown = row_where(kube, ns, "no-such-gpu", "UnknownGPUProduct")
    assert unknown["REASON"] == ("UnknownGPUProduct: no node offers NVIDIA-B200; nodes offer "
                                 "A100-SXM4-40GB, A100-SXM4-80GB, H100-80GB-HBM3"), unknown
    assert unknown["PHASE"] == "Failed"
    not_now = row_where(kube, ns, "not-now", "InsufficientGPU")
    # Two of the three replicas run: Degraded (or Pending before they do), never Failed.
    assert "needs 3x8 gpu" in not_now["REASON"] and not_now["PHASE"] in ("Pending",
                                                                         "Degraded"), not_now
    # The conditions carry the full story.
    st = json.loads(kube.kubectl("-n", ns, "get", "md", "no-such-gpu", "-o", "json").stdout)[
        "status"]
    ready = next(c for c in st["conditions"] if c["type"] == "Ready")
    assert "set spec.gpu.products to one of them" in ready["message"]
    assert "NVIDIA-H100-80GB-HBM3" in ready["message"]


def test_a_missing_priority_class_is_failed_until_it_exists(kube: Kube, gpu_ns: str) -> None:
    ns = gpu_ns
    klass = f"gold-{ns}"
    kube.kubectl("-n", ns, "apply", "-f", "-", input=md(
        "prio", scheduling={"priorityClassName": klass}))
    try:
        row = row_where(kube, ns, "prio", "PriorityClassNotFound")
        assert row["PHASE"] == "Failed" and f"PriorityClass {klass} does not exist" in (
            row["REASON"]), row
        st = json.loads(kube.kubectl("-n", ns, "get", "md", "prio", "-o", "json").stdout)[
            "status"]
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        assert "spec.scheduling.priorityClassName" in ready["message"]
        # Not sticky: once the PriorityClass exists the ReplicaSet creates the pods.
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump({
            "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass",
            "metadata": {"name": klass}, "value": 1000}))
        row_where(kube, ns, "prio", "Ready", timeout=60)
    finally:
        kube.kubectl("delete", "priorityclass", klass, "--wait=false", check=False)


def _set_template(kube: Kube, key: str, text: str | None) -> None:
    """Add (or with None remove) one key of the operator's templates ConfigMap."""
    exists = kube.kubectl("-n", OPERATOR_NAMESPACE, "get", "configmap", TEMPLATES,
                          check=False).returncode == 0
    if not exists and text is not None:
        kube.kubectl("-n", OPERATOR_NAMESPACE, "create", "configmap", TEMPLATES,
                     f"--from-literal={key}={text}")
    elif exists:
        kube.kubectl("-n", OPERATOR_NAMESPACE, "patch", "configmap", TEMPLATES, "--type",
                     "merge", "-p", json.dumps({"data": {key: text}}))


def test_a_missing_service_account_or_template_is_failed(kube: Kube, gpu_ns: str) -> None:
    from kubemaas_operator.render import builtin_template

    ns = gpu_ns
    key = f"sa-{ns}"
    marker = "      enableServiceLinks: false\n"
    template = builtin_template("deployment.yaml.j2")
    assert marker in template
    _set_template(kube, key, template.replace(
        marker, '      serviceAccountName: "model-reader"\n' + marker))
    try:
        kube.kubectl("-n", ns, "apply", "-f", "-", input="---\n".join([
            md("sa", runtime={"image": "i", "template": key}),
            md("no-template", runtime={"image": "i", "template": "no-such-template"})]))
        row = row_where(kube, ns, "sa", "ServiceAccountNotFound")
        assert row["PHASE"] == "Failed" and "ServiceAccount model-reader" in row["REASON"], row
        row = row_where(kube, ns, "no-template", "TemplateNotFound")
        assert row["PHASE"] == "Failed" and "no-such-template" in row["REASON"], row
        # Creating the ServiceAccount clears it.
        kube.kubectl("-n", ns, "create", "serviceaccount", "model-reader")
        row_where(kube, ns, "sa", "Ready", timeout=60)
    finally:
        _set_template(kube, key, None)
