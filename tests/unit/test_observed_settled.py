"""observed.settled_deployment_info: a Deployment whose generation moved for its metadata only
(annotations bump a Deployment's generation) keeps a status that describes its spec."""

from __future__ import annotations

from typing import Any

from kubemaas_operator.memory import Memory
from kubemaas_operator.observed import settled_deployment_info


def _dep(generation: int, observed: int, image: str = "runtime:1",
         **annotations: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "m", "generation": generation,
                         "annotations": {"serving.kubemaas.io/revision": "r1", **annotations}},
            "spec": {"replicas": 1, "template": {"spec": {"containers": [{"image": image}]}}},
            "status": {"observedGeneration": observed, "replicas": 1, "readyReplicas": 1,
                       "updatedReplicas": 1, "availableReplicas": 1}}


def test_an_annotation_on_a_settled_deployment_leaves_it_current() -> None:
    info, settled = settled_deployment_info(_dep(2, 2), None)
    assert settled is not None and info.observed_generation == 2
    info, again = settled_deployment_info(_dep(3, 2, note="x"), settled)
    assert info.observed_generation == 3 and again == settled


def test_a_spec_change_is_stale_until_observed() -> None:
    _, settled = settled_deployment_info(_dep(2, 2), None)
    info, now = settled_deployment_info(_dep(3, 2, image="runtime:2"), settled)
    assert info.observed_generation == 2 and now is None


def test_without_a_settled_spec_a_gap_stays_a_gap() -> None:
    info, settled = settled_deployment_info(_dep(3, 2), None)
    assert info.observed_generation == 2 and settled is None


def test_memory_remembers_the_settled_spec_per_deployment() -> None:
    memory = Memory()
    assert memory.deployment(_dep(2, 2)).observed_generation == 2
    assert memory.deployment(_dep(3, 2, note="x")).observed_generation == 3
    assert memory.deployment(_dep(4, 3, image="runtime:2")).observed_generation == 3
    memory.forget("Deployment", "ns", "m")
    assert memory.deployment(_dep(5, 4, note="y")).observed_generation == 4
