"""Canary rollouts against the real control plane: steps on a full cluster (the canary takes the
GPUs the stable Deployment gives back), abort, a spec reverted mid-canary, a canary dropped for
autoscaling (with the same pods, or a new image), a paused step, as `kubectl get md -w` would
see them."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.cluster.conftest import RESYNC_S
from tests.cluster.test_operator import apply, condition, get, status
from tests.cluster.test_rollout import (
    Sampler,
    fill_h100,
    is_ready,
    model,
    pods_of,
    wait_revision,
)
from tests.conftest import Kube
from tests.helpers import holds, wait_for

pytestmark = pytest.mark.cluster


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


def autoscaled(image: str) -> str:
    """Model m with `image`, its canary removed and autoscaling added (as the CEL rule asks)."""
    auto = yaml.safe_load(model("m", 4, image=image))
    del auto["spec"]["replicas"]
    auto["spec"]["autoscaling"] = {"signal": "queue", "target": 4, "minReplicas": 1,
                                   "maxReplicas": 8}
    return str(yaml.safe_dump(auto))


def test_a_canary_dropped_for_autoscaling_is_promoted(kube: Kube, ns: str) -> None:
    """Switching to autoscaling while half the replicas run the canary (spec.rollout.canary
    removed, as a canary does not combine with autoscaling; the same image): the canary is
    promoted, giving its replicas up only as the stable Deployment's new ones are Ready, and the
    status says so; it was deleted at once (4 Ready -> 2), without a word."""
    steps = [{"weight": 50}, {"weight": 100}]
    fill_h100(kube, ns, leave=4)
    new = canary_at_its_gate(kube, ns, steps)
    with Sampler(kube, ns, "m") as sampler:
        apply(kube, ns, autoscaled(new))
        wait_revision(kube, ns, "m", 2)
        wait_canary_gone(kube, ns)
    _, ready, live = sampler.extremes("to autoscaling")
    assert ready >= 3 and live <= 4
    pods = pods_of(kube, ns, "m")
    assert len(pods) == 4 and all(p["spec"]["containers"][0]["image"] == new for p in pods)
    last = status(kube, ns, "m")["rollout"]["history"][-1]
    assert last["outcome"] == "Complete" and "spec.rollout.canary was removed" in last["message"]


def test_a_canary_dropped_for_autoscaling_with_a_new_image_gives_its_replicas_back(
        kube: Kube, ns: str) -> None:
    """The same switch to autoscaling in the same edit as a third image: the canary of the
    image the spec left gives its replicas back one at a time as the stable ones come back
    Ready, then the third image rolls over the stable Deployment; it was deleted at once
    (4 Ready -> 2)."""
    steps = [{"weight": 50}, {"weight": 100}]
    fill_h100(kube, ns, leave=4)
    canary_at_its_gate(kube, ns, steps)
    third = "ghcr.io/kubemaas/runtime:0.3.0"
    with Sampler(kube, ns, "m") as sampler:
        apply(kube, ns, autoscaled(third))
        wait_revision(kube, ns, "m", 3, timeout=120)
    _, ready, live = sampler.extremes("to autoscaling and a third image")
    assert ready >= 3 and live <= 4
    pods = pods_of(kube, ns, "m")
    assert len(pods) == 4 and all(p["spec"]["containers"][0]["image"] == third for p in pods)
    history = status(kube, ns, "m")["rollout"]["history"]
    assert [h["outcome"] for h in history[-2:]] == ["Superseded", "Complete"]


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


def test_a_canary_of_larger_pods_takes_as_many_stable_replicas_as_it_needs(
        kube: Kube, ns: str) -> None:
    """1 -> 2 GPUs per replica with 3 replicas on exactly 3 free GPUs: with maxUnavailable 1
    the canary waits and says what is missing (it stalled Pending and was rolled back at its
    deadline); with 2 the stable Deployment gives up 2 replicas and the canary pod runs; an
    abort gives its 2 GPUs back to 2 stable replicas."""
    steps = [{"weight": 33}, {"weight": 100}]

    def two_gpus(canary: dict[str, Any] | None = None, **rollout: Any) -> str:
        doc = yaml.safe_load(model("m", 3, canary=canary or {"steps": steps}, **rollout))
        doc["spec"]["gpu"]["count"] = 2
        return yaml.safe_dump(doc)

    fill_h100(kube, ns, leave=3)
    apply(kube, ns, model("m", 3, canary={"steps": steps}))
    wait_revision(kube, ns, "m", 1)
    apply(kube, ns, two_gpus(progressDeadlineSeconds=10))
    st = wait_for(lambda: (lambda s: s if (s.get("rollout") or {}).get("reason") == (
        "CanaryNeedsGPUs") else None)(status(kube, ns, "m")), timeout=30, what="CanaryNeedsGPUs")
    assert "a canary pod needs 2 nvidia.com/gpu and a stable replica frees 1" in (
        st["rollout"]["message"]) and "maxUnavailable to 2" in st["rollout"]["message"]
    assert st["reason"].startswith("RolloutWaiting")
    # waiting is no stall: past its 10 s deadline nothing is rolled back, no canary pod runs
    holds(lambda: status(kube, ns, "m")["rollout"]["reason"] == "CanaryNeedsGPUs"
          and len(pods_of(kube, ns, "m")) == 3, 12, "the canary waiting for maxUnavailable")
    apply(kube, ns, two_gpus(progressDeadlineSeconds=10, maxUnavailable=2))

    def at_gate() -> list[dict[str, Any]] | None:
        pods = pods_of(kube, ns, "m")
        ro = status(kube, ns, "m").get("rollout") or {}
        return pods if "promote to 2" in ro.get("message", "") and len(pods) == 2 else None
    pods = wait_for(at_gate, timeout=40, what="the 2-GPU canary pod Ready beside 1 stable one")
    gpus = sorted(p["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"]
                  for p in pods)
    assert gpus == ["1", "2"] and all(is_ready(p) for p in pods)
    apply(kube, ns, two_gpus(maxUnavailable=2, canary={"steps": steps, "abort": True}))
    wait_for(lambda: (lambda ps: len(ps) == 3 and all(
        is_ready(p) and p["spec"]["containers"][0]["resources"]["requests"][
            "nvidia.com/gpu"] == "1" for p in ps))(pods_of(kube, ns, "m")), timeout=40,
             what="three 1-GPU stable replicas Ready again")
    wait_canary_gone(kube, ns)


def test_a_third_revision_of_smaller_pods_mid_canary_takes_the_larger_canary_pod_back_first(
        kube: Kube, ns: str) -> None:
    """4 x 1 GPU on exactly 4 free GPUs, maxUnavailable 2: a 2-GPU canary pod (a 25% step) runs
    Ready beside 2 stable replicas; the spec changes to a new image at 1 GPU per pod and a 50%
    step. The canary Deployment got the new template at 2 replicas in place: its 1-GPU pod
    stayed Pending beside the Ready 2-GPU one until the new revision was rolled back at its
    deadline. Now the 2-GPU pod goes first and the new canary runs 1:1 (2 x 1 GPU beside 2
    stable replicas)."""
    def doc(gpus: int, image: str, first: int) -> str:
        d = yaml.safe_load(model("m", 4, image=image, canary={"steps": [
            {"weight": first}, {"weight": 100}]}, maxUnavailable=2, progressDeadlineSeconds=15))
        d["spec"]["gpu"]["count"] = gpus
        return yaml.safe_dump(d)

    fill_h100(kube, ns, leave=4)
    apply(kube, ns, doc(1, "ghcr.io/kubemaas/runtime:0.1.0", 25))
    wait_revision(kube, ns, "m", 1)
    apply(kube, ns, doc(2, "ghcr.io/kubemaas/runtime:0.1.0", 25))
    wait_for(lambda: "promote to 2" in (status(kube, ns, "m").get("rollout") or {}).get(
        "message", ""), timeout=40, what="the 2-GPU canary pod Ready at its gate")
    apply(kube, ns, doc(1, "ghcr.io/kubemaas/runtime:0.2.0", 50))

    def at_gate() -> list[dict[str, Any]] | None:
        ro = status(kube, ns, "m").get("rollout") or {}
        assert ro.get("reason") != "RolledBack", ro.get("message")
        pods = [p for p in pods_of(kube, ns, "m") if is_ready(p)]
        return pods if "promote to 3" in ro.get("message", "") and len(pods) == 4 else None
    pods = wait_for(at_gate, timeout=45, what="revision 3's canary at its gate, 4 pods Ready")
    assert sorted(p["spec"]["containers"][0]["image"] for p in pods) == [
        "ghcr.io/kubemaas/runtime:0.1.0"] * 2 + ["ghcr.io/kubemaas/runtime:0.2.0"] * 2
