"""kopf decorators only: index what matters, then parse -> reconcile -> translate the result.

The indexes (kept in memory by kopf from its watch streams; a reconcile lists nothing) are in
indexes.py, which this module imports (that registers them with kopf).

Every event of a ModelDeployment (the initial listing included, so a restart resumes), of a child
or of a runtime pod, a capacity change, a ResourceQuota's change (for the models whose rollout
waits on a quota) and the periodic resync enqueue the same reconcile on a per-model work queue
(level-triggered, like controller-runtime). kopf keeps no per-object handler state: no
annotations, no extra PATCH per change. A transient error requeues the model after the `Retry`
delay; a spec that cannot be served is reported as phase Failed and left alone until it changes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

import kopf

from . import discovery, kopf_watch, metrics, standby
from .config import Settings
from .indexes import (  # registers the indexes with kopf
    CHILDREN,
    INDEX_OF,
    MD,
    OURS,
    child_key,
    first,
    gpu_requests,
    named,
    unpack,
)
from .k8s import AsyncCluster, Cluster
from .memory import Memory
from .modelcache import handlers as modelcache  # registers the ModelCache handlers with kopf
from .observed import PodInfo
from .reconcile import Outcome, Snapshot, reconcile
from .render import MANAGED_BY, MANAGER, canary_name
from .routes import gateway_children
from .scheduling import NodeInfo, PendingDemand, owed_pods
from .writes import Retry

log = logging.getLogger("kubemaas.handlers")


@dataclass
class Runtime:
    settings: Settings
    cluster: AsyncCluster
    memory: Memory = field(default_factory=Memory)
    indexes: dict[str, Any] = field(default_factory=dict)
    gateway_api: bool = False  # API discovery: HTTPRoute (gateway.networking.k8s.io/v1) served
    cert_manager: bool = False  # API discovery: Certificate (cert-manager.io/v1) served
    inference_pools: bool = False  # API discovery: InferencePool (inference.networking.k8s.io/v1)
    keda: bool = False  # API discovery: ScaledObject (keda.sh/v1alpha1) served
    http_addon: bool = False  # API discovery: InterceptorRoute (http.keda.sh/v1beta1) served
    queue: Any = None
    metrics_server: Any = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    resyncs: int = 0  # periodic resync passes started (reported on /healthz)


_rt: Runtime | None = None


def _runtime() -> Runtime:
    if _rt is None:
        raise RuntimeError("the operator has not started")
    return _rt


def snapshot(key: tuple[str, str], body: Mapping[str, Any] | None = None) -> Snapshot | None:
    """What the indexes know about one ModelDeployment (None when it is gone)."""
    idx = _runtime().indexes
    if idx["namespace_index"].get(key[0]):
        return None  # the namespace is being deleted: let the garbage collector work
    if body is None:
        body = unpack(first(idx["md_index"].get(key)))
    if body is None:
        return None
    children = {kind: named(idx[index].get(key), key[1]) for kind, index in INDEX_OF.items()}
    # The model's Service NAME, and with the HTTPRoute split NAME-stable and NAME-canary.
    services = {(s.get("metadata") or {}).get("name"): s
                for s in (unpack(p) for p in idx["service_index"].get(key) or [])
                if s is not None}
    children["Service"] = services.get(key[1])
    for snap_key, _, kind, obj_name in gateway_children(key[1]):
        if kind == "Service":
            children[snap_key] = services.get(obj_name)
    # Two Deployments share the key during a canary: the stable one (NAME) and NAME-canary.
    deployments = [d for d in (unpack(p) for p in idx["deployment_index"].get(key) or [])
                   if d is not None]
    children["Deployment"] = next((d for d in deployments
                                   if (d.get("metadata") or {}).get("name") == key[1]), None)
    children["CanaryDeployment"] = next((d for d in deployments if (d.get("metadata") or {}).get(
        "name") == canary_name(key[1])), None)
    nodes: list[NodeInfo] = list(idx["node_index"].get("nodes") or [])
    used: dict[str, dict[str, int]] = {}
    own: dict[str, dict[str, int]] = {}
    for node in nodes:
        for owner, requests in idx["pod_index"].get(("gpu", node.name)) or []:
            per = (own if owner == key else used).setdefault(node.name, {})
            for resource, count in requests.items():
                per[resource] = per.get(resource, 0) + count
    pods: list[PodInfo] = list(idx["pod_index"].get(("pod", *key)) or [])
    pending: list[PendingDemand] = [demand for owner, demand in idx["pod_index"].get(
        ("pending",)) or [] if owner != key]
    for owner, track, replicas, demand in idx["owed_index"].get(("owed",)) or []:
        if owner == key or idx["namespace_index"].get(owner[0]):
            continue
        live = sum(1 for p in idx["pod_index"].get(("pod", *owner)) or []
                   if not p.terminating and p.track == track)
        if live < replicas:
            pending.extend(owed_pods(demand, replicas, live))
    body, implicit_plan, implicit_mount = modelcache.implicit_view(body)
    cache = ((body.get("spec") or {}).get("model") or {}).get("cache")
    return Snapshot(body=body, children={k: v for k, v in children.items() if v is not None},
                    pods=pods, nodes=nodes, used=used, own=own, pending=pending,
                    quotas=list(idx["quota_index"].get(key[0]) or []),
                    gateway_api=_runtime().gateway_api, cert_manager=_runtime().cert_manager,
                    inference_pools=_runtime().inference_pools, keda=_runtime().keda,
                    http_addon=_runtime().http_addon,
                    cache=implicit_mount or (modelcache.cache_mount(key[0], str(cache))
                                             if cache else None), implicit=implicit_plan)


def _log_outcome(key: tuple[str, str], outcome: Outcome) -> None:
    if outcome.applied or outcome.deleted:
        log.info("%s/%s: applied %s; deleted %s", *key, ", ".join(outcome.applied) or "nothing",
                 ", ".join(outcome.deleted) or "nothing")
    if outcome.status is not None and outcome.status.changed:
        st = outcome.status.status
        log.info("%s/%s: %s (%s)", *key, st.get("phase"), st.get("reason"))


async def _reconcile(key: tuple[str, str], body: Mapping[str, Any] | None = None) -> Outcome | None:
    rt = _runtime()
    snap = snapshot(key, body)
    if snap is None or (snap.body.get("metadata") or {}).get("deletionTimestamp"):
        return None
    started = time.monotonic()
    result = "error"
    try:
        outcome = await reconcile(snap, rt.settings, rt.cluster, rt.memory)
        phase = outcome.status.status.get("phase") if outcome.status is not None else None
        result = "failed" if outcome.failure is not None or phase == "Failed" else "ok"
    except Retry:
        result = "retry"
        raise
    finally:
        metrics.RECONCILE_DURATION.labels(result).observe(time.monotonic() - started)
    log.debug("%s/%s: reconciled in %.0f ms", *key, (time.monotonic() - started) * 1000)
    _log_outcome(key, outcome)
    return outcome


async def _queued(key: Hashable) -> float | None:
    """One reconcile from the work queue; the result says when to look again (if ever)."""
    assert isinstance(key, tuple)
    if standby.paused():
        return None  # another replica is active; kopf re-lists everything when we resume
    try:
        outcome = await _reconcile(key)
    except Retry as err:
        log.log(logging.DEBUG if err.quiet else logging.WARNING, "%s/%s: %s; retrying in %.0fs",
                *key, err, err.delay)
        return err.delay
    if outcome is None:
        return None
    failure = outcome.failure
    if failure is not None and outcome.status is not None and outcome.status.changed:
        if failure.phase == "Failed":
            log.warning("%s/%s: %s: %s (waiting for the spec to change)", *key, failure.reason,
                        failure.message)
        else:  # a wait (CacheNotReady: the cache's progress), not a mistake to fix
            log.info("%s/%s: %s: %s", *key, failure.reason, failure.message)
    return outcome.requeue_after



# --------------------------------------------------------------------------------- handlers


@kopf.on.event(*MD)
async def model_event(type: str, namespace: str | None, name: str, **_: Any) -> None:
    """Level-triggered: any event of a model (the initial listing included) queues a reconcile."""
    rt = _runtime()
    key = (namespace or "", name)
    if type == "DELETED":
        rt.memory.forget_all(*key)
        rt.queue.forget(key)
        return
    rt.queue.enqueue(key)


def _owner_model(namespace: str | None, body: Mapping[str, Any]) -> tuple[str, str] | None:
    """The ModelDeployment that controls a child whose instance label was removed by hand."""
    for ref in (body.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == "ModelDeployment" and namespace:
            return (namespace, str(ref.get("name")))
    return None


async def _child_event(type: str, body: kopf.Body, namespace: str | None, name: str,
                       labels: Mapping[str, str], **_: Any) -> None:
    key = child_key(namespace, labels) or _owner_model(namespace, body)
    if key is None:
        return
    rt = _runtime()
    if type == "DELETED":
        rt.memory.forget(body.get("kind", ""), key[0], name)
    rt.queue.enqueue(key)


for _kind, _resource in CHILDREN.items():
    kopf.on.event(*_resource, labels=OURS, id=f"{_kind.lower()}_event")(_child_event)


def _blocked_models() -> list[tuple[str, str]]:
    return list(_runtime().indexes["blocked_index"].keys())


@kopf.on.event("", "v1", "pods")
async def pod_event(type: str, namespace: str | None, labels: Mapping[str, str],
                    spec: Mapping[str, Any], status: Mapping[str, Any], **_: Any) -> None:
    rt = _runtime()
    key = child_key(namespace, labels)
    if key is not None:
        rt.queue.enqueue(key)
    if spec.get("nodeName") and gpu_requests(spec) and (
            type == "DELETED" or status.get("phase") in ("Succeeded", "Failed")):
        for blocked in _blocked_models():
            rt.queue.enqueue(blocked)


@kopf.on.event("", "v1", "nodes")
async def node_event(type: str, status: Mapping[str, Any], **_: Any) -> None:
    if type is None:
        return  # the initial listing
    if any(r.startswith("nvidia.com/") for r in status.get("allocatable") or {}):
        rt = _runtime()
        for blocked in _blocked_models():
            rt.queue.enqueue(blocked, 1.0)


@kopf.on.event("", "v1", "resourcequotas")
async def quota_event(type: str, namespace: str | None, **_: Any) -> None:
    """A ResourceQuota changed (its hard limit, or the quota controller's count of used): the
    models of its namespace whose rollout waits on a quota look again (quota_wait_index); no
    other model does, so the quota's status churn wakes nothing in the steady state."""
    if type is None or not namespace:
        return  # the initial listing: every model is reconciled at start anyway
    rt = _runtime()
    for name in rt.indexes["quota_wait_index"].get(namespace) or []:
        rt.queue.enqueue((namespace, name))


@kopf.on.event("", "v1", "namespaces")
async def namespace_event(type: str, name: str, **_: Any) -> None:
    """A namespace deleted (gone, not only terminating): its per-namespace write counts go."""
    if type == "DELETED" and _rt is not None:
        _rt.cluster.forget_namespace(name)


# --------------------------------------------------------------------------------- lifecycle


async def _resync(rt: Runtime) -> None:
    """The periodic drift check: every model, every resync_s (spread out, through the queue)."""
    while True:
        await asyncio.sleep(rt.settings.resync_s)
        if standby.paused():
            continue
        rt.resyncs += 1
        metrics.RESYNC_PASSES.inc()
        keys = list(rt.indexes["md_index"].keys())
        for i, key in enumerate(keys):
            rt.queue.enqueue(key, 0.01 + i * min(1.0, rt.settings.resync_s / 2 / max(1, len(keys))))


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    global _rt
    from .workqueue import WorkQueue

    ours = Settings.from_env()
    kopf_watch.remember(settings)
    settings.posting.enabled = False  # the operator posts its own Events on transitions
    # No state-keeping handlers are registered; should one ever be, keep kopf's marks ours.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubemaas.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kubemaas.io", key="last-handled-configuration")
    settings.persistence.finalizer = "kubemaas.io/finalizer"
    for group, _version, plural in CHILDREN.values():
        settings.watching.label_selectors[(group, plural) if group else plural] = (
            f"{MANAGED_BY}={MANAGER}")
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.networking.request_timeout = 60
    cluster = AsyncCluster(Cluster.from_environment(pool_size=ours.api_workers),
                           workers=ours.api_workers)
    rt = Runtime(settings=ours, cluster=cluster,
                 indexes={k: kwargs[k] for k in ("md_index", "deployment_index", "service_index",
                                                 "hpa_index", "pdb_index", "httproute_index",
                                                 "networkpolicy_index", "certificate_index",
                                                 "inferencepool_index", "scaledobject_index",
                                                 "interceptorroute_index",
                                                 "owed_index",
                                                 "pod_index", "node_index", "namespace_index",
                                                 "blocked_index", "quota_index",
                                                 "quota_wait_index")})
    await discovery.at_start(rt)  # before the first reconcile
    rt.queue = WorkQueue(_queued, concurrency=ours.max_concurrent_reconciles,
                         on_add=metrics.QUEUE_ADDS.inc, on_start=metrics.QUEUE_WAIT.observe)
    metrics.watch_queue(rt.queue)
    metrics.MODELS.source = lambda: [p for packed in rt.indexes["md_index"].values()
                                     for p in packed]
    rt.metrics_server = metrics.serve(ours.metrics_port)
    loop = asyncio.get_running_loop()
    rt.tasks.append(loop.create_task(_resync(rt)))
    rt.tasks.append(loop.create_task(discovery.loop(rt)))
    _rt = rt
    log.info("kubemaas operator started: %s", ours)


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    global _rt
    rt, _rt = _rt, None
    if rt is None:
        return
    for task in rt.tasks:
        task.cancel()
    await rt.queue.close()
    rt.cluster.close()
    if rt.metrics_server is not None:
        rt.metrics_server.shutdown()


@kopf.on.probe(id="apiWrites")
async def api_writes(**_: Any) -> int:
    return _runtime().cluster.writes if _rt is not None else 0


@kopf.on.probe(id="apiWritesByNamespace")
async def api_writes_by_namespace(**_: Any) -> dict[str, int]:
    """apiWrites by the namespace written to ("" for cluster-scoped objects)."""
    return _runtime().cluster.writes_by_namespace() if _rt is not None else {}


@kopf.on.probe(id="resyncs")
async def resyncs(**_: Any) -> int:
    """Resync passes so far: a reader knows how many drift checks a write count spans."""
    return _runtime().resyncs if _rt is not None else 0


@kopf.on.probe(id="probedAt")
async def probed_at(**_: Any) -> float:
    """When these probe results were taken (UNIX time): kopf serves them for up to 10 s."""
    return time.time()


@kopf.on.probe(id="standby")
async def standing_by(**_: Any) -> bool:
    """True while kopf peering has paused this replica (another one is active)."""
    return standby.paused()
