"""kopf indexes of every kind the operator watches: registered with kopf when handlers.py imports
this module; handlers.py builds each model's Snapshot from them.

Indexes (kept in memory by kopf from its watch streams; a reconcile lists nothing):
  md_index          (namespace, name) -> the ModelDeployment (compact JSON, like the children)
  blocked_index     (namespace, name) -> True while a model is not Scheduled (waits for capacity)
  quota_wait_index  namespace -> name of each model whose rollout waits on a ResourceQuota there
                    (status.rollout reason QuotaExceeded, strategy Wait or Canary): a quota's
                    change wakes those, and only those
  deployment_index, service_index, hpa_index, pdb_index
                    (namespace, instance) -> the child kubemaas applied
  httproute_index   (namespace, instance) -> the HTTPRoute kubemaas applied (Gateway API; kopf
                    watches httproutes only while the API server serves them)
  inferencepool_index
                    (namespace, instance) -> the InferencePool kubemaas applied (Gateway API
                    Inference Extension; watched only while served, like httproutes)
  pod_index         ("pod", namespace, instance) -> PodInfo of a runtime pod
                    ("gpu", node) -> (owner key or None, {resource: count}) of every bound pod
                    that requests nvidia.com/* resources
                    ("pending",) -> (owner key or None, PendingDemand) of every unscheduled pod
                    that requests nvidia.com/* resources (demand the free GPUs serve first)
  owed_index        ("owed",) -> (owner key, track, spec.replicas, PendingDemand of its pod
                    template) of every GPU Deployment kubemaas applied: the pods it owes (asked
                    for, not yet created) are demand too
  node_index        "nodes" -> NodeInfo of every node with nvidia.com/* allocatable
  namespace_index   name -> True for namespaces being deleted (the operator stands down there)
  quota_index       namespace -> QuotaInfo of each ResourceQuota there (hard and used, read
                    ahead by a rollout: quota_room.py); an operator that may not list
                    resourcequotas sees none (kopf_watch.tolerant) and waits for a refusal
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import kopf

from .observed import pod_info
from .quota_room import quota_info, waits_on_quota
from .render import INSTANCE, MANAGED_BY, MANAGER, NAME, canary_name
from .scheduling import NodeInfo, pending_demand

MD = ("serving.kubemaas.io", "v1alpha1", "modeldeployments")
CHILDREN = {
    "Deployment": ("apps", "v1", "deployments"),
    "Service": ("", "v1", "services"),
    "HorizontalPodAutoscaler": ("autoscaling", "v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("policy", "v1", "poddisruptionbudgets"),
    "HTTPRoute": ("gateway.networking.k8s.io", "v1", "httproutes"),
    "NetworkPolicy": ("networking.k8s.io", "v1", "networkpolicies"),
    "Certificate": ("cert-manager.io", "v1", "certificates"),
    "InferencePool": ("inference.networking.k8s.io", "v1", "inferencepools"),
    "ScaledObject": ("keda.sh", "v1alpha1", "scaledobjects"),
    "InterceptorRoute": ("http.keda.sh", "v1beta1", "interceptorroutes"),
}
OURS = {MANAGED_BY: MANAGER}
# The index of each kind of child: its id, which is also the keyword kopf passes it to handlers as
INDEX_OF = {"Deployment": "deployment_index", "Service": "service_index",
            "HorizontalPodAutoscaler": "hpa_index", "PodDisruptionBudget": "pdb_index",
            "HTTPRoute": "httproute_index", "NetworkPolicy": "networkpolicy_index",
            "Certificate": "certificate_index", "InferencePool": "inferencepool_index",
            "ScaledObject": "scaledobject_index", "InterceptorRoute": "interceptorroute_index"}


def _plain(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def _pack(body: Mapping[str, Any]) -> str:
    """What an index keeps of an object: compact JSON without managedFields and with only the
    operator's own annotations (a string costs a tenth of the same dicts in memory)."""
    out: dict[str, Any] = _plain(body)
    meta = out.get("metadata", {})
    meta.pop("managedFields", None)
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()
                   if k.startswith("serving.kubemaas.io/")}
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    return json.dumps(out, separators=(",", ":"))


def unpack(packed: str | None) -> dict[str, Any] | None:
    return None if packed is None else dict(json.loads(packed))


def first(store: Any) -> Any:
    return next(iter(store), None) if store else None


def named(store: Any, name: str) -> dict[str, Any] | None:
    """The object called `name` among the packed objects an index keeps for one model. The
    index finds children by their labels, and objects others make from ours carry them too:
    KEDA copies the ScaledObject's labels onto its HPA keda-hpa-NAME, which taken for the
    model's HorizontalPodAutoscaler NAME was 'deleted' on every pass."""
    for packed in store or ():
        obj = unpack(packed)
        if obj is not None and (obj.get("metadata") or {}).get("name") == name:
            return obj
    return None


# What an index function returns for an object that belongs in no entry. Not None: kopf keeps an
# object's earlier entries when its index function returns None (kopf/_core/engines/indexing.py
# stores only results that are not None), so a child whose instance label was removed by hand, a
# model no longer blocked or a node that lost its GPUs stayed indexed as it was. An empty mapping
# replaces them with nothing.
NOTHING: dict[Any, Any] = {}

CACHE_APP = "kubemaas-model-cache"  # modelcache/render.labels: a ModelCache's own pods


def child_key(namespace: str | None, labels: Mapping[str, str]) -> tuple[str, str] | None:
    """The model an object of ours belongs to. A ModelCache's pods carry the same instance and
    managed-by labels (instance: the cache's name), so a model named like a cache of its
    namespace counted the cache's download pods as its own replicas: they are left out."""
    instance = labels.get(INSTANCE)
    if not namespace or not instance or labels.get(MANAGED_BY) != MANAGER:
        return None
    if labels.get(NAME) == CACHE_APP:
        return None
    return (namespace, instance)


@kopf.index(*MD)
async def md_index(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
    return {(namespace or "", name): _pack(body)}


@kopf.index(*MD)
async def blocked_index(namespace: str | None, name: str, status: Mapping[str, Any],
                        **_: Any) -> Any:
    """Models waiting for capacity: worth a look whenever GPUs may have been freed."""
    for c in status.get("conditions") or []:
        if c.get("type") == "Scheduled" and c.get("status") == "False":
            return {(namespace or "", name): True}
    return NOTHING


async def _child_index(body: kopf.Body, namespace: str | None, labels: Mapping[str, str],
                       **_: Any) -> Any:
    key = child_key(namespace, labels)
    return {key: _pack(body)} if key else NOTHING


deployment_index = kopf.index(*CHILDREN["Deployment"], labels=OURS, id="deployment_index")(
    _child_index)
service_index = kopf.index(*CHILDREN["Service"], labels=OURS, id="service_index")(_child_index)
hpa_index = kopf.index(*CHILDREN["HorizontalPodAutoscaler"], labels=OURS, id="hpa_index")(
    _child_index)
pdb_index = kopf.index(*CHILDREN["PodDisruptionBudget"], labels=OURS, id="pdb_index")(
    _child_index)
httproute_index = kopf.index(*CHILDREN["HTTPRoute"], labels=OURS, id="httproute_index")(
    _child_index)
networkpolicy_index = kopf.index(*CHILDREN["NetworkPolicy"], labels=OURS,
                                 id="networkpolicy_index")(_child_index)
certificate_index = kopf.index(*CHILDREN["Certificate"], labels=OURS, id="certificate_index")(
    _child_index)
inferencepool_index = kopf.index(*CHILDREN["InferencePool"], labels=OURS,
                                 id="inferencepool_index")(_child_index)
scaledobject_index = kopf.index(*CHILDREN["ScaledObject"], labels=OURS,
                                id="scaledobject_index")(_child_index)
interceptorroute_index = kopf.index(*CHILDREN["InterceptorRoute"], labels=OURS,
                                    id="interceptorroute_index")(_child_index)


def gpu_requests(spec: Mapping[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for c in spec.get("containers") or []:
        res = c.get("resources") or {}
        amounts = {**(res.get("limits") or {}), **(res.get("requests") or {})}
        for resource, value in amounts.items():
            if resource.startswith("nvidia.com/"):
                try:
                    out[resource] = out.get(resource, 0) + int(value)
                except (TypeError, ValueError):
                    continue
    return out


@kopf.index(*CHILDREN["Deployment"], labels=OURS, id="owed_index")
async def owed_index(namespace: str | None, name: str, labels: Mapping[str, str],
                     spec: Mapping[str, Any], meta: Mapping[str, Any], **_: Any) -> Any:
    key = child_key(namespace, labels)
    pod_spec = (spec.get("template") or {}).get("spec") or {}
    requests = gpu_requests(pod_spec)
    if key is None or not requests or meta.get("deletionTimestamp"):
        return NOTHING  # a Deployment being deleted owes nothing
    track = "canary" if name == canary_name(key[1]) else "main"
    replicas = spec.get("replicas")
    return {("owed",): (key, track, 1 if replicas is None else int(replicas),
                        pending_demand(f"{namespace}/{name}", pod_spec, requests))}


@kopf.index("", "v1", "pods")
async def pod_index(body: kopf.Body, namespace: str | None, labels: Mapping[str, str],
                    spec: Mapping[str, Any], status: Mapping[str, Any], **_: Any) -> Any:
    out: dict[Any, Any] = {}
    key = child_key(namespace, labels)
    if key is not None:
        out[("pod", *key)] = pod_info(body)
    node = spec.get("nodeName")
    if node and status.get("phase") not in ("Succeeded", "Failed"):
        requests = gpu_requests(spec)
        if requests:
            out[("gpu", node)] = (key, requests)
    elif (not node and status.get("phase", "Pending") == "Pending"
          and not body.get("metadata", {}).get("deletionTimestamp")):
        requests = gpu_requests(spec)
        if requests:
            out[("pending",)] = (key, pending_demand(
                f"{namespace}/{body.get('metadata', {}).get('name', '')}", spec, requests))
    return out


@kopf.index("", "v1", "nodes")
async def node_index(name: str, labels: Mapping[str, str], spec: Mapping[str, Any],
                     status: Mapping[str, Any], **_: Any) -> Any:
    allocatable: dict[str, int] = {}
    for resource, value in (status.get("allocatable") or {}).items():
        if resource.startswith("nvidia.com/"):
            try:
                allocatable[resource] = int(value)
            except (TypeError, ValueError):
                continue
    if not allocatable:
        return NOTHING
    return {"nodes": NodeInfo(name=name, labels=dict(labels),
                              taints=tuple(_plain(t) for t in spec.get("taints") or []),
                              allocatable=allocatable,
                              unschedulable=bool(spec.get("unschedulable")))}


@kopf.index("", "v1", "namespaces")
async def namespace_index(name: str, status: Mapping[str, Any], **_: Any) -> Any:
    return {name: True} if status.get("phase") == "Terminating" else NOTHING



@kopf.index(*MD)
async def quota_wait_index(namespace: str | None, name: str, status: Mapping[str, Any],
                           **_: Any) -> Any:
    """Models whose rollout waits for room in a ResourceQuota of their namespace."""
    rollout = status.get("rollout") or {}
    if namespace and waits_on_quota(rollout):
        return {namespace: name}
    return NOTHING


@kopf.index("", "v1", "resourcequotas")
async def quota_index(name: str, namespace: str | None, spec: Mapping[str, Any],
                      status: Mapping[str, Any], **_: Any) -> Any:
    return {namespace: quota_info(name, spec, status)} if namespace else NOTHING
