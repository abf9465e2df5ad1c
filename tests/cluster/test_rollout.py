"""Rollouts on scarce GPUs against the real control plane: replacement on a full cluster, surge
with free GPUs, a single replica that waits, automatic rollback of bad revisions (kwok failure
stages via spec.podMetadata.labels), all observed through the API server as `kubectl get md -w`
would see them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import RESYNC_S, Operator, reconfigured
from tests.cluster.test_operator import H100, apply, condition, get, status, wait_phase
from tests.conftest import Kube, delete_namespace_and_its_pods
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


@pytest.fixture
def quiet_h100(kube: Kube) -> None:
    """Wait until earlier tests' GPU pods are gone, so free capacity is what this test makes."""
    def settled() -> bool:
        pods = json.loads(kube.kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]
        return not any(p["metadata"].get("deletionTimestamp") for p in pods)
    wait_for(settled, timeout=60, what="terminating pods of earlier tests to be gone")


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


@pytest.fixture
def ns(kube: Kube, namespace: str, operator: Operator, quiet_h100: None) -> Iterator[str]:
    """A namespace whose GPU pods are gone before the next test counts free GPUs."""
    yield namespace
    delete_namespace_and_its_pods(kube, namespace)


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


def test_canary_steps_on_a_full_cluster(kube: Kube, ns: str) -> None:
    """10 -> 50 -> 100 with a pause, a manual gate and promotion through the spec, watched with
    `kubectl get md -w`; the canary takes GPUs the stable Deployment gives back."""
    import subprocess

    from kubemaas_testbed.binaries import kubectl as kubectl_bin

    steps = [{"weight": 10, "pauseSeconds": 3}, {"weight": 50}, {"weight": 100,
                                                                 "pauseSeconds": 0}]
    fill_h100(kube, ns, leave=10)
    apply(kube, ns, model("m", 10, canary={"steps": steps}))
    wait_revision(kube, ns, "m", 1)
    watch = subprocess.Popen([kubectl_bin(), f"--kubeconfig={kube.kubeconfig}", "-n", ns, "get",
                              "md", "m", "-w"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    seen: list[tuple[int, int, int, int]] = []  # step, weight, canary replicas, traffic

    def at_manual_gate() -> dict[str, Any] | None:
        st = status(kube, ns, "m")
        c = (st.get("rollout") or {}).get("canary") or {}
        if c:
            seen.append((c["step"], c["weight"], c["canaryReplicas"], c["trafficPercent"]))
        return st if c.get("step") == 2 and c.get("trafficPercent") == 50 and (
            "promote to 2" in st["rollout"]["message"]) else None

    try:
        with Sampler(kube, ns, "m") as sampler:
            apply(kube, ns, model("m", 10, image="ghcr.io/kubemaas/runtime:0.2.0",
                                  canary={"steps": steps}))
            st = wait_for(at_manual_gate, timeout=60, interval=0.1,
                          what="the canary at step 2 (50%), waiting for promotion")
            assert get(kube, ns, "deployment", "m-canary")["spec"]["replicas"] == 5
            assert get(kube, ns, "deployment", "m")["spec"]["replicas"] == 5
            assert st["reason"].startswith("CanaryRollout")
            # A manual gate holds: watched for two resync periods and a second (longer than
            # step 1's pause too), the canary stays at step 2.
            holds(lambda: status(kube, ns, "m")["rollout"]["canary"]["step"] == 2,
                  2 * RESYNC_S + 1, "the manual gate at step 2")
            apply(kube, ns, model("m", 10, image="ghcr.io/kubemaas/runtime:0.2.0",
                                  canary={"steps": steps, "promote": 2}))
            st = wait_revision(kube, ns, "m", 2)
    finally:
        watch.terminate()
        out, _ = watch.communicate(timeout=10)
    print(out)
    assert (1, 10, 1, 10) in seen, seen
    assert "canary step 1/3: 10%" in out and "canary step 2/3: 50%" in out
    assert st["rollout"]["history"][-1]["outcome"] == "Complete"
    assert kube.kubectl("-n", ns, "get", "deployment", "m-canary", check=False).returncode != 0
    images = {p["spec"]["containers"][0]["image"] for p in pods_of(kube, ns, "m")}
    assert images == {"ghcr.io/kubemaas/runtime:0.2.0"}
    _, ready, live = sampler.extremes("canary")
    assert live <= 10, f"{live} pods for 10 GPUs"
    assert ready >= 9


def wait_canary_gone(kube: Kube, ns: str, name: str = "m") -> None:
    wait_for(lambda: kube.kubectl("-n", ns, "get", "deployment", f"{name}-canary",
                                  check=False).returncode != 0, timeout=30,
             what="the canary Deployment gone")


def canary_at_its_gate(kube: Kube, ns: str, steps: list[dict[str, int]]) -> str:
    """Model m on 4 replicas of revision 1, then a new image's canary waiting at its manual gate
    (step 1 of `steps`); returns the new image."""
    apply(kube, ns, model("m", 4, canary={"steps": steps}))
    wait_revision(kube, ns, "m", 1)
    new = "ghcr.io/kubemaas/runtime:0.2.0"
    apply(kube, ns, model("m", 4, image=new, canary={"steps": steps}))
    wait_for(lambda: "promote to 2" in (status(kube, ns, "m").get("rollout") or {}).get(
        "message", ""), timeout=60, what="the canary at its manual gate")
    return new


def four_ready_without(kube: Kube, ns: str, image: str) -> bool:
    """Model m is back on four Ready pods, none of them running `image`."""
    pods = pods_of(kube, ns, "m")
    return len(pods) == 4 and all(is_ready(p) and not p["metadata"].get("deletionTimestamp")
                                  and p["spec"]["containers"][0]["image"] != image
                                  for p in pods)


def test_canary_abort_through_the_spec(kube: Kube, ns: str) -> None:
    steps = [{"weight": 50}, {"weight": 100}]
    new = canary_at_its_gate(kube, ns, steps)
    assert sum(p["spec"]["containers"][0]["image"] == new for p in pods_of(kube, ns, "m")) == 2
    apply(kube, ns, model("m", 4, image=new, canary={"steps": steps, "abort": True}))
    st = wait_for(lambda: (lambda s: s if s.get("reason", "").startswith("CanaryAborted")
                           else None)(status(kube, ns, "m")), timeout=30, what="CanaryAborted")
    assert "abort" in condition(st, "Ready")["message"]
    wait_for(lambda: four_ready_without(kube, ns, new), timeout=60,
             what="four ready pods of revision 1")
    wait_canary_gone(kube, ns)
    # abort: false starts the canary over
    apply(kube, ns, model("m", 4, image=new, canary={"steps": steps, "promote": 2}))
    wait_revision(kube, ns, "m", 2)


def test_a_spec_reverted_mid_canary_keeps_replicas_serving(kube: Kube, ns: str) -> None:
    """Going back to the old image while half the replicas run the canary (a full cluster): the
    canary gives its replicas back one at a time as the stable ones come back Ready, as an abort
    does; it is not deleted at once (4 Ready -> 2)."""
    steps = [{"weight": 50}, {"weight": 100}]
    fill_h100(kube, ns, leave=4)
    new = canary_at_its_gate(kube, ns, steps)
    with Sampler(kube, ns, "m") as sampler:
        apply(kube, ns, model("m", 4, canary={"steps": steps}))
        wait_for(lambda: four_ready_without(kube, ns, new), timeout=60,
                 what="four ready pods of revision 1")
        wait_canary_gone(kube, ns)
    _, ready, live = sampler.extremes("revert")
    assert ready >= 3 and live <= 4
    st = status(kube, ns, "m")
    assert st["rollout"]["current"]["number"] == 1
    assert st["rollout"]["history"][-1]["outcome"] == "Superseded"


def test_a_canary_dropped_for_autoscaling_is_promoted(kube: Kube, ns: str) -> None:
    """Switching to autoscaling while half the replicas run the canary (spec.rollout.canary
    removed, as a canary does not combine with autoscaling; the same image): the canary is
    promoted, giving its replicas up only as the stable Deployment's new ones are Ready, and the
    status says so; it was deleted at once (4 Ready -> 2), without a word."""
    steps = [{"weight": 50}, {"weight": 100}]
    fill_h100(kube, ns, leave=4)
    new = canary_at_its_gate(kube, ns, steps)
    auto = yaml.safe_load(model("m", 4, image=new))
    del auto["spec"]["replicas"]
    auto["spec"]["autoscaling"] = {"signal": "queue", "target": 4, "minReplicas": 1,
                                   "maxReplicas": 8}
    with Sampler(kube, ns, "m") as sampler:
        apply(kube, ns, yaml.safe_dump(auto))
        wait_revision(kube, ns, "m", 2)
        wait_canary_gone(kube, ns)
    _, ready, live = sampler.extremes("to autoscaling")
    assert ready >= 3 and live <= 4
    pods = pods_of(kube, ns, "m")
    assert len(pods) == 4 and all(p["spec"]["containers"][0]["image"] == new for p in pods)
    last = status(kube, ns, "m")["rollout"]["history"][-1]
    assert last["outcome"] == "Complete" and "spec.rollout.canary was removed" in last["message"]


def test_paused_canary_holds_its_step_until_resumed(kube: Kube, ns: str) -> None:
    """spec.rollout.canary.paused: the canary stays at its step past the step's pause; setting
    paused back to false lets it go on."""
    steps = [{"weight": 50, "pauseSeconds": 1}, {"weight": 100, "pauseSeconds": 0}]
    new = "ghcr.io/kubemaas/runtime:0.2.0"
    apply(kube, ns, model("m", 2, canary={"steps": steps}))
    wait_revision(kube, ns, "m", 1)
    apply(kube, ns, model("m", 2, image=new, canary={"steps": steps, "paused": True}))

    def paused_at_step_1() -> bool:
        ro = status(kube, ns, "m").get("rollout") or {}
        return ((ro.get("canary") or {}).get("step") == 1
                and "paused (spec.rollout.canary.paused)" in ro.get("message", ""))
    wait_for(paused_at_step_1, timeout=60, what="the canary paused at step 1, its replica Ready")
    assert get(kube, ns, "deployment", "m-canary")["spec"]["replicas"] == 1
    # Step 1's pause is 1 s: watched for two resync periods and a second (far longer than the
    # pause, and two looks of the periodic resync), the canary stays where it is.
    holds(paused_at_step_1, 2 * RESYNC_S + 1, "the paused canary at step 1")
    assert {p["spec"]["containers"][0]["image"] for p in pods_of(kube, ns, "m")} == {
        "ghcr.io/kubemaas/runtime:0.1.0", new}
    apply(kube, ns, model("m", 2, image=new, canary={"steps": steps, "paused": False}))
    st = wait_revision(kube, ns, "m", 2)
    assert st["rollout"]["history"][-1]["outcome"] == "Complete"


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
