"""Rollouts under a namespace ResourceQuota that leaves no room for a surge pod, on a cluster
whose nodes do have free GPUs. The operator reads the quota ahead (quota_room.py) and replaces
in place (or waits) from the start; once it surged anyway, and only switched after the
Deployment controller failed to create the surge pod (ReplicaFailure, FailedCreate, "exceeded
quota"); before that the rollout stalled there, its message saying it surged onto free GPUs."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import RBAC, Operator, reconfigured, writes_to
from tests.cluster.test_operator import apply, condition, get, status
from tests.cluster.test_operator_refusals import quota
from tests.cluster.test_rollout import (
    FAILURE_LABEL,
    Sampler,
    model,
    wait_revision,
)
from tests.cluster.test_rollout_canary import wait_canary_gone
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

NEW = "ghcr.io/kubemaas/runtime:0.2.0"


def gpu_quota(kube: Kube, namespace: str, gpus: int, *scopes: str) -> None:
    quota(kube, namespace, "gpus", f"requests.nvidia.com/gpu={gpus}", *scopes)


def wait_quota_used(kube: Kube, namespace: str, gpus: int) -> None:
    wait_for(lambda: kube.kubectl("-n", namespace, "get", "quota", "gpus", "-o",
                                  "jsonpath={.status.used.requests\\.nvidia\\.com/gpu}",
                                  check=False).stdout == str(gpus), timeout=30,
             what=f"the quota to count {gpus} GPUs used")


def test_a_surge_the_quota_refuses_becomes_a_replacement(kube: Kube, ns: str) -> None:
    gpu_quota(kube, ns, 3)
    apply(kube, ns, model("m", 3))
    wait_revision(kube, ns, "m", 1)
    started = time.monotonic()
    with Sampler(kube, ns, "m") as sampler:
        apply(kube, ns, model("m", 3, image=NEW))
        st = wait_revision(kube, ns, "m", 2, timeout=120)
    _, ready, _ = sampler.extremes(
        f"quota-bound rollout: {time.monotonic() - started:.1f} s")
    print(sorted(sampler.messages))
    assert ready >= 3 - 1, f"ready replicas fell to {ready} (maxUnavailable 1)"
    assert "Replace" in sampler.strategies, sampler.strategies
    # the pod of each replaced replica, refused until the quota controller counts the old one
    # gone, is part of the plan: no Degraded/FailedCreate in between
    assert "FailedCreate" not in sampler.reasons, sampler.reasons
    assert any("ResourceQuota gpus" in m and "1 replica at a time" in m
               for m in sampler.messages), sampler.messages
    assert st["rollout"]["history"][-1]["message"] == "3 replicas Ready (replace rollout)"


def test_a_single_replica_the_quota_holds_waits_then_rolls_once_raised(
        kube: Kube, ns: str, operator: Operator) -> None:
    gpu_quota(kube, ns, 1)
    apply(kube, ns, model("m", 1))
    wait_revision(kube, ns, "m", 1)
    apply(kube, ns, model("m", 1, image=NEW))
    st = wait_for(lambda: (lambda s: s if s.get("reason", "").startswith("RolloutWaiting")
                           else None)(status(kube, ns, "m")), timeout=60,
                  what="the rollout to wait on the quota")
    message = condition(st, "Ready")["message"]
    print(message)
    # read ahead: in our words (the API server refused nothing, the template is held)
    assert "ResourceQuota gpus" in message and "requests.nvidia.com/gpu: 1 of 1 used" in (
        message), message
    assert "allowDowntime" in message and "raise" in message, message
    assert st["rollout"]["strategy"] == "Wait"
    assert st["rollout"]["quota"]["name"] == "gpus", st["rollout"]  # kept by the CRD's schema
    assert st["readyReplicas"] == 1, st  # the only replica keeps serving
    pods = kube.kubectl("-n", ns, "get", "pods", "-l", "app.kubernetes.io/instance=m",
                        "-o", "name").stdout.split()
    assert len(pods) == 1, pods
    writes, passes = operator.writes_during(3, ns)
    assert writes <= passes, (writes, passes)
    assert get(kube, ns, "deployment", "m")["spec"]["template"]["spec"]["containers"][0][
        "image"] != NEW  # held: no surge pod for the Deployment controller to fail to create
    raised = time.monotonic()
    kube.kubectl("-n", ns, "patch", "quota", "gpus", "--type=merge", "-p",
                 '{"spec":{"hard":{"requests.nvidia.com/gpu":"2"}}}')
    st = wait_revision(kube, ns, "m", 2, timeout=120)
    print(f"complete {time.monotonic() - raised:.1f} s after the quota was raised")
    assert st["rollout"]["history"][-1]["outcome"] == "Complete"
    dep = get(kube, ns, "deployment", "m")
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == NEW
    writes, passes = operator.writes_during(2, ns)
    assert writes == 0, (writes, passes)


def test_a_bad_revision_under_the_quota_is_rolled_back(kube: Kube, ns: str) -> None:
    gpu_quota(kube, ns, 2)
    apply(kube, ns, model("m", 2, progressDeadlineSeconds=10))
    wait_revision(kube, ns, "m", 1)
    apply(kube, ns, model("m", 2, labels={FAILURE_LABEL: "crash"}, progressDeadlineSeconds=10))
    st = wait_for(lambda: (lambda s: s if s.get("reason", "").startswith("RolledBack")
                           else None)(status(kube, ns, "m")), timeout=90, what="the rollback")
    assert "CrashLoopBackOff" in condition(st, "Ready")["message"], st

    def good_again() -> bool:
        s = status(kube, ns, "m")
        dep = get(kube, ns, "deployment", "m")
        return (s.get("readyReplicas") == 2 and FAILURE_LABEL not in dep["spec"]["template"][
            "metadata"]["labels"])
    wait_for(good_again, timeout=60, what="two ready replicas of the good revision")



def test_a_full_quota_is_read_ahead_no_surge_pod_is_refused(kube: Kube, ns: str,
                                                            operator: Operator) -> None:
    """The operator reads the namespace's ResourceQuota before the rollout: a quota with no room
    for one more pod makes it replace in place from the start, so the Deployment controller
    never tries (and fails) to create a surge pod."""
    gpu_quota(kube, ns, 2)
    apply(kube, ns, model("m", 2))
    wait_revision(kube, ns, "m", 1)
    wait_for(lambda: kube.kubectl("-n", ns, "get", "quota", "gpus", "-o",
                                  "jsonpath={.status.used.requests\\.nvidia\\.com/gpu}",
                                  check=False).stdout == "2", timeout=30,
             what="the quota to count both replicas")
    started = time.monotonic()
    with Sampler(kube, ns, "m") as sampler:
        apply(kube, ns, model("m", 2, image=NEW))
        st = wait_for(lambda: (lambda s: s if (s.get("rollout") or {}).get("strategy") not in (
            None, "None") else None)(status(kube, ns, "m")), timeout=30,
            what="the rollout to pick a strategy")
        print(f"strategy after {time.monotonic() - started:.1f} s: {st['rollout']}")
        done = wait_revision(kube, ns, "m", 2, timeout=120)
    print(f"quota-bound rollout complete after {time.monotonic() - started:.1f} s; "
          f"{sorted(sampler.strategies)} {sorted(sampler.messages)}")
    # never a surge first: the Deployment controller is never asked for a pod the quota refuses
    assert "Surge" not in sampler.strategies, sampler.strategies
    assert st["rollout"]["strategy"] == "Replace", st["rollout"]
    assert st["rollout"]["reason"] == "QuotaExceeded", st["rollout"]
    assert st["rollout"]["quota"]["name"] == "gpus", st["rollout"]
    assert "requests.nvidia.com/gpu" in st["rollout"]["quota"]["message"], st["rollout"]
    assert "FailedCreate" not in sampler.reasons, sampler.reasons
    # one message, in our words, through the rollout (a replaced replica's refused pod keeps it)
    assert not any("API server said" in m for m in sampler.messages), sampler.messages
    assert done["rollout"]["history"][-1]["message"] == "2 replicas Ready (replace rollout)"
    writes, passes = operator.writes_during(2, ns)  # the quota's updates write nothing
    assert writes == 0, (writes, passes)


def test_a_scoped_quota_is_not_read_ahead_and_its_refusal_still_turns_the_surge(
        kube: Kube, ns: str) -> None:
    """A quota with scopes may not count the pod: no verdict ahead, the rollout surges, and
    the quota's refusal of the surge pod turns it into a replacement (the API server's words)."""
    gpu_quota(kube, ns, 2, "NotTerminating")  # a Deployment's pods have no deadline: counted
    apply(kube, ns, model("m", 2))
    wait_revision(kube, ns, "m", 1)
    with Sampler(kube, ns, "m") as sampler:
        apply(kube, ns, model("m", 2, image=NEW))
        st = wait_revision(kube, ns, "m", 2, timeout=120)
    print(sorted(sampler.strategies), sorted(sampler.messages))
    # the surge may last less than a sample; the API server's words say it was tried, refused
    assert "Replace" in sampler.strategies, sampler.strategies
    assert any("the API server said: forbidden: exceeded quota: gpus" in m
               for m in sampler.messages), sampler.messages
    assert st["rollout"]["history"][-1]["message"] == "2 replicas Ready (replace rollout)"


def queued(operator: Operator) -> int:
    """Reconciles the operator queued so far (kubemaas_operator_workqueue_adds_total)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics",
                                timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith("kubemaas_operator_workqueue_adds_total "):
                return int(float(line.split()[1]))
    raise AssertionError("no kubemaas_operator_workqueue_adds_total on /metrics")


def patch_quota(kube: Kube, ns: str, hard: dict[str, str]) -> None:
    """Patch the quota's spec.hard and wait until the quota controller's status says it."""
    kube.kubectl("-n", ns, "patch", "quota", "gpus", "--type=merge", "-p",
                 json.dumps({"spec": {"hard": hard}}))
    wait_for(lambda: all((get(kube, ns, "quota", "gpus").get("status") or {}).get(
        "hard", {}).get(k) == v for k, v in hard.items()), timeout=30,
        what=f"the quota's status.hard to say {hard}")


def test_a_raised_quota_wakes_the_rollout_that_waits_on_it(kube: Kube, ns: str,
                                                            operator: Operator) -> None:
    """A rollout held by a full quota looks again when a quota of its namespace changes (a
    watch event), not at its next re-check (a minute, a safety net) nor at a resync (10 min
    here); a quota's change wakes no model that does not wait on a quota."""
    gpu_quota(kube, ns, 1)
    with reconfigured(operator, KUBEMAAS_OPERATOR_RESYNC_S="600"):
        apply(kube, ns, model("m", 1))
        wait_revision(kube, ns, "m", 1)
        apply(kube, ns, model("m", 1, image=NEW))
        wait_for(lambda: (lambda s: s if s.get("reason", "").startswith("RolloutWaiting")
                          else None)(status(kube, ns, "m")), timeout=60,
                 what="the rollout to wait on the quota")
        writes = writes_to(operator.counters(), ns)
        patch_quota(kube, ns, {"requests.nvidia.com/gpu": "1", "pods": "50"})  # still no room
        time.sleep(1)
        assert writes_to(operator.counters(), ns) == writes  # woken: nothing to write
        raised = time.monotonic()
        patch_quota(kube, ns, {"requests.nvidia.com/gpu": "2", "pods": "50"})

        def rolling() -> bool:
            dep = get(kube, ns, "deployment", "m")
            return dep["spec"]["template"]["spec"]["containers"][0]["image"] == NEW
        # the re-check alone would take up to a minute
        wait_for(rolling, timeout=20, what="the raised quota to start the rollout")
        print(f"the rollout started {time.monotonic() - raised:.1f} s after the quota was "
              "raised")
        wait_revision(kube, ns, "m", 2, timeout=120)
        time.sleep(2)  # the old pod's last events
        before = queued(operator)
        patch_quota(kube, ns, {"requests.nvidia.com/gpu": "3", "pods": "50"})
        time.sleep(1)
        assert queued(operator) == before, "a quota change woke a model that does not wait"


def test_a_canary_under_a_full_quota_moves_replicas_within_it(kube: Kube, ns: str) -> None:
    """A canary's pod under a quota with no room for one more pod: read ahead, the stable
    Deployment gives a replica up first and the canary grows into its room (reason
    QuotaExceeded, the quota named), instead of a canary pod beside every stable one that the
    API server refuses (FailedCreate on the canary's ReplicaSet)."""
    gpu_quota(kube, ns, 2)
    apply(kube, ns, model("m", 2))
    wait_revision(kube, ns, "m", 1)
    wait_quota_used(kube, ns, 2)
    steps = [{"weight": 50}]  # then a manual gate
    apply(kube, ns, model("m", 2, image=NEW, canary={"steps": steps}))

    def at_gate() -> dict[str, Any] | None:
        ro = status(kube, ns, "m").get("rollout") or {}
        return ro if "waiting for promotion" in ro.get("message", "") else None
    ro = wait_for(at_gate, timeout=60, what="the canary at its gate, one replica Ready")
    print(ro["message"])
    assert ro["strategy"] == "Canary" and ro["reason"] == "QuotaExceeded", ro
    assert ro["quota"]["name"] == "gpus" and "requests.nvidia.com/gpu: 2 of 2 used" in ro[
        "quota"]["message"], ro
    assert ro["canary"]["canaryReplicas"] == 1 and ro["canary"]["stableReplicas"] == 1, ro
    refused = kube.kubectl("-n", ns, "get", "events", "--field-selector",
                           "reason=FailedCreate", "-o", "jsonpath={.items[*].message}").stdout
    assert "exceeded quota" not in refused, refused
    apply(kube, ns, model("m", 2, image=NEW, canary={"steps": steps, "promote": 2}))
    done = wait_revision(kube, ns, "m", 2, timeout=120)
    assert done["rollout"]["history"][-1]["outcome"] == "Complete"
    wait_canary_gone(kube, ns)


def test_a_failing_canary_under_a_full_quota_is_rolled_back(kube: Kube, ns: str) -> None:
    """The canary took the room of a stable replica; when its pods crash it is rolled back, the
    canary Deployment goes and the stable one is back to every replica within the quota."""
    gpu_quota(kube, ns, 2)
    apply(kube, ns, model("m", 2))
    wait_revision(kube, ns, "m", 1)
    wait_quota_used(kube, ns, 2)
    steps = [{"weight": 50}]
    with Sampler(kube, ns, "m") as sampler:
        apply(kube, ns, model("m", 2, labels={FAILURE_LABEL: "crash"},
                              progressDeadlineSeconds=10, canary={"steps": steps}))
        st = wait_for(lambda: (lambda s: s if s.get("reason", "").startswith("RolledBack")
                               else None)(status(kube, ns, "m")), timeout=90,
                      what="the rollback")
    assert "CrashLoopBackOff" in condition(st, "Ready")["message"], st
    print(sorted(sampler.messages), st["rollout"]["strategy"])
    # the canary ran within the quota (the sampler may miss its few moments; the words stay)
    assert any("no room for a canary pod" in m for m in sampler.messages) or (
        st["rollout"]["strategy"] == "Replace"), (sampler.messages, st["rollout"])
    wait_canary_gone(kube, ns)
    wait_for(lambda: (lambda s: s if s.get("readyReplicas") == 2 else None)(
        status(kube, ns, "m")), timeout=90, what="two ready replicas of the good revision")


@pytest.fixture
def without_resourcequotas(kube: Kube, operator: Operator) -> Iterator[None]:
    """The operator's ClusterRole without resourcequotas, the operator restarted on it (a
    running watch outlives the rule); both undone after."""
    docs = [d for d in yaml.safe_load_all(RBAC.read_text()) if d]
    for d in docs:
        if d.get("kind") == "ClusterRole":
            d["rules"] = [r for r in d["rules"] if "resourcequotas" not in r.get("resources", [])]
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    operator.restart()
    try:
        yield
    finally:
        kube.kubectl("apply", "-f", str(RBAC))
        operator.restart()


@pytest.mark.slow
def test_an_operator_that_may_not_read_quotas_falls_back_to_the_refusal(
        kube: Kube, ns: str, operator: Operator, without_resourcequotas: None) -> None:
    """Without get/list/watch on resourcequotas the operator runs on (no crash loop) and learns
    of a full quota as before, from the refused surge pod."""
    gpu_quota(kube, ns, 2)
    apply(kube, ns, model("m", 2))
    wait_revision(kube, ns, "m", 1, timeout=150)  # kopf retries the forbidden listing ~1 min
    with Sampler(kube, ns, "m") as sampler:
        apply(kube, ns, model("m", 2, image=NEW))
        st = wait_revision(kube, ns, "m", 2, timeout=120)
    assert operator.alive()
    # the surge may last less than a sample; the API server's words say it was tried, refused
    assert "Replace" in sampler.strategies, sampler.strategies
    assert any("the API server said: forbidden: exceeded quota: gpus" in m
               for m in sampler.messages), sampler.messages
    assert st["rollout"]["history"][-1]["message"] == "2 replicas Ready (replace rollout)"
