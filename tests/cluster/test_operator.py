"""The operator against the real control plane, through kubectl where a user would use kubectl:
examples become Ready on the right fake nodes, capacity and failure reasons reach the Reason
column, invalid specs are refused with a message, and `kubectl explain` teaches the API."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubemaas_testbed.volumes import bound_host_volume
from tests.cluster.conftest import Operator
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

ROOT = Path(__file__).resolve().parents[2]
H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-40GB"


def md(name: str, **spec: Any) -> str:
    body: dict[str, Any] = {"model": {"uri": "s3://models/m.onnx", "format": "onnx"},
                            "runtime": {"image": "ghcr.io/kubemaas/runtime:0.1.0"}}
    body.update(spec)
    return yaml.safe_dump({"apiVersion": "serving.kubemaas.io/v1alpha1",
                           "kind": "ModelDeployment", "metadata": {"name": name}, "spec": body})


def apply(kube: Kube, namespace: str, text: str) -> None:
    kube.kubectl("-n", namespace, "apply", "-f", "-", input=text)


# The kinds the tests poll most, read in process (Kube.read); any other through kubectl.
API_PATHS = {"md": "/apis/serving.kubemaas.io/v1alpha1", "deployment": "/apis/apps/v1",
             "service": "/api/v1"}
PLURALS = {"md": "modeldeployments", "deployment": "deployments", "service": "services"}


def get(kube: Kube, namespace: str, kind: str, name: str) -> dict[str, Any]:
    if kind in API_PATHS:
        return kube.read(f"{API_PATHS[kind]}/namespaces/{namespace}/{PLURALS[kind]}/{name}")
    return dict(json.loads(kube.kubectl("-n", namespace, "get", kind, name, "-o", "json",
                                        "--show-managed-fields").stdout))


def status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict(get(kube, namespace, "md", name).get("status") or {})


def condition(st: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == kind), {})


def wait_phase(kube: Kube, namespace: str, name: str, phase: str,
               timeout: float = 30) -> dict[str, Any]:
    return wait_for(lambda: (lambda s: s if s.get("phase") == phase else None)(
        status(kube, namespace, name)), timeout=timeout,
        what=f"ModelDeployment {namespace}/{name} to reach phase {phase}")


def get_md_table(kube: Kube, namespace: str) -> list[dict[str, str]]:
    """`kubectl get md` as a user sees it, one dict per row keyed by column header."""
    out = kube.kubectl("-n", namespace, "get", "md").stdout.splitlines()
    header = out[0]
    names = header.split()
    starts = [header.index(n) for n in names]
    rows = []
    for line in out[1:]:
        cells = [line[s:e].strip() for s, e in zip(starts, [*starts[1:], None], strict=True)]
        rows.append(dict(zip(names, cells, strict=True)))
    return rows


def node_products(kube: Kube) -> dict[str, str]:
    nodes = json.loads(kube.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    return {n["metadata"]["name"]: n["metadata"]["labels"].get("nvidia.com/gpu.product", "")
            for n in nodes}


def pod_nodes(kube: Kube, namespace: str, instance: str) -> list[str]:
    pods = kube.read(f"/api/v1/namespaces/{namespace}/pods",
                     selector=f"app.kubernetes.io/instance={instance}")["items"]
    return [p["spec"].get("nodeName", "") for p in pods]


def model_store(namespace: str) -> str:
    """The claim `model-store` that the examples' pvc:// URIs name, bound to the hostPath
    PersistentVolume `model-store-<namespace>` (kwok's nodes read nothing from it)."""
    return yaml.safe_dump_all(bound_host_volume(f"model-store-{namespace}", "/models",
                                                namespace, "model-store"))


def test_examples_become_ready_on_the_right_nodes(kube: Kube, namespace: str,
                                                  operator: Operator) -> None:
    kube.kubectl("apply", "-f", "-", input=model_store(namespace))
    try:
        for example in ("cpu-model", "h100-model", "multi-gpu-model", "mig-model"):
            kube.kubectl("-n", namespace, "apply", "-f", str(ROOT / "examples" / f"{example}.yaml"))
        names = ["resnet-cpu", "llm-h100", "vit-2gpu", "bert-mig"]
        for name in names:
            wait_phase(kube, namespace, name, "Ready", timeout=60)

        products = node_products(kube)
        assert all(n.startswith("cpu-") for n in pod_nodes(kube, namespace, "resnet-cpu"))
        assert [products[n] for n in pod_nodes(kube, namespace, "llm-h100")] == [H100]
        assert products[pod_nodes(kube, namespace, "vit-2gpu")[0]] in (H100, A100)
        assert pod_nodes(kube, namespace, "bert-mig") == ["gpu-mig-0"] * 3

        rows = {r["NAME"]: r for r in get_md_table(kube, namespace)}
        assert list(next(iter(rows.values()))) == ["NAME", "READY", "REPLICAS", "GPU", "REASON",
                                                   "URL", "AGE"]
        assert rows["resnet-cpu"]["READY"] == "True" and rows["resnet-cpu"]["REPLICAS"] == "2/2"
        assert rows["resnet-cpu"]["GPU"] == "-" and rows["resnet-cpu"]["REASON"] == "Ready"
        assert rows["llm-h100"]["GPU"] == f"1x{H100}"
        assert rows["vit-2gpu"]["GPU"] in (f"2x{H100}", f"2x{A100}")
        assert rows["bert-mig"]["GPU"] == "1xmig-1g.10gb" and rows["bert-mig"]["REPLICAS"] == "3/3"
        assert rows["llm-h100"]["URL"] == f"http://llm-h100.{namespace}.svc.cluster.local:8080"

        # The children: owned, labelled, stamped; a PDB only where replicas > 1.
        dep = get(kube, namespace, "deployment", "resnet-cpu")
        assert dep["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
        assert dep["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "kubemaas"
        assert "serving.kubemaas.io/spec-hash" in dep["metadata"]["annotations"]
        managers = {m["manager"] for m in dep["metadata"]["managedFields"]
                    if m["operation"] == "Apply"}
        assert managers == {"kubemaas-operator"}
        pdb = ("-n", namespace, "get", "pdb")
        assert kube.kubectl(*pdb, "resnet-cpu", check=False).returncode == 0
        assert kube.kubectl(*pdb, "llm-h100", check=False).returncode != 0
        st = status(kube, namespace, "llm-h100")
        assert st["observedGeneration"] == 1 and st["currentRevision"] == st["updateRevision"]
        assert condition(st, "Ready")["status"] == "True"
        env = {e["name"]: e["value"] for e in get(kube, namespace, "deployment", "llm-h100")[
            "spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["KUBEMAAS_MODEL_URI"] == "file:///mnt/models/llm/model.pt2"
        assert env["KUBEMAAS_MODEL_NAME"] == "llm" and env["KUBEMAAS_MODEL_VERSION"] == "3"
    finally:
        kube.kubectl("delete", "pv", f"model-store-{namespace}", "--wait=false", check=False)


def test_insufficient_gpu_is_reported_within_seconds(kube: Kube, namespace: str,
                                                     operator: Operator) -> None:
    # 3 replicas x 8 H100 = 24 GPUs; the cluster has 16 H100 in all.
    apply(kube, namespace, md("too-big", gpu={"count": 8, "products": [H100]}, replicas=3))
    # How soon (target < 5 s) is measured by bench/operator/reactions.py; this is a functional
    # bound only.
    row = wait_for(lambda: next((r for r in get_md_table(kube, namespace)
                                 if r["REASON"].startswith("InsufficientGPU")), None),
                   timeout=30, what="InsufficientGPU in the Reason column")
    assert "needs 3x8 gpu" in row["REASON"] and "free on H100-80GB-HBM3" in row["REASON"]
    st = status(kube, namespace, "too-big")
    scheduled = condition(st, "Scheduled")
    assert scheduled["status"] == "False" and scheduled["reason"] == "InsufficientGPU"
    assert "needs 3 replica(s) x 8 nvidia.com/gpu on one node each (24 in all)" in (
        scheduled["message"])
    assert "NVIDIA-H100-80GB-HBM3:" in scheduled["message"]
    events = kube.kubectl("-n", namespace, "get", "events", "--field-selector",
                          "involvedObject.name=too-big", "-o", "json").stdout
    assert "InsufficientGPU" in events


def test_scheduler_message_reaches_the_status(kube: Kube, namespace: str,
                                              operator: Operator) -> None:
    # Fits in GPUs, but a node selector no node has: the scheduler explains.
    apply(kube, namespace, md("nowhere", scheduling={"nodeSelector": {"zone": "mars"}}))
    st = wait_for(lambda: (lambda s: s if condition(s, "Ready").get("reason") == "Unschedulable"
                           else None)(status(kube, namespace, "nowhere")),
                  timeout=20, what="reason Unschedulable")
    assert "0/" in condition(st, "Ready")["message"]
    assert "nodes are available" in condition(st, "Ready")["message"]
    assert st["phase"] == "Pending"


@pytest.mark.parametrize(("failure", "reason", "phase"), [
    ("crash", "CrashLoopBackOff", "Degraded"),
    ("not-ready", "NotReady", "Degraded"),
    ("image-pull", "ImagePullBackOff", "Degraded"),
])
def test_pod_failures_reach_the_status(kube: Kube, namespace: str, operator: Operator,
                                       failure: str, reason: str, phase: str) -> None:
    apply(kube, namespace, md("sick", podMetadata={"labels": {
        "kubemaas.io/fake-failure": failure}}))
    st = wait_for(lambda: (lambda s: s if condition(s, "Ready").get("reason") == reason
                           else None)(status(kube, namespace, "sick")),
                  timeout=30, what=f"reason {reason}")
    assert st["phase"] == phase
    row = get_md_table(kube, namespace)[0]
    assert row["READY"] == "False" and row["REASON"].startswith(reason)
    events = json.loads(kube.kubectl("-n", namespace, "get", "events", "--field-selector",
                                     "involvedObject.name=sick", "-o", "json").stdout)["items"]
    assert reason in {e["reason"] for e in events}


INVALID = [
    ("bad-uri", {"model": {"uri": "ftp://host/m.onnx", "format": "onnx"}},
     "model.uri must be pvc://CLAIM/PATH"),
    ("bad-format", {"model": {"uri": "s3://b/m", "format": "pickle"}},
     'Unsupported value: "pickle"'),
    ("bad-sha", {"model": {"uri": "s3://b/m", "format": "onnx", "sha256": "abc"}},
     "spec.model.sha256"),
    ("both", {"replicas": 2, "autoscaling": {"maxReplicas": 3}},
     "set either spec.replicas or spec.autoscaling, not both"),
    ("min-max", {"runtime": {"image": "i", "resources": {"cpu": "1"}},
                 "autoscaling": {"minReplicas": 5, "maxReplicas": 3}},
     "autoscaling.minReplicas must not exceed autoscaling.maxReplicas"),
    ("hpa-no-cpu", {"autoscaling": {"maxReplicas": 3}}, "needs a CPU request"),
    ("env", {"runtime": {"image": "i", "env": [{"name": "KUBEMAAS_PORT", "value": "1"}]}},
     "runtime.env may not set KUBEMAAS_* variables"),
    ("memory", {"runtime": {"image": "i", "resources": {"memory": "lots"}}},
     "runtime.resources.memory must be a positive quantity"),
    ("mig-memory", {"gpu": {"migProfile": "1g.10gb", "minMemory": "10Gi"}},
     "gpu.minMemory does not apply to a MIG profile"),
    ("creds", {"model": {"uri": "https://h/m.onnx", "format": "onnx",
                         "credentialsSecretRef": {"name": "s"}}},
     "credentialsSecretRef is only used for s3:// URIs"),
    ("gpu-zero", {"gpu": {"count": 0}}, "spec.gpu.count"),
    ("labels", {"podMetadata": {"labels": {"app.kubernetes.io/name": "x"}}},
     "podMetadata.labels may not use app.kubernetes.io/"),
    ("no-image", {"runtime": {}}, "runtime.image is required for the kubemaas engine"),
    ("typo", {"gpus": 2}, 'unknown field "spec.gpus"'),
    ("Upper_Case", {}, "must be a DNS-1035 label"),
]


def test_invalid_specs_are_refused_with_a_message(kube: Kube, namespace: str,
                                                  operator: Operator) -> None:
    for name, spec, words in INVALID:
        result = kube.kubectl("-n", namespace, "apply", "-f", "-", input=md(name, **spec),
                              check=False)
        assert result.returncode != 0, f"{name} was accepted"
        assert words in result.stderr, f"{name}: {result.stderr}"
    assert kube.kubectl("-n", namespace, "get", "md", "-o", "name").stdout.strip() == ""


def test_invalid_specs_the_api_cannot_catch_reach_failed(kube: Kube, namespace: str,
                                                         operator: Operator) -> None:
    bad_affinity = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Sometimes"}]}]}}}
    cases = {
        "no-template": ({"runtime": {"image": "i", "template": "no-such-template"}},
                        "TemplateNotFound", "template 'no-such-template' not found"),
        "bad-affinity": ({"scheduling": {"affinity": bad_affinity}}, "Rejected",
                         'Invalid value: "Sometimes": not a valid selector operator'),
        # (of the right shape, api/affinity.py: a value only the API server refuses)
        "bad-spread": ({"scheduling": {"topologySpreadConstraints": [{
            "maxSkew": 0, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule"}]}},
                       "Rejected", "the API server rejected the Deployment"),
    }
    for name, (spec, _, _) in cases.items():
        apply(kube, namespace, md(name, **spec))
    for name, (_, reason, words) in cases.items():
        st = wait_phase(kube, namespace, name, "Failed")
        ready = condition(st, "Ready")
        assert ready["reason"] == reason and words in ready["message"], ready
        assert st["reason"].startswith(reason)
    # No crash, no hot loop: once a resync pass has looked at them, the operator lives and
    # writes nothing more for them through two more passes (counters from /metrics).
    writes, passes = operator.writes_during(3, namespace)
    assert operator.alive()
    assert writes == 0, f"{writes} write(s) in {passes} resync passes"
    # Fixing the spec brings the model up.
    apply(kube, namespace, md("bad-affinity"))
    wait_phase(kube, namespace, "bad-affinity", "Ready")


def test_kubectl_explain_teaches_the_api(kube: Kube, operator: Operator) -> None:
    out = kube.kubectl("explain", "modeldeployment.spec.gpu").stdout
    assert "GPUs for each replica. Absent means a CPU-only model" in out
    assert "nvidia.com/gpu.product" in out and "migProfile" in out
    out = kube.kubectl("explain", "md.spec.model.uri").stdout
    assert "pvc://CLAIM/PATH" in out


def test_an_administrators_template_is_used(kube: Kube, namespace: str,
                                            operator: Operator) -> None:
    configmap = ROOT / "examples" / "templates-configmap.yaml"
    kube.kubectl("apply", "-f", str(configmap))
    try:
        apply(kube, namespace, md("sidecar", runtime={"image": "i", "template": "with-sidecar"}))
        wait_phase(kube, namespace, "sidecar", "Ready")
        pod = get(kube, namespace, "deployment", "sidecar")["spec"]["template"]["spec"]
        assert [c["name"] for c in pod["containers"]] == ["runtime", "log-shipper"]
        dep = get(kube, namespace, "deployment", "sidecar")
        assert dep["metadata"]["ownerReferences"][0]["name"] == "sidecar"
        # A template that names a key the ConfigMap lacks fails with the known names.
        apply(kube, namespace, md("sidecar", runtime={"image": "i", "template": "nope"}))
        st = wait_phase(kube, namespace, "sidecar", "Failed")
        assert "known: default, with-sidecar" in condition(st, "Ready")["message"]
    finally:
        kube.kubectl("delete", "-f", str(configmap), "--wait=false", check=False)
