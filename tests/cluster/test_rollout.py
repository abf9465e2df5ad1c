"""Rollouts on scarce GPUs against the real control plane: replacement on a full cluster, surge
with free GPUs, a single replica that waits, automatic rollback of bad revisions (kwok failure
stages via spec.podMetadata.labels), all observed through the API server as `kubectl get md -w`
would see them. Canary rollouts: test_rollout_canary.py."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import RESYNC_S, Operator, reconfigured
from tests.cluster.test_operator import H100, apply, condition, get, status, wait_phase
from tests.conftest import Kube
from tests.helpers import Poller, holds, wait_for

pytestmark = pytest.mark.cluster

FAILURE_LABEL = "kubemaas.io/fake-failure"


def model(name: str, replicas: int, image: str = "ghcr.io/kubemaas/runtime:0.1.0",
          labels: dict[str, str] | None = None, **rollout: Any) -> str:
    spec: dict[str, Any] = {
        "model": {"uri": "s3://models/m.onnx", "format": "onnx"},
        "runtime": {"image": image}, "replicas": replicas,
        "gpu": {"count": 1, "products": [H100]},
    }
    if labels:
        spec["podMetadata"] = {"labels": labels}
    if rollout:
        spec["rollout"] = rollout
    return yaml.safe_dump({"apiVersion": "serving.kubemaas.io/v1alpha1",
                           "kind": "ModelDeployment", "metadata": {"name": name}, "spec": spec})


def pods_of(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    out = kube.kubectl("-n", namespace, "get", "pods", "-l",
                       f"app.kubernetes.io/instance={name}", "-o", "json").stdout
    return list(json.loads(out)["items"])


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def h100_free(kube: Kube) -> dict[str, int]:
    """Free nvidia.com/gpu per H100 node: allocatable minus what bound, live pods request."""
    nodes = json.loads(kube.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    free = {n["metadata"]["name"]: int(n["status"]["allocatable"].get("nvidia.com/gpu", 0))
            for n in nodes if n["metadata"]["labels"].get("nvidia.com/gpu.product") == H100}
    pods = json.loads(kube.kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]
    for p in pods:
        node = p["spec"].get("nodeName")
        if node not in free or p["status"].get("phase") in ("Succeeded", "Failed"):
            continue
        for c in p["spec"]["containers"]:
            free[node] -= int(((c.get("resources") or {}).get("requests") or {}).get(
                "nvidia.com/gpu", 0))
    return free


def fill_h100(kube: Kube, namespace: str, leave: int) -> None:
    """Occupy every free H100 GPU but `leave` of them with plain pods (someone else's work)."""
    free = h100_free(kube)
    docs = []
    for node, n in sorted(free.items()):
        keep = min(n, leave)
        leave -= keep
        if n - keep <= 0:
            continue
        docs.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"filler-{node}", "namespace": namespace},
                     "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                              "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                              "containers": [{"name": "c", "image": "busybox", "resources": {
                                  "requests": {"nvidia.com/gpu": str(n - keep)},
                                  "limits": {"nvidia.com/gpu": str(n - keep)}}}]}})
    if docs:
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
        wait_for(lambda: all(p["status"].get("phase") == "Running" for p in json.loads(
            kube.kubectl("-n", namespace, "get", "pods", "-l", "!app.kubernetes.io/instance",
                         "-o", "json").stdout)["items"]), timeout=30, what="filler pods Running")


@dataclass
class Sampler(Poller):
    """Samples the model's pods and status through the API server until stopped."""

    kube: Kube
    namespace: str
    name: str
    samples: list[tuple[float, int, int]] = field(default_factory=list)  # t, ready, live pods
    reasons: set[str] = field(default_factory=set)
    strategies: set[str] = field(default_factory=set)
    messages: set[str] = field(default_factory=set)  # status.rollout.message

    def extremes(self, what: str) -> tuple[int, int, int]:
        """(samples, the fewest Ready pods, the most live pods), printed under ``what``."""
        ready = [r for _, r, _ in self.samples]
        live = [n for _, _, n in self.samples]
        print(f"{what}: {len(ready)} samples, ready min {min(ready)}, pods max {max(live)}")
        return len(ready), min(ready), max(live)

    def poll(self) -> None:
        from kubernetes import client

        pods = client.CoreV1Api(self.kube.api).list_namespaced_pod(
            self.namespace, label_selector=f"app.kubernetes.io/instance={self.name}").items
        live = [p for p in pods if p.metadata.deletion_timestamp is None]
        ready = sum(1 for p in live if any(c.type == "Ready" and c.status == "True"
                                           for c in p.status.conditions or []))
        self.samples.append((time.monotonic(), ready, len(live)))
        md = client.CustomObjectsApi(self.kube.api).get_namespaced_custom_object(
            "serving.kubemaas.io", "v1alpha1", self.namespace, "modeldeployments", self.name)
        st = md.get("status") or {}
        self.reasons.add(str(st.get("reason", "")).split(":")[0])
        self.strategies.add(str((st.get("rollout") or {}).get("strategy", "")))
        self.messages.add(str((st.get("rollout") or {}).get("message", "")))


def wait_revision(kube: Kube, namespace: str, name: str, number: int,
                  timeout: float = 90) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        st = status(kube, namespace, name)
        cur = (st.get("rollout") or {}).get("current") or {}
        return st if cur.get("number") == number and st.get("phase") == "Ready" else None
    return wait_for(done, timeout=timeout, what=f"{namespace}/{name} at revision {number}")


def test_full_cluster_update_completes_by_replacement(kube: Kube, ns: str) -> None:
    fill_h100(kube, ns, leave=4)
    apply(kube, ns, model("m", 4))
    wait_revision(kube, ns, "m", 1)
    assert sum(h100_free(kube).values()) == 0, "the cluster should have no free H100 now"

    started = time.monotonic()
    with Sampler(kube, ns, "m") as sampler:
        apply(kube, ns, model("m", 4, image="ghcr.io/kubemaas/runtime:0.2.0"))
        st = wait_revision(kube, ns, "m", 2)
    took = time.monotonic() - started
    samples, ready, live = sampler.extremes(f"replacement rollout: {took:.1f} s")
    assert samples > 10
    assert ready >= 4 - 1, f"ready replicas fell to {ready} (maxUnavailable 1)"
    assert live <= 4, f"{live} pods for 4 GPUs"
    assert "Replace" in sampler.strategies and "ReplaceRollout" in sampler.reasons
    ro = st["rollout"]
    assert ro["current"]["number"] == 2 and ro["previous"]["number"] == 1
    assert [h["outcome"] for h in ro["history"]] == ["Complete", "Complete"]
    # it completed as a replacement, and it replaced because no GPU was free for a surge
    assert ro["history"][-1]["message"] == "4 replicas Ready (replace rollout)", ro["history"]
    assert any(m.startswith("replace: no free GPU on matching nodes") and "1 replica at a time"
               in m for m in sampler.messages), sampler.messages
    images = {p["spec"]["containers"][0]["image"] for p in pods_of(kube, ns, "m")}
    assert images == {"ghcr.io/kubemaas/runtime:0.2.0"}


def test_surge_with_free_gpus_never_drops_below_desired(kube: Kube, ns: str) -> None:
    fill_h100(kube, ns, leave=6)  # 4 for the model, 2 spare for the surge
    apply(kube, ns, model("m", 4, maxSurge=2))
    wait_revision(kube, ns, "m", 1)
    with Sampler(kube, ns, "m") as sampler:
        apply(kube, ns, model("m", 4, image="ghcr.io/kubemaas/runtime:0.2.0", maxSurge=2))
        wait_revision(kube, ns, "m", 2)
    _, ready, live = sampler.extremes("surge rollout")
    assert ready >= 4, f"ready replicas fell to {ready} during a surge"
    assert live <= 6, f"{live} pods for 6 GPUs"
    assert "Surge" in sampler.strategies and "SurgeRollout" in sampler.reasons


def test_single_replica_without_room_waits_then_replaces_with_downtime(kube: Kube,
                                                                      ns: str) -> None:
    fill_h100(kube, ns, leave=1)
    apply(kube, ns, model("m", 1))
    wait_revision(kube, ns, "m", 1)
    apply(kube, ns, model("m", 1, image="ghcr.io/kubemaas/runtime:0.2.0"))
    st = wait_for(lambda: (lambda s: s if s.get("reason", "").startswith("RolloutWaiting")
                           else None)(status(kube, ns, "m")), timeout=20,
                  what="the rollout to wait")
    assert "allowDowntime" in condition(st, "Ready")["message"]
    assert st["rollout"]["strategy"] == "Wait"
    rows = kube.kubectl("-n", ns, "get", "md", "m").stdout
    assert "RolloutWaiting" in rows
    dep = get(kube, ns, "deployment", "m")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.1.0")
    apply(kube, ns, model("m", 1, image="ghcr.io/kubemaas/runtime:0.2.0", allowDowntime=True))
    st = wait_revision(kube, ns, "m", 2)
    assert st["rollout"]["history"][-1]["outcome"] == "Complete"


def events_of(kube: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    out = kube.kubectl("-n", namespace, "get", "events", "--field-selector",
                       f"involvedObject.name={name},involvedObject.kind=ModelDeployment",
                       "-o", "json").stdout
    return list(json.loads(out)["items"])


@pytest.mark.parametrize(("failure", "reason"), [
    ("crash", "CrashLoopBackOff"),
    ("gpu-oom", "OutOfGPUMemory"),  # the engine dies out of GPU memory at load (pod_life.py)
    ("image-pull", "ImagePullBackOff"),
    ("not-ready", "progressDeadlineSeconds"),
    # the kwok stage that makes the label's value the container's waiting reason; the other
    # three such reasons are covered by the unit tests of the classification
    ("ErrImagePull", "ErrImagePull"),
    ("CreateContainerConfigError", "CreateContainerConfigError"),
    ("failed", "failed: Error (exit 1)"),  # pod phase Failed
])
def test_bad_revision_rolls_back(kube: Kube, ns: str, failure: str, reason: str) -> None:
    deadline = 10
    apply(kube, ns, model("m", 2, progressDeadlineSeconds=deadline))
    wait_revision(kube, ns, "m", 1)
    started = time.monotonic()
    apply(kube, ns, model("m", 2, labels={FAILURE_LABEL: failure},
                          progressDeadlineSeconds=deadline))
    st = wait_for(lambda: (lambda s: s if s.get("reason", "").startswith("RolledBack")
                           else None)(status(kube, ns, "m")), timeout=deadline + 30,
                  what="the rollback")
    # how soon is a figure for bench/rollout/bench_rollout.py (--rollbacks); the timeout above
    # is only a functional bound
    print(f"{failure}: rolled back {time.monotonic() - started:.1f} s after the spec change")
    ready = condition(st, "Ready")
    assert st["phase"] == "Degraded" and ready["reason"] == "RolledBack"
    assert reason in ready["message"] and "rolled back to revision 1" in ready["message"]
    assert st["rollout"]["failed"]["number"] == 2
    assert st["rollout"]["history"][-1]["outcome"] == "RolledBack"
    event = wait_for(lambda: [e for e in events_of(kube, ns, "m") if e["reason"] == "RolledBack"],
                     timeout=10, what="a RolledBack Event")[0]
    assert event["type"] == "Warning" and reason in event["message"]

    # The last good revision serves again, and the bad spec is not retried.
    def good_again() -> bool:
        # pods that ended (phase Failed) stay as records, as they do on any cluster: not counted
        pods = [p for p in pods_of(kube, ns, "m")
                if p["status"].get("phase") not in ("Failed", "Succeeded")]
        return len(pods) == 2 and all(is_ready(p) and FAILURE_LABEL not in p["metadata"][
            "labels"] for p in pods)
    wait_for(good_again, timeout=30, what="two ready pods of the good revision")

    def still_rolled_back() -> bool:
        dep = get(kube, ns, "deployment", "m")
        return (FAILURE_LABEL not in dep["spec"]["template"]["metadata"]["labels"]
                and status(kube, ns, "m")["reason"].startswith("RolledBack"))
    # The periodic resync (every RESYNC_S; it looks at every model again) must not retry the
    # bad spec: watched for two resync periods and a second.
    holds(still_rolled_back, 2 * RESYNC_S + 1, "the rollback (the bad spec not retried)")

    # A changed spec is tried again.
    apply(kube, ns, model("m", 2, image="ghcr.io/kubemaas/runtime:0.2.0",
                          progressDeadlineSeconds=deadline))
    st = wait_revision(kube, ns, "m", 3)
    assert "failed" not in st["rollout"]


def _gpu_filler(name: str, namespace: str, node: str, gpus: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace},
            "spec": {"nodeSelector": {"kubernetes.io/hostname": node},
                     "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                     "containers": [{"name": "c", "image": "busybox", "resources": {
                         "requests": {"nvidia.com/gpu": str(gpus)},
                         "limits": {"nvidia.com/gpu": str(gpus)}}}]}}


def test_a_blocked_model_is_rechecked_when_a_gpu_pod_ends(kube: Kube, ns: str,
                                                          operator: Operator) -> None:
    """docs/operator.md: models blocked on capacity are re-checked whenever a GPU pod ends. With
    an hour-long resync, only that watch can explain the model's status following the freed
    GPUs: first a message with more free GPUs (still too few on one node, so the model's own
    pending pod does not change), then Ready once a node has room."""
    free = h100_free(kube)
    assert sorted(free.values()) == [8, 8], f"the H100 nodes are not free: {free}"
    first, second = sorted(free)
    with reconfigured(operator, KUBEMAAS_OPERATOR_RESYNC_S="3600"):
        kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([
            _gpu_filler("filler-a", ns, first, 8), _gpu_filler("filler-b1", ns, second, 1),
            _gpu_filler("filler-b2", ns, second, 7)]))
        wait_for(lambda: sum(h100_free(kube).values()) == 0, timeout=30,
                 what="the fillers holding every H100")
        body = yaml.safe_load(model("big", 1))
        body["spec"]["gpu"]["count"] = 8
        apply(kube, ns, yaml.safe_dump(body))

        def scheduled_message() -> str:
            cond = condition(status(kube, ns, "big"), "Scheduled")
            return str(cond["message"]) if cond.get("reason") == "InsufficientGPU" else ""
        before = wait_for(scheduled_message, timeout=30, what="InsufficientGPU")
        assert "0 free" in before, before
        kube.kubectl("-n", ns, "delete", "pod", "filler-b2", "--wait=false")
        after = wait_for(lambda: (lambda m: m if "7 free" in m else "")(scheduled_message()),
                         timeout=30, what="the status to count the 7 freed GPUs")
        assert f"{second} 7" in after, after
        kube.kubectl("-n", ns, "delete", "pod", "filler-b1", "--wait=false")
        wait_phase(kube, ns, "big", "Ready", timeout=60)
        assert operator.counters()["resyncs"] == 0, "a periodic resync ran after all"


@pytest.mark.parametrize(("rollout", "extra", "words"), [
    ({"maxSurge": 0, "maxUnavailable": 0}, {}, "cannot both be 0"),
    ({"canary": {"steps": [{"weight": 50}, {"weight": 10}]}}, {}, "weights must increase"),
    ({"canary": {"steps": [{"weight": 50}, {"weight": 50}]}}, {}, "weights must increase"),
    ({"canary": {"steps": [{"weight": 50}]}},
     {"autoscaling": {"maxReplicas": 3}, "runtime": {"image": "i", "resources": {"cpu": "1"}}},
     "does not work with spec.autoscaling"),
])
def test_the_api_server_refuses_bad_rollout_specs(kube: Kube, namespace: str, operator: Operator,
                                                  rollout: dict[str, Any], extra: dict[str, Any],
                                                  words: str) -> None:
    body = yaml.safe_load(model("m", 2, **rollout))
    body["spec"].update(extra)
    if "autoscaling" in extra:
        body["spec"].pop("replicas")
    result = kube.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(body),
                          check=False)
    assert result.returncode != 0 and words in result.stderr, result.stderr
