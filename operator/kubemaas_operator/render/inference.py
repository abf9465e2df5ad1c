"""PURE: a language model's children for the Gateway API Inference Extension.

When the API server serves inferencepools.inference.networking.k8s.io/v1, a language model
(`api.is_llm`) gets an InferencePool NAME: its selector is the model's Service selector (every
runtime pod, stable and canary), its target port the serving port, its endpointPickerRef the
spec's `serving.inferencePool.endpointPicker` or the operator's default. With a Gateway the
HTTPRoute NAME sends the OpenAI API (PathPrefix /v1) to the pool instead of splitting between
the per-track Services: the endpoint picker chooses a pod per request, so a canary's share
follows its ready replicas, as behind the plain Service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..api import EndpointPicker, GatewayRef, ModelDeploymentSpec, is_llm
from .base import (
    RenderContext,
    builtin_template,
    common_labels,
    service_selector,
)
from .base import render_template as _render
from .base import stamp as _stamp
from .tracks import render_gateway

INFERENCEPOOL_API_VERSION = "inference.networking.k8s.io/v1"
POOL_PATH = "/v1"  # the OpenAI API: /v1/chat/completions, /v1/completions, /v1/models


@dataclass(frozen=True)
class InferencePoolParams:
    name: str
    namespace: str
    labels: Mapping[str, str]
    selector: Mapping[str, str]
    port: int
    picker_name: str | None
    picker_port: int | None
    picker_failure_mode: str


@dataclass(frozen=True)
class PoolRouteParams:
    name: str
    namespace: str
    labels: Mapping[str, str]
    gateway_name: str
    gateway_namespace: str
    hostnames: list[str]
    path: str
    pool: str


def wants_pool(spec: ModelDeploymentSpec, served: bool) -> bool:
    """Does this model get an InferencePool (a language model, and the CRD is served)?"""
    return served and is_llm(spec.model.format)


def endpoint_picker(spec: ModelDeploymentSpec,
                    default: EndpointPicker | None) -> EndpointPicker | None:
    """The picker the pool names: the spec's, else the operator's default, else none."""
    pool = spec.serving.inference_pool
    if pool is not None and pool.endpoint_picker is not None:
        return pool.endpoint_picker
    return default


def render_inference_pool(spec: ModelDeploymentSpec, ctx: RenderContext,
                          picker: EndpointPicker | None) -> dict[str, Any]:
    labels = common_labels(ctx.name)
    pool = _render(builtin_template("inferencepool.yaml.j2"), "InferencePool template",
                   InferencePoolParams(
                       name=ctx.name, namespace=ctx.namespace, labels=labels,
                       selector=service_selector(ctx.name), port=spec.serving.port,
                       picker_name=picker.name if picker else None,
                       picker_port=picker.port if picker else None,
                       picker_failure_mode=picker.failure_mode if picker else "FailClose"))
    return _stamp(pool, ctx, labels)


def render_pool_route(ctx: RenderContext, gateway: GatewayRef) -> dict[str, Any]:
    labels = common_labels(ctx.name)
    route = _render(builtin_template("httproute-pool.yaml.j2"), "HTTPRoute template",
                    PoolRouteParams(
                        name=ctx.name, namespace=ctx.namespace, labels=labels,
                        gateway_name=gateway.name,
                        gateway_namespace=gateway.namespace or ctx.namespace,
                        hostnames=list(gateway.hostnames), path=POOL_PATH, pool=ctx.name))
    return _stamp(route, ctx, labels)


def route_manifests(spec: ModelDeploymentSpec, ctx: RenderContext, gateway: GatewayRef | None,
                    pool: bool, default_picker: EndpointPicker | None,
                    canary_weight: int) -> list[dict[str, Any]]:
    """The model's routing children besides its Service: with a pool, the InferencePool (and
    with a Gateway its HTTPRoute to the pool); else with a Gateway the weighted HTTPRoute split
    (render_gateway); else none."""
    if pool:
        out = [render_inference_pool(spec, ctx, endpoint_picker(spec, default_picker))]
        if gateway is not None:
            out.append(render_pool_route(ctx, gateway))
        return out
    if gateway is not None:
        return render_gateway(spec, ctx, gateway, canary_weight)
    return []
