"""PURE: the autoscaling floor. A model with spec.autoscaling starts at minReplicas and never
runs below it, although the HorizontalPodAutoscaler, not the operator, owns the Deployment's
replicas.

The operator's server-side apply never carries `replicas` for such a model (it would fight the
autoscaler), so a new Deployment would start at the API server's default of 1 until the
autoscaler's first sync (15 s later). Instead, a second field manager (`FLOOR_MANAGER`) applies
only `spec.replicas`:

- after the Deployment is created (or minReplicas was raised): minReplicas, when the Deployment
  has fewer;
- before a Deployment that had `replicas` from the operator (spec.replicas, before autoscaling
  was switched on) is applied without them: its current count, clamped to min..max, so that the
  field keeps an owner and is not reset to 1 (Kubernetes' documented hand-over to an HPA).

A model its engine may hold at zero (KEDA, minReplicas 0) is created at 0 instead: the first apply
carries `replicas: 0` and the floor manager applies the same at once, so that it keeps the field
when the operator's later applies leave it out. A pod started only to be scaled away would hold a
GPU and fetch the weights for nothing; the model starts on its signal or its first request.

The autoscaler's own later changes take the field over from that manager (an update that changes
a value owns it), so the floor manager never writes again unless the count falls below the floor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .api import ModelDeploymentSpec
from .render.autoscaler import Choice

FLOOR_MANAGER = "kubemaas-autoscaling-floor"
# The operator's children that own the Deployment's replicas (KEDA's ScaledObject makes its own
# HPA, keda-hpa-NAME, which the operator does not watch).
AUTOSCALER_KINDS = ("HorizontalPodAutoscaler", "ScaledObject")


def autoscaler_observed(children: Mapping[str, Any]) -> bool:
    """Whether the model's HPA or ScaledObject exists (it, not the operator, owns replicas)."""
    return any(children.get(kind) is not None for kind in AUTOSCALER_KINDS)


def hand_over(spec: ModelDeploymentSpec, live_replicas: int | None,
              autoscaler_observed: bool) -> int | None:
    """Replicas to pin before the Deployment is applied without them, or None.

    Only while the model's HorizontalPodAutoscaler (or ScaledObject) has not been seen yet
    (autoscaling was just switched on): the operator may still own `replicas` from spec.replicas.
    """
    a = spec.autoscaling
    if a is None or autoscaler_observed or live_replicas is None:
        return None
    return min(a.max_replicas, max(a.min_replicas, live_replicas))


def raise_to_floor(spec: ModelDeploymentSpec, live_replicas: int | None,
                   engine: Choice | None = None) -> int | None:
    """minReplicas when the live Deployment asks for fewer (a new one starts at 1), else None.

    The engine's floor when it has one of its own: a fallback from KEDA never goes below 1 (an
    HPA does not scale a Deployment at 0, and nothing else would wake it)."""
    a = spec.autoscaling
    if a is None:
        return None
    floor = a.min_replicas if engine is None else engine.min_replicas
    have = 1 if live_replicas is None else live_replicas
    return floor if have < floor else None


def starts_at_zero(spec: ModelDeploymentSpec, engine: Choice | None) -> bool:
    """Whether a new Deployment is created at 0 replicas: its engine may hold it at zero."""
    return spec.autoscaling is not None and engine is not None and engine.min_replicas == 0
