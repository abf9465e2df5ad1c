"""Rollouts under a namespace ResourceQuota that leaves no room for a surge pod, on a cluster
whose nodes do have free GPUs: the operator surges (free GPUs), the Deployment controller cannot
create the surge pod (ReplicaFailure, FailedCreate, "exceeded quota"). The rollout stalled there,
its message saying it surged onto free GPUs."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.cluster.conftest import Operator
from tests.cluster.test_operator import apply, condition, get, status
from tests.cluster.test_rollout import (  # noqa: F401 (quiet_h100: a fixture)
    FAILURE_LABEL,
    Sampler,
    model,
    quiet_h100,
    wait_revision,
)
from tests.conftest import Kube, delete_namespace_and_its_pods
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

NEW = "ghcr.io/kubemaas/runtime:0.2.0"


@pytest.fixture
def ns(kube: Kube, namespace: str, operator: Operator,
       request: pytest.FixtureRequest) -> Iterator[str]:
    """A namespace whose GPU pods are gone before the next test counts free GPUs."""
    request.getfixturevalue("quiet_h100")
    yield namespace
    delete_namespace_and_its_pods(kube, namespace)


def gpu_quota(kube: Kube, namespace: str, gpus: int) -> None:
    kube.kubectl("-n", namespace, "create", "quota", "gpus",
                 f"--hard=requests.nvidia.com/gpu={gpus}")
    wait_for(lambda: kube.kubectl("-n", namespace, "get", "quota", "gpus", "-o",
                                  "jsonpath={.status.hard}", check=False).stdout or None,
             timeout=30, what="the quota controller to fill in the quota's status")


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
    assert "ResourceQuota gpus" in message and "exceeded quota" in message, message
    assert "allowDowntime" in message and "raise" in message, message
    assert st["rollout"]["strategy"] == "Wait"
    assert st["rollout"]["quota"]["name"] == "gpus", st["rollout"]  # kept by the CRD's schema
    assert st["readyReplicas"] == 1, st  # the only replica keeps serving
    pods = kube.kubectl("-n", ns, "get", "pods", "-l", "app.kubernetes.io/instance=m",
                        "-o", "name").stdout.split()
    assert len(pods) == 1, pods
    writes, passes = operator.writes_during(3, ns)
    assert writes <= passes, (writes, passes)
    kube.kubectl("-n", ns, "patch", "quota", "gpus", "--type=merge", "-p",
                 '{"spec":{"hard":{"requests.nvidia.com/gpu":"2"}}}')
    st = wait_revision(kube, ns, "m", 2, timeout=120)
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
