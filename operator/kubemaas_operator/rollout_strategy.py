"""PURE: a rollout's Deployment strategy: surge onto free GPUs, replace in place, or wait
(rollout.py decides the rest of the rollout).

Surge when the free GPUs of matching nodes hold extra replicas (maxUnavailable 0: never below the
desired ready count); otherwise replace within spec.rollout.maxUnavailable (never more pods than
GPUs); for a single replica without a spare GPU wait unless downtime is allowed; at zero replicas
replace at once (nothing serves). A rollout keeps the strategy it started with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .api import ModelDeploymentSpec
from .observed import PodInfo
from .status import plural


@dataclass(frozen=True)
class Strategy:
    name: Literal["Surge", "Replace", "Wait"]
    max_surge: int
    max_unavailable: int
    reason: str
    message: str


def choose_strategy(spec: ModelDeploymentSpec, desired: int, spare: int) -> Strategy:
    """Surge if the free GPUs of matching nodes hold extra replicas, else replace, else wait.

    `spare`: how many replicas beyond `desired` fit in the free capacity right now (this model's
    own pods counted as free: they are the ones being replaced).
    """
    ro = spec.rollout
    if desired <= 0:  # nothing runs (replicas 0, or KEDA took it to zero): nothing to keep serving
        return Strategy("Replace", 0, 1, "NoReplicas", "replace: no replica runs (0 desired): "
                        "the new template is applied at once; its pods start when the model "
                        "scales up")
    unit = (f"{spec.gpu.count} {spec.gpu.resource}" if spec.gpu is not None else "a replica")
    if ro.max_surge > 0 and spare > 0:
        surge = min(ro.max_surge, spare)
        why = (f"free GPUs on matching nodes hold {plural(spare, 'more replica')} of "
               f"{unit}" if spec.gpu is not None else "a CPU model: the scheduler places extras")
        return Strategy("Surge", surge, 0, "FreeGPUs",
                        f"surge: {plural(surge, 'extra replica')} at a time beside the "
                        f"{desired} serving ({why}); ready replicas never drop below {desired}")
    why = ("no free GPU on matching nodes for an extra replica of " + unit
           if ro.max_surge > 0 else "rollout.maxSurge is 0")
    limit = desired if ro.allow_downtime else desired - 1
    unavailable = max(0, min(ro.max_unavailable, limit))
    if unavailable >= 1:
        floor = desired - unavailable
        return Strategy("Replace", 0, unavailable, "NoFreeGPU",
                        f"replace: {why}; replacing {plural(unavailable, 'replica')} at a time "
                        f"in place (at least {floor} of {desired} stay ready, never more pods "
                        "than GPUs)")
    if desired <= 1 and not ro.allow_downtime:
        hint = ("set spec.rollout.allowDowntime: true to replace the only replica (downtime), "
                "or free a GPU for a surge")
    else:
        hint = "raise spec.rollout.maxUnavailable, or free a GPU for a surge"
    blocker = ("replacing the only replica would leave none serving" if desired <= 1
               else "rollout.maxUnavailable is 0")
    return Strategy("Wait", 0, 0, "NoFreeGPU", f"waiting: {why}, and {blocker}; {hint}")


def sticky_strategy(spec: ModelDeploymentSpec, desired: int, spare: int,
                    pods: Sequence[PodInfo], chosen: Any) -> Strategy:
    """The strategy for this reconcile; a rollout keeps the one it started with.

    Free capacity moves while models roll (a replacing model's old pod gives its GPU back for a
    moment): re-deciding at every look would flip Deployments between surge and replace. A
    replacement stays a replacement; a surge stays a surge unless one of the model's pods cannot
    be scheduled (someone took the free GPUs), and then it becomes a replacement.
    """
    fresh = choose_strategy(spec, desired, spare)
    if chosen == "Replace" and fresh.name == "Surge":
        return choose_strategy(spec, desired, 0)
    if chosen == "Surge" and fresh.name != "Surge" and spec.rollout.max_surge > 0 and not any(
            p.unschedulable_message for p in pods if not p.terminating):
        return choose_strategy(spec, desired, 1)
    return fresh


def rollout_reason(strategy: Strategy) -> str:
    """The RolloutComplete reason while the Deployment changes template."""
    return "SurgeRollout" if strategy.name == "Surge" else "ReplaceRollout"
