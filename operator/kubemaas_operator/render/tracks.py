"""PURE: the tracks of a canary: the canary Deployment beside the main one, the rolling-update
strategy rollout.py chose, and the Gateway API split (a Service per track and an HTTPRoute whose
weights rollout.py computes)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..api import GatewayRef, ModelDeploymentSpec
from .base import (
    INSTANCE,
    SPEC_HASH,
    TRACK,
    TRACK_SERVICE,
    RenderContext,
    RenderError,
    ServiceParams,
    app_protocol,
    builtin_template,
    common_labels,
    digest,
    pod_selector,
    service_selector,
)
from .base import render_template as _render
from .base import stamp as _stamp


@dataclass(frozen=True)
class HTTPRouteParams:
    name: str
    namespace: str
    labels: Mapping[str, str]
    gateway_name: str
    gateway_namespace: str
    hostnames: list[str]
    path: str
    port: int
    stable_service: str
    canary_service: str
    stable_weight: int
    canary_weight: int


def canary_name(name: str) -> str:
    return f"{name}-canary"


def canary_selector(name: str) -> dict[str, str]:
    return {**service_selector(name), TRACK: "canary"}


def with_strategy(deployment: Mapping[str, Any], max_surge: int, max_unavailable: int,
                  replicas: int | None = None, canary: bool = False) -> dict[str, Any]:
    """The Deployment with the rolling-update strategy rollout.py chose (and, during a canary,
    its replica count), its spec hash redone. `canary` turns it into the canary Deployment:
    NAME-canary, track canary, behind the same Service."""
    out = copy.deepcopy(dict(deployment))
    out["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {
        "maxSurge": max_surge, "maxUnavailable": max_unavailable}}
    if replicas is not None:
        out["spec"]["replicas"] = replicas
    meta = out["metadata"]
    if canary:
        instance = meta["labels"][INSTANCE]
        meta["name"] = canary_name(instance)
        meta["labels"] = {**meta["labels"], TRACK: "canary"}
        out["spec"]["selector"] = {"matchLabels": canary_selector(instance)}
        pod_meta = out["spec"]["template"]["metadata"]
        pod_meta["labels"] = {**pod_meta["labels"], TRACK: "canary"}
    annotations = dict(meta.get("annotations") or {})
    annotations.pop(SPEC_HASH, None)
    meta["annotations"] = annotations
    if not annotations:
        meta.pop("annotations")
    out["metadata"].setdefault("annotations", {})[SPEC_HASH] = digest(out)
    return out


def replicas_manifest(name: str, namespace: str, replicas: int) -> dict[str, Any]:
    """The Deployment `name` with nothing but spec.replicas: what the autoscaling floor's own
    field manager applies (floor.py)."""
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas}}


HTTPROUTE_API_VERSION = "gateway.networking.k8s.io/v1"
STABLE_TRACK, CANARY_TRACK = "stable", "canary"


def track_service_name(name: str, track: str) -> str:
    """NAME-stable / NAME-canary, shortened with a hash to stay a 63-character DNS label."""
    full = f"{name}-{track}"
    if len(full) <= 63:
        return full
    keep = 63 - len(track) - 1 - 7
    return f"{name[:keep].rstrip('-')}-{digest(name, 6)}-{track}"


def track_selector(name: str, track: str) -> dict[str, str]:
    """The pods of one Deployment: the stable one (track main) or the canary."""
    return pod_selector(name) if track == STABLE_TRACK else canary_selector(name)


def route_path(spec: ModelDeploymentSpec, name: str) -> str:
    """What the HTTPRoute matches: every path on the user's hostnames, else only this model's
    Open Inference Protocol paths (/v2/models/MODEL_NAME...) so models share a hostname."""
    if spec.serving.gateway is not None and spec.serving.gateway.hostnames:
        return "/"
    return f"/v2/models/{spec.model.name or name}"


def render_gateway(spec: ModelDeploymentSpec, ctx: RenderContext, gateway: GatewayRef,
                   canary_weight: int) -> list[dict[str, Any]]:
    """The traffic split by Gateway API weights: a Service per track (NAME-stable selects the
    stable Deployment's pods, NAME-canary the canary's) and an HTTPRoute NAME attached to
    `gateway` whose two backendRefs carry 100 - canary_weight and canary_weight."""
    if not 0 <= canary_weight <= 100:
        raise RenderError(f"canary weight {canary_weight} is not within 0..100")
    labels = common_labels(ctx.name)
    children = []
    for track in (STABLE_TRACK, CANARY_TRACK):
        svc_name = track_service_name(ctx.name, track)
        service = _render(builtin_template("service.yaml.j2"), "service template",
                          ServiceParams(name=svc_name, namespace=ctx.namespace,
                                        labels={**labels, TRACK_SERVICE: track},
                                        selector=track_selector(ctx.name, track),
                                        port=spec.serving.port,
                                        app_protocol=app_protocol(spec)))
        children.append(_stamp(service, ctx, {**labels, TRACK_SERVICE: track}, name=svc_name))
    route = _render(builtin_template("httproute.yaml.j2"), "HTTPRoute template",
                            HTTPRouteParams(
        name=ctx.name, namespace=ctx.namespace, labels=labels, gateway_name=gateway.name,
        gateway_namespace=gateway.namespace or ctx.namespace,
        hostnames=list(gateway.hostnames), path=route_path(spec, ctx.name),
        port=spec.serving.port, stable_service=track_service_name(ctx.name, STABLE_TRACK),
        canary_service=track_service_name(ctx.name, CANARY_TRACK),
        stable_weight=100 - canary_weight, canary_weight=canary_weight))
    children.append(_stamp(route, ctx, labels))
    return children
