"""The model's routing children (the Gateway API split's per-track Services and HTTPRoute, a
language model's InferencePool) and the Gateway its HTTPRoute attaches to."""

from __future__ import annotations

from .api import GatewayRef, ModelDeploymentSpec
from .config import Settings
from .render import CANARY_TRACK, HTTPROUTE_API_VERSION, STABLE_TRACK, track_service_name
from .render.inference import INFERENCEPOOL_API_VERSION


def gateway_children(name: str) -> list[tuple[str, str, str, str]]:
    """(snapshot key, apiVersion, kind, object name) of the routing children: the Gateway API
    split's and a language model's InferencePool (render/inference.py)."""
    return [("StableService", "v1", "Service", track_service_name(name, STABLE_TRACK)),
            ("CanaryService", "v1", "Service", track_service_name(name, CANARY_TRACK)),
            ("HTTPRoute", HTTPROUTE_API_VERSION, "HTTPRoute", name),
            ("InferencePool", INFERENCEPOOL_API_VERSION, "InferencePool", name)]


def gateway_for(spec: ModelDeploymentSpec, settings: Settings) -> GatewayRef | None:
    """The Gateway the model's HTTPRoute attaches to: its own, else the operator's default."""
    if spec.serving.gateway is not None:
        return spec.serving.gateway
    default = settings.default_gateway()
    if default is None:
        return None
    return GatewayRef(name=default[1], namespace=default[0])
