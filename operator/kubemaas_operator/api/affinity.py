"""PURE: the shape of `spec.scheduling.affinity` and `topologySpreadConstraints[]`, checked
against the Kubernetes types they are copied into (core/v1 Affinity, TopologySpreadConstraint).

The CRD keeps these fields open (x-kubernetes-preserve-unknown-fields), so any JSON is admitted;
a wrong shape used to crash the placement code or be refused by server-side apply with a 500
that looked transient. Here it is a SpecError naming the field. Values (an operator name, a
maxSkew of 0) are left to the API server, whose 422 the status reports as Rejected."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .fields import SpecError

# A type: "str", "int", "bool", ["T"] (a list of T), {"*": "str"} (a map of strings) or the
# name of a struct below (its fields and their types; "!" marks a required field).
_REQUIREMENT = {"key!": "str", "operator!": "str", "values": ["str"]}
_TERM = {"matchExpressions": ["NodeRequirement"], "matchFields": ["NodeRequirement"]}
_SELECTOR = {"matchLabels": {"*": "str"}, "matchExpressions": ["LabelRequirement"]}
_POD_TERM = {"labelSelector": "LabelSelector", "namespaceSelector": "LabelSelector",
             "namespaces": ["str"], "topologyKey!": "str", "matchLabelKeys": ["str"],
             "mismatchLabelKeys": ["str"]}
_POD_AFFINITY = {"requiredDuringSchedulingIgnoredDuringExecution": ["PodAffinityTerm"],
                 "preferredDuringSchedulingIgnoredDuringExecution": ["WeightedPodAffinityTerm"]}
STRUCTS: dict[str, dict[str, Any]] = {
    "Affinity": {"nodeAffinity": "NodeAffinity", "podAffinity": "PodAffinity",
                 "podAntiAffinity": "PodAffinity"},
    "NodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": "NodeSelector",
                     "preferredDuringSchedulingIgnoredDuringExecution": ["PreferredTerm"]},
    "NodeSelector": {"nodeSelectorTerms!": ["NodeSelectorTerm"]},
    "NodeSelectorTerm": _TERM,
    "NodeRequirement": _REQUIREMENT,
    "PreferredTerm": {"weight!": "int", "preference!": "NodeSelectorTerm"},
    "PodAffinity": _POD_AFFINITY,
    "PodAffinityTerm": _POD_TERM,
    "WeightedPodAffinityTerm": {"weight!": "int", "podAffinityTerm!": "PodAffinityTerm"},
    "LabelSelector": _SELECTOR,
    "LabelRequirement": _REQUIREMENT,
    "TopologySpreadConstraint": {
        "maxSkew!": "int", "topologyKey!": "str", "whenUnsatisfiable!": "str",
        "labelSelector": "LabelSelector", "minDomains": "int", "nodeAffinityPolicy": "str",
        "nodeTaintsPolicy": "str", "matchLabelKeys": ["str"]},
}
_SCALARS = {"str": (str,), "int": (int,), "bool": (bool,)}
_NAMES = {"str": "a string", "int": "an integer", "bool": "true or false"}


def check(value: Any, kind: Any, path: str) -> None:
    """Raise SpecError at the first part of `value` that is not of `kind`."""
    if isinstance(kind, list):
        if not isinstance(value, list):
            raise SpecError(path, f"must be a list, got {_what(value)}")
        for i, item in enumerate(value):
            check(item, kind[0], f"{path}[{i}]")
    elif isinstance(kind, dict):
        if not isinstance(value, Mapping):
            raise SpecError(path, f"must be an object, got {_what(value)}")
        for key, item in value.items():
            check(item, kind["*"], f"{path}.{key}")
    elif kind in _SCALARS:
        if isinstance(value, bool) != (kind == "bool") or not isinstance(value, _SCALARS[kind]):
            raise SpecError(path, f"must be {_NAMES[kind]}, got {_what(value)}")
    else:
        _struct(value, kind, path)


def _struct(value: Any, kind: str, path: str) -> None:
    if not isinstance(value, Mapping):
        raise SpecError(path, f"must be an object (a Kubernetes {kind}), got {_what(value)}")
    fields = {name.rstrip("!"): (sub, name.endswith("!")) for name, sub in STRUCTS[kind].items()}
    for key, item in value.items():
        if key not in fields:
            raise SpecError(f"{path}.{key}", f"is not a field of a Kubernetes {kind} (it has "
                            f"{', '.join(sorted(fields))})")
        if item is not None:
            check(item, fields[key][0], f"{path}.{key}")
    for name, (_, required) in fields.items():
        if required and value.get(name) is None:
            raise SpecError(f"{path}.{name}", f"is required in a Kubernetes {kind}")


def _what(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 40 else text[:37] + '...'}"
