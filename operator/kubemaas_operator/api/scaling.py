"""PURE: how many replicas — `spec.replicas`, or `spec.autoscaling` (a CPU-utilization HPA)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .fields import SpecError, integer, json_name, obj
from .runtime import Resources


@dataclass(frozen=True)
class Autoscaling:
    max_replicas: int = field(metadata=json_name("maxReplicas"))
    min_replicas: int = field(metadata=json_name("minReplicas"), default=1)
    target_cpu_utilization: int = field(metadata=json_name("targetCPUUtilization"), default=80)


def parse_replicas(raw: Any) -> int | None:
    return integer(raw, "spec.replicas", 0, 1000)


def parse_autoscaling(raw: Any, replicas: int | None, resources: Resources) -> Autoscaling | None:
    """`spec.autoscaling` -> Autoscaling (None when absent); it excludes `spec.replicas` and needs
    the CPU request it scales on."""
    if raw is None:
        return None
    if replicas is not None:
        raise SpecError("spec.autoscaling", "set either spec.replicas or spec.autoscaling, "
                        "not both")
    a = obj(raw, "spec.autoscaling")
    hi = integer(a.get("maxReplicas"), "spec.autoscaling.maxReplicas", 1, 1000)
    if hi is None:
        raise SpecError("spec.autoscaling.maxReplicas", "is required")
    lo = integer(a.get("minReplicas"), "spec.autoscaling.minReplicas", 1, 1000) or 1
    if lo > hi:
        raise SpecError("spec.autoscaling", f"minReplicas ({lo}) exceeds maxReplicas ({hi})")
    target = integer(a.get("targetCPUUtilization"), "spec.autoscaling.targetCPUUtilization",
                     1, 100) or 80
    if resources.cpu is None:
        raise SpecError("spec.autoscaling", "scales on CPU utilization, which needs a CPU "
                        "request: set spec.runtime.resources.cpu")
    return Autoscaling(max_replicas=hi, min_replicas=lo, target_cpu_utilization=target)
