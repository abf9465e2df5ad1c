"""The endpoint picker's pods, for the model's NetworkPolicy.

An InferencePool's endpoint picker (the Service that spec.serving.inferencePool.endpointPicker,
or the operator's default, names in the model's namespace) reads each pod's load from
/metrics on the serving port. The model's NetworkPolicy is closed by default, so it refused
the picker unless the user listed the picker's pods in networkPolicy.from by hand: a pool
whose picker saw no pod's load. The operator reads the picker Service's selector at each
reconcile and admits the pods it selects (render/security.py); a Service that is missing,
selects nothing or may not be read admits nobody more (the user's `from` still does)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .api import EndpointPicker, ModelDeploymentSpec, SpecError, parse_spec
from .k8s import ApiError, AsyncCluster
from .render.inference import endpoint_picker, wants_pool
from .writes import Retry


async def picker_pods(cluster: AsyncCluster, spec: ModelDeploymentSpec, namespace: str,
                      pools_served: bool,
                      default: EndpointPicker | None) -> Mapping[str, str] | None:
    """The labels of the picker's pods (its Service's selector); None when the model has no
    policy, no pool or no picker, or the Service selects nothing."""
    if not spec.serving.network_policy.enabled or not wants_pool(spec, pools_served):
        return None
    picker = endpoint_picker(spec, default)
    if picker is None:
        return None
    try:
        service = await cluster.get_optional("v1", "Service", namespace, picker.name)
    except ApiError as err:  # a blip: keep the policy as it is rather than drop the picker
        raise Retry(f"cannot read the endpoint picker's Service {namespace}/{picker.name}: "
                    f"{err}", 10.0) from err
    selector = ((service or {}).get("spec") or {}).get("selector")
    if not isinstance(selector, Mapping) or not selector:
        return None
    return {str(k): str(v) for k, v in selector.items()}


async def picker_pods_of(cluster: AsyncCluster, raw_spec: Mapping[str, Any], namespace: str,
                         pools_served: bool,
                         default: EndpointPicker | None) -> Mapping[str, str] | None:
    """picker_pods for a spec as the API server holds it; None for one that does not parse
    (the reconcile says what is wrong with it). Parsed only where pools are served: this runs
    at every reconcile of every model."""
    if not pools_served:
        return None
    try:
        spec = parse_spec(raw_spec)
    except SpecError:
        return None
    return await picker_pods(cluster, spec, namespace, pools_served, default)
