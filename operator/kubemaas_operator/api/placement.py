"""PURE: where replicas go — `spec.gpu` (what GPU one replica needs) and `spec.scheduling`
(node selector, tolerations, affinity, priority, spread; scheduling.py decides with them)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..quantity import parse_quantity
from .affinity import check
from .fields import SpecError, array, boolean, integer, json_name, obj, quantity, str_map, string

_MIG = re.compile(r"^[1-7]g\.[0-9]+gb(\+me)?$")


@dataclass(frozen=True)
class GPUSizing:
    """What GPU sizing (sizing.py) found for `gpu.count: auto`: the memory one replica needs,
    said in words for messages, and when no node type can hold it (or the shape is not known
    yet) the reason the capacity check reports instead of counting GPUs."""

    need: str  # "needs 21.0 GiB per replica (weights 15.0 GiB + KV cache 4.0 GiB ...)"
    reason: str = ""  # ModelTooLarge | ModelShapeUnknown; "" = a choice was made
    message: str = ""
    summary: str = ""  # "Reason: short text" for the Reason column


@dataclass(frozen=True)
class GPUSpec:
    # GPUs per replica: the spec's number, or with `auto` the GPU sizing's choice (sizing.py;
    # 1 until the operator sized it).
    count: int = field(metadata=json_name("count"), default=1)
    products: tuple[str, ...] = field(metadata=json_name("products"), default=())
    min_memory: str | None = field(metadata=json_name("minMemory"), default=None)
    mig_profile: str | None = field(metadata=json_name("migProfile"), default=None)
    # Derived, not API fields: count was "auto" (the API's value), and what GPU sizing found.
    auto: bool = field(metadata={"derived": "count"}, default=False)
    sizing: GPUSizing | None = field(metadata={"derived": "sizing"}, default=None)

    @property
    def resource(self) -> str:
        """The extended resource one replica requests `count` of."""
        return f"nvidia.com/mig-{self.mig_profile}" if self.mig_profile else "nvidia.com/gpu"

    @property
    def min_memory_mib(self) -> int | None:
        if self.min_memory is None:
            return None
        return int(-(-parse_quantity(self.min_memory) // (1024 * 1024)))


@dataclass(frozen=True)
class Toleration:
    key: str | None = field(metadata=json_name("key"), default=None)
    operator: str | None = field(metadata=json_name("operator"), default=None)
    value: str | None = field(metadata=json_name("value"), default=None)
    effect: str | None = field(metadata=json_name("effect"), default=None)
    toleration_seconds: int | None = field(metadata=json_name("tolerationSeconds"), default=None)

    def to_k8s(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in (("key", self.key), ("operator", self.operator),
                            ("value", self.value), ("effect", self.effect),
                            ("tolerationSeconds", self.toleration_seconds)):
            if value is not None:
                out[name] = value
        return out


@dataclass(frozen=True)
class Scheduling:
    node_selector: Mapping[str, str] = field(metadata=json_name("nodeSelector"),
                                             default_factory=dict)
    tolerations: tuple[Toleration, ...] = field(metadata=json_name("tolerations"), default=())
    affinity: Mapping[str, Any] = field(metadata=json_name("affinity"), default_factory=dict)
    priority_class_name: str | None = field(metadata=json_name("priorityClassName"),
                                            default=None)
    topology_spread_constraints: tuple[Mapping[str, Any], ...] = field(
        metadata=json_name("topologySpreadConstraints"), default=())
    allow_gpu_nodes: bool = field(metadata=json_name("allowGPUNodes"), default=False)


def parse_gpu(raw: Any) -> GPUSpec | None:
    """`spec.gpu` -> GPUSpec (None when absent), or SpecError naming the field."""
    if raw is None:
        return None
    g = obj(raw, "spec.gpu")
    auto = g.get("count") == "auto"
    if isinstance(g.get("count"), str) and not auto:
        raise SpecError("spec.gpu.count", f"must be 1 to 16, or auto, got {g.get('count')!r}")
    count = None if auto else integer(g.get("count"), "spec.gpu.count", 1, 16)
    products = tuple(string(p, f"spec.gpu.products[{i}]", required=True) or ""
                     for i, p in enumerate(array(g.get("products"), "spec.gpu.products")))
    mig = string(g.get("migProfile"), "spec.gpu.migProfile")
    if mig is not None and not _MIG.match(mig):
        raise SpecError("spec.gpu.migProfile", f"{mig!r} is not a MIG profile such as 1g.10gb")
    min_memory = quantity(g.get("minMemory"), "spec.gpu.minMemory")
    if mig is not None and min_memory is not None:
        raise SpecError("spec.gpu.minMemory", "does not apply to a MIG profile")
    return GPUSpec(count=count or 1, products=products, min_memory=min_memory, mig_profile=mig,
                   auto=auto)


def _toleration(raw: Any, path: str) -> Toleration:
    t = obj(raw, path)
    return Toleration(
        key=string(t.get("key"), f"{path}.key"),
        operator=string(t.get("operator"), f"{path}.operator"),
        value=string(t.get("value"), f"{path}.value"),
        effect=string(t.get("effect"), f"{path}.effect"),
        toleration_seconds=integer(t.get("tolerationSeconds"), f"{path}.tolerationSeconds",
                                   0, 2**62))


def parse_scheduling(raw: Any) -> Scheduling:
    """`spec.scheduling` -> Scheduling, or SpecError naming the field."""
    s = obj(raw, "spec.scheduling")
    tolerations = tuple(_toleration(t, f"spec.scheduling.tolerations[{i}]")
                        for i, t in enumerate(array(s.get("tolerations"),
                                                    "spec.scheduling.tolerations")))
    spreads = tuple(obj(c, f"spec.scheduling.topologySpreadConstraints[{i}]")
                    for i, c in enumerate(array(s.get("topologySpreadConstraints"),
                                                "spec.scheduling.topologySpreadConstraints")))
    for i, c in enumerate(spreads):
        check(c, "TopologySpreadConstraint", f"spec.scheduling.topologySpreadConstraints[{i}]")
    affinity = dict(obj(s.get("affinity"), "spec.scheduling.affinity"))
    check(affinity, "Affinity", "spec.scheduling.affinity")
    allow = boolean(s.get("allowGPUNodes", False), "spec.scheduling.allowGPUNodes")
    return Scheduling(
        node_selector=str_map(s.get("nodeSelector"), "spec.scheduling.nodeSelector"),
        tolerations=tolerations,
        affinity=affinity,
        priority_class_name=string(s.get("priorityClassName"),
                                   "spec.scheduling.priorityClassName"),
        topology_spread_constraints=spreads,
        allow_gpu_nodes=allow)
