"""Autoscaling a GPU model on the simulated GPU nodes: a scale-out the cluster cannot hold says so
in the Reason column (the capacity check follows what the autoscaler asks, not only the floor),
and a rollout started during a scale-out converges.

The autoscaler's decision is the Deployment's replica count: the test sets it the way an HPA or
KEDA does (the scale subresource of the Deployment), since kwok's pods have no CPU figures and
the testbed runs no metrics pipeline."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import Operator
from tests.cluster.test_operator import H100, apply, condition, get, get_md_table, md, status
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

GPU_RUNTIME = {"image": "ghcr.io/kubemaas/runtime:0.1.0", "resources": {"cpu": "1"}}


def _scale(kube: Kube, namespace: str, name: str, replicas: int) -> None:
    """What the autoscaler does: set the Deployment's replicas through its scale subresource."""
    kube.kubectl("-n", namespace, "scale", "deployment", name, f"--replicas={replicas}")


def test_scale_out_beyond_the_gpus_says_so_and_a_rollout_during_it_converges(
        kube: Kube, namespace: str, operator: Operator) -> None:
    # 4 GPUs a replica on H100 nodes (2 nodes x 8 = room for 4 replicas at most).
    apply(kube, namespace, md("big", runtime=GPU_RUNTIME, gpu={"count": 4, "products": [H100]},
                              autoscaling={"minReplicas": 1, "maxReplicas": 8}))
    wait_for(lambda: status(kube, namespace, "big").get("phase") == "Ready", timeout=60,
             what="Ready at 1 replica")

    # The autoscaler asks for 6: two cannot fit, and the Reason column says so.
    _scale(kube, namespace, "big", 6)
    row = wait_for(lambda: next((r for r in get_md_table(kube, namespace)
                                 if r["REASON"].startswith("InsufficientGPU")), None),
                   timeout=60, what="InsufficientGPU in the Reason column")
    assert "needs 6x4 gpu" in row["REASON"]
    scheduled = condition(status(kube, namespace, "big"), "Scheduled")
    assert scheduled["status"] == "False" and "room for" in scheduled["message"]

    # Back within what fits (3), and a new revision rolled out at the same time: it converges,
    # every replica on the new revision, Ready.
    _scale(kube, namespace, "big", 3)
    apply(kube, namespace, md("big", runtime={**GPU_RUNTIME,
                                              "image": "ghcr.io/kubemaas/runtime:0.2.0"},
                              gpu={"count": 4, "products": [H100]},
                              autoscaling={"minReplicas": 1, "maxReplicas": 8}))
    st = wait_for(lambda: (lambda s: s if s.get("phase") == "Ready" and s.get(
        "readyReplicas") == 3 and s.get("currentRevision") == s.get("updateRevision")
        and s.get("observedGeneration") == 2 else None)(status(kube, namespace, "big")),
        timeout=120, what="the rollout during the scale-out converged at 3 replicas")
    assert st["replicaSummary"] == "3/3"
    dep = get(kube, namespace, "deployment", "big")
    assert dep["spec"]["replicas"] == 3  # the operator left the autoscaler's count alone
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.2.0")
