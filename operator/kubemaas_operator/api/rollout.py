"""PURE: `spec.rollout` — how a new revision replaces the old one on scarce GPUs, and canary
steps (the operator's rollout.py decides per update)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .fields import SpecError, array, boolean, integer, json_name, obj
from .scaling import Autoscaling


@dataclass(frozen=True)
class CanaryStep:
    weight: int = field(metadata=json_name("weight"))
    pause_seconds: int | None = field(metadata=json_name("pauseSeconds"), default=None)


@dataclass(frozen=True)
class CanarySpec:
    steps: tuple[CanaryStep, ...] = field(metadata=json_name("steps"))
    paused: bool = field(metadata=json_name("paused"), default=False)
    promote: int | None = field(metadata=json_name("promote"), default=None)
    abort: bool = field(metadata=json_name("abort"), default=False)


@dataclass(frozen=True)
class RolloutSpec:
    """How a new revision replaces the old one on scarce GPUs (rollout.py decides per update)."""

    max_surge: int = field(metadata=json_name("maxSurge"), default=1)
    max_unavailable: int = field(metadata=json_name("maxUnavailable"), default=1)
    allow_downtime: bool = field(metadata=json_name("allowDowntime"), default=False)
    progress_deadline_seconds: int = field(metadata=json_name("progressDeadlineSeconds"),
                                           default=600)
    # How long a new replica must stay Ready before it counts as available (the Deployment's
    # minReadySeconds): the serving revision's replicas go only for replicas that settled.
    settle_seconds: int = field(metadata=json_name("settleSeconds"), default=5)
    canary: CanarySpec | None = field(metadata=json_name("canary"), default=None)


def _steps(raw: Any) -> tuple[CanaryStep, ...]:
    steps = []
    last = 0
    for i, st in enumerate(array(raw, "spec.rollout.canary.steps")):
        path = f"spec.rollout.canary.steps[{i}]"
        st_obj = obj(st, path)
        weight = integer(st_obj.get("weight"), f"{path}.weight", 1, 100)
        if weight is None:
            raise SpecError(f"{path}.weight", "is required")
        if weight <= last:
            raise SpecError(f"{path}.weight", f"weights must increase: {weight} after {last}")
        last = weight
        steps.append(CanaryStep(weight=weight, pause_seconds=integer(
            st_obj.get("pauseSeconds"), f"{path}.pauseSeconds", 0, 86400)))
    if not steps:
        raise SpecError("spec.rollout.canary.steps", "needs at least one step")
    return tuple(steps)


def parse_canary(raw: Any, autoscaling: Autoscaling | None) -> CanarySpec | None:
    """`spec.rollout.canary` -> CanarySpec (None when absent); it excludes `spec.autoscaling`."""
    if raw is None:
        return None
    c = obj(raw, "spec.rollout.canary")
    steps = _steps(c.get("steps"))
    paused = boolean(c.get("paused", False), "spec.rollout.canary.paused")
    abort = boolean(c.get("abort", False), "spec.rollout.canary.abort")
    if autoscaling is not None:
        raise SpecError("spec.rollout.canary", "does not work with spec.autoscaling (the "
                        "autoscaler scales only the stable Deployment)")
    return CanarySpec(steps=steps, paused=paused, abort=abort,
                      promote=integer(c.get("promote"), "spec.rollout.canary.promote", 1,
                                      2**31 - 1))


def parse_rollout(raw: Any, autoscaling: Autoscaling | None) -> RolloutSpec:
    """`spec.rollout` -> RolloutSpec, or SpecError naming the field."""
    ro = obj(raw, "spec.rollout")
    surge = integer(ro.get("maxSurge"), "spec.rollout.maxSurge", 0, 1000)
    unavailable = integer(ro.get("maxUnavailable"), "spec.rollout.maxUnavailable", 0, 1000)
    surge = 1 if surge is None else surge
    unavailable = 1 if unavailable is None else unavailable
    if surge == 0 and unavailable == 0:
        raise SpecError("spec.rollout", "maxSurge and maxUnavailable cannot both be 0: a rollout "
                        "could neither add nor replace a replica")
    downtime = boolean(ro.get("allowDowntime", False), "spec.rollout.allowDowntime")
    deadline = integer(ro.get("progressDeadlineSeconds"), "spec.rollout.progressDeadlineSeconds",
                       5, 86400)
    deadline = 600 if deadline is None else deadline
    settle = integer(ro.get("settleSeconds"), "spec.rollout.settleSeconds", 0, 300)
    settle = 5 if settle is None else settle
    if settle > deadline:
        raise SpecError("spec.rollout.settleSeconds", f"({settle}) must not exceed "
                        f"spec.rollout.progressDeadlineSeconds ({deadline}): a revision could "
                        "never settle before it is rolled back")
    return RolloutSpec(max_surge=surge, max_unavailable=unavailable, allow_downtime=downtime,
                       progress_deadline_seconds=deadline, settle_seconds=settle,
                       canary=parse_canary(ro.get("canary"), autoscaling))
