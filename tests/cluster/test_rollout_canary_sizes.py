"""Canaries whose pods ask for another number of GPUs than the stable revision's, on the real
control plane: a canary of smaller pods is asked for only where its GPUs are free; a third
revision of the same (larger) pod size replaces the canary's pod without dropping the model
under its Ready floor."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.cluster.test_operator import apply, status
from tests.cluster.test_rollout import (
    Sampler,
    fill_h100,
    is_ready,
    model,
    pods_of,
    wait_revision,
)
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster


def test_a_canary_of_smaller_pods_gets_its_gpus_from_a_stable_replica(kube: Kube,
                                                                      ns: str) -> None:
    """2 x 2 GPUs -> 2 x 1 GPU on exactly 4 free GPUs: the capacity check counts the model's
    own 4 GPUs as room for 4 one-GPU pods; counted as 2 free, the canary pod was asked for
    beside both stable replicas, stayed Pending and the revision was rolled back at its
    deadline. Now one stable replica goes first and the canary pod runs in its GPUs."""
    def doc(gpus: int) -> str:
        d = yaml.safe_load(model("m", 2, canary={"steps": [{"weight": 50}, {"weight": 100}]},
                                 progressDeadlineSeconds=15))
        d["spec"]["gpu"]["count"] = gpus
        return yaml.safe_dump(d)

    fill_h100(kube, ns, leave=4)
    apply(kube, ns, doc(2))
    wait_revision(kube, ns, "m", 1)
    apply(kube, ns, doc(1))

    def at_gate() -> list[dict[str, Any]] | None:
        ro = status(kube, ns, "m").get("rollout") or {}
        assert ro.get("reason") != "RolledBack", ro.get("message")
        pods = [p for p in pods_of(kube, ns, "m") if is_ready(p)]
        return pods if "promote to 2" in ro.get("message", "") and len(pods) == 2 else None
    pods = wait_for(at_gate, timeout=45, what="the 1-GPU canary pod Ready at its gate")
    gpus = sorted(p["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"]
                  for p in pods)
    assert gpus == ["1", "2"]


def test_a_third_revision_of_the_same_pod_size_keeps_the_ready_floor(kube: Kube,
                                                                   ns: str) -> None:
    """5 x 1 GPU on exactly 5 free GPUs, maxUnavailable 2, a 40% step of 2-GPU canary pods:
    one canary pod Ready beside 2 stable replicas (3 Ready, the floor), the second does not
    fit (CanaryNeedsGPUs). A new image of the same 2-GPU pods: its pod replaces the old one
    (the canary Deployment's new pod first at the floor) without a rollback, and 3 stay Ready.
    On kwok the stable replica that takes the free GPU back is Ready within moments, so the
    drop to 2 that the in-place swap allowed is a race here (not seen in one run without the
    change); tests/unit/test_canary_swap.py shows the floor pass by pass."""
    def doc(image: str) -> str:
        d = yaml.safe_load(model("m", 5, image=image, canary={"steps": [
            {"weight": 40}, {"weight": 100}]}, maxUnavailable=2, progressDeadlineSeconds=20))
        d["spec"]["gpu"]["count"] = 2
        return yaml.safe_dump(d)

    fill_h100(kube, ns, leave=5)
    first = yaml.safe_load(doc("ghcr.io/kubemaas/runtime:0.1.0"))
    first["spec"]["gpu"]["count"] = 1
    apply(kube, ns, yaml.safe_dump(first))
    wait_revision(kube, ns, "m", 1)
    apply(kube, ns, doc("ghcr.io/kubemaas/runtime:0.1.0"))
    wait_for(lambda: (status(kube, ns, "m").get("rollout") or {}).get("reason") == (
        "CanaryNeedsGPUs") and sum(map(is_ready, pods_of(kube, ns, "m"))) == 3, timeout=60,
             what="one 2-GPU canary pod Ready beside 2 stable replicas")

    def swapped() -> bool:
        ro = status(kube, ns, "m").get("rollout") or {}
        assert ro.get("reason") != "RolledBack", ro.get("message")
        return any(is_ready(p) and p["metadata"]["labels"].get("serving.kubemaas.io/track")
                   == "canary" and p["spec"]["containers"][0]["image"].endswith(":0.2.0")
                   for p in pods_of(kube, ns, "m"))
    with Sampler(kube, ns, "m") as sampler:
        apply(kube, ns, doc("ghcr.io/kubemaas/runtime:0.2.0"))
        wait_for(swapped, timeout=60, interval=0.2, what="revision 3's canary pod Ready")
    _, ready, _ = sampler.extremes("swap")
    assert ready >= 3
