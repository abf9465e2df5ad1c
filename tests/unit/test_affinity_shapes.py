"""spec.scheduling.affinity and topologySpreadConstraints keep the Kubernetes types' shape: the
CRD leaves them open, so a wrong shape is a SpecError naming the field (it crashed placement, or
server-side apply refused it with a 500 retried forever); good shapes pass untouched."""

from __future__ import annotations

from typing import Any

import pytest

from kubemaas_operator.api import parse_spec
from kubemaas_operator.api.fields import SpecError
from kubemaas_operator.scheduling import placement

REQUIRED = "requiredDuringSchedulingIgnoredDuringExecution"
PREFERRED = "preferredDuringSchedulingIgnoredDuringExecution"


def _spec(**scheduling: Any) -> dict[str, Any]:
    return {"model": {"uri": "https://example.com/m.onnx", "format": "onnx"},
            "runtime": {"image": "x"}, "gpu": {"count": 1, "products": ["H100"]},
            "scheduling": scheduling}


BAD = [  # (scheduling, the field the error names)
    ({"affinity": {"nodeAffinity": 5}}, "spec.scheduling.affinity.nodeAffinity"),
    ({"affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": ["str"]}}}},
     f"spec.scheduling.affinity.nodeAffinity.{REQUIRED}.nodeSelectorTerms[0]"),
    ({"affinity": {"nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [{"matchExpressions": "x"}]}}}},
     f"spec.scheduling.affinity.nodeAffinity.{REQUIRED}.nodeSelectorTerms[0].matchExpressions"),
    ({"affinity": {"podAntiAffinity": "x"}}, "spec.scheduling.affinity.podAntiAffinity"),
    ({"affinity": {"nodeAfinity": {}}}, "spec.scheduling.affinity.nodeAfinity"),
    ({"affinity": {"podAffinity": {REQUIRED: [{"labelSelector": {"matchLabels": {"a": 1}}}]}}},
     f"spec.scheduling.affinity.podAffinity.{REQUIRED}[0].labelSelector.matchLabels.a"),
    ({"affinity": {"podAffinity": {REQUIRED: [{"labelSelector": {}}]}}},
     f"spec.scheduling.affinity.podAffinity.{REQUIRED}[0].topologyKey"),
    ({"topologySpreadConstraints": [{"maxSkew": 0, "garbage": True, "labelSelector": 7}]},
     "spec.scheduling.topologySpreadConstraints[0].garbage"),
    ({"topologySpreadConstraints": [{"maxSkew": True, "topologyKey": "z",
                                     "whenUnsatisfiable": "DoNotSchedule"}]},
     "spec.scheduling.topologySpreadConstraints[0].maxSkew"),
]


@pytest.mark.parametrize(("scheduling", "path"), BAD)
def test_wrong_shapes_name_the_field(scheduling: dict[str, Any], path: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(_spec(**scheduling))
    assert err.value.path == path, err.value


def test_real_shapes_pass_and_are_placed() -> None:
    affinity = {
        "nodeAffinity": {REQUIRED: {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}]},
            PREFERRED: [{"weight": 5, "preference": {"matchFields": [
                {"key": "metadata.name", "operator": "NotIn", "values": ["n1"]}]}}]},
        "podAntiAffinity": {PREFERRED: [{"weight": 100, "podAffinityTerm": {
            "topologyKey": "kubernetes.io/hostname", "labelSelector": {
                "matchLabels": {"app": "m"},
                "matchExpressions": [{"key": "x", "operator": "Exists"}]}}}]}}
    spread = [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "ScheduleAnyway",
               "labelSelector": {"matchLabels": {"app": "m"}}, "minDomains": 2,
               "matchLabelKeys": ["pod-template-hash"]}]
    spec = parse_spec(_spec(affinity=affinity, topologySpreadConstraints=spread))
    assert spec.scheduling.topology_spread_constraints == tuple(spread)
    placed = placement(spec)
    terms = placed.affinity["nodeAffinity"][REQUIRED]["nodeSelectorTerms"]
    expressions = terms[0]["matchExpressions"]
    assert expressions[0]["key"] == "zone" and len(expressions) == 2  # the GPU product ANDed
    assert placed.affinity["podAntiAffinity"] == affinity["podAntiAffinity"]
