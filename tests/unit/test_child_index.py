"""A model's children are the objects of its name among those its labels find: KEDA copies a
ScaledObject's labels onto its HPA keda-hpa-NAME, which must not be taken for the model's own
HorizontalPodAutoscaler NAME (the operator 'deleted' that one on every pass: two API writes per
KEDA-scaled model each resync)."""

from __future__ import annotations

import json

from kubemaas_operator.indexes import named


def _packed(name: str, **labels: str) -> str:
    return json.dumps({"kind": "HorizontalPodAutoscaler",
                       "metadata": {"name": name, "labels": labels}})


def test_kedas_hpa_is_not_the_models_hpa() -> None:
    keda = _packed("keda-hpa-q", **{"app.kubernetes.io/instance": "q",
                                    "app.kubernetes.io/managed-by": "kubemaas",
                                    "scaledobject.keda.sh/name": "q"})
    assert named([keda], "q") is None
    ours = _packed("q", **{"app.kubernetes.io/instance": "q"})
    found = named([keda, ours], "q")
    assert found is not None and found["metadata"]["name"] == "q"
    assert named(None, "q") is None and named([], "q") is None
