"""One reconcile pass's inputs: what the indexes know about a ModelDeployment (`Snapshot`,
built by handlers.py) and the pass that reads it (`Pass`: the snapshot, the operator's
settings, the API client, the operator's memory, the time and the model's name), with the
render context the pass gives the templates."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .api import ModelShape
from .config import Settings
from .k8s import AsyncCluster
from .memory import Memory
from .modelcache.implicit import Plan
from .modelcache.mount import CacheMount
from .observed import PodInfo
from .quota_room import QuotaInfo
from .render import RenderContext
from .scheduling import NodeInfo, PendingDemand
from .sizing import gpu_types


@dataclass(frozen=True)
class Snapshot:
    """What the indexes know about one ModelDeployment and its surroundings."""

    body: Mapping[str, Any]  # the ModelDeployment: metadata, spec, status
    children: Mapping[str, Mapping[str, Any]]  # kind -> the observed child object
    pods: Sequence[PodInfo] = ()
    nodes: Sequence[NodeInfo] = ()
    used: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # others' pods
    # the model's own bound pods' GPU requests per node: a surge counts them held
    # (rollout_room.surge_room); the capacity check counts them free
    own: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    # GPU requests of unscheduled pods (Pending, no node yet) of other models and workloads, and
    # of the pods other models' Deployments owe (not created yet): demand that the free GPUs of
    # matching nodes serve before a surge (scheduling.PendingDemand).
    pending: Sequence[PendingDemand] = ()
    # the namespace's ResourceQuotas (hard and used): a rollout reads them ahead (quota_room.py)
    quotas: Sequence[QuotaInfo] = ()
    gateway_api: bool = False  # the API server serves gateway.networking.k8s.io/v1 HTTPRoute
    cert_manager: bool = False  # the API server serves cert-manager.io/v1 Certificate
    # the API server serves inference.networking.k8s.io/v1 InferencePool
    inference_pools: bool = False
    cache: CacheMount | None = None  # the ModelCache spec.model.cache names (modelcache/)
    keda: bool = False  # the API server serves keda.sh/v1alpha1 ScaledObject
    http_addon: bool = False  # the API server serves http.keda.sh/v1beta1 InterceptorRoute
    # spec.model.autoCache: the cache to create/adopt/release (body's spec already names it)
    implicit: Plan | None = None


def _render_settings(settings: Settings, snap: Snapshot,
                     record: ModelShape | None) -> dict[str, Any]:
    """The RenderContext fields the NetworkPolicy takes from the operator's settings, those of
    language models (the vLLM image, the GPU node types, the model cache's shape) and of
    autoscaling (whether KEDA is served, the Prometheus its triggers read; whether KEDA's HTTP
    add-on is, and where its scaler and interceptor listen), and of InferencePools (whether
    the CRD is served, the default endpoint picker)."""
    default = settings.default_gateway()
    return {"default_gateway_namespace": default[0] if default else None,
            "monitoring_namespace": settings.monitoring_namespace,
            "vllm_image": settings.vllm_image, "gpu_types": gpu_types(snap.nodes),
            "model_record": record, "keda": snap.keda, "prometheus": settings.prometheus,
            "http_addon": snap.http_addon, "http_scaler": settings.http_scaler,
            "http_interceptor": settings.http_interceptor,
            "inference_pools": snap.inference_pools,
            "default_endpoint_picker": settings.default_endpoint_picker()}


@dataclass(frozen=True)
class Pass:
    """One reconcile pass's inputs."""

    snap: Snapshot
    settings: Settings
    cluster: AsyncCluster
    memory: Memory
    now: datetime
    name: str
    namespace: str
    uid: str
    picker_pods: Mapping[str, str] | None = None  # picker_peers.py

    def context(self, template_name: str, source: str | None,
                record: ModelShape | None) -> RenderContext:
        return RenderContext(name=self.name, namespace=self.namespace, uid=self.uid,
                             template_name=template_name, template_source=source,
                             cache=self.snap.cache, picker_pods=self.picker_pods,
                             **_render_settings(self.settings, self.snap, record))
