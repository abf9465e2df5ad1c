"""observe -> desired -> apply -> status: the one place that sequences the operator's I/O.

The same `reconcile()` runs for create, update, resume, every change of a child or of one of its
pods, and the periodic drift check. What it observes comes from the operator's in-memory indexes
(a `Snapshot`, built by handlers.py); the pure modules decide; `k8s/` writes. A child is applied
only when it is missing, its spec-hash differs, or it drifted from the desired manifest, and the
status is patched only when it changed: a steady-state resync writes nothing.

When the API server serves Gateway API HTTPRoutes and the model names a Gateway (or the operator
has a default one), the children also include the HTTPRoute split: NAME-stable and NAME-canary
Services and an HTTPRoute NAME whose weights rollout.py computes; otherwise they are deleted.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import autoscaling_status, cache_progress
from .api import (
    API_VERSION,
    KIND,
    GatewayRef,
    ModelDeploymentSpec,
    ModelShape,
    SpecError,
    parse_spec,
    valid_name,
)
from .canary import HTTP_ROUTE, READY_REPLICAS
from .config import Settings
from .drift import drift
from .floor import (
    FLOOR_MANAGER,
    autoscaler_observed,
    hand_over,
    raise_to_floor,
    starts_at_zero,
)
from .k8s import ApiError, AsyncCluster
from .metrics import count_rollouts
from .modelcache import implicit_apply
from .modelcache.implicit import Owner, Plan
from .modelcache.mount import CacheMount, cache_wait
from .render import (
    BUILTIN_TEMPLATE,
    CANARY_TRACK,
    CHILD_KINDS,
    HTTPROUTE_API_VERSION,
    SPEC_HASH,
    STABLE_TRACK,
    RenderContext,
    Rendered,
    RenderError,
    cached_optimization,
    canary_name,
    digest,
    render,
    replicas_manifest,
    selector_string,
    track_service_name,
    url,
    with_strategy,
)
from .render.inference import INFERENCEPOOL_API_VERSION, route_manifests, wants_pool
from .render.security import CERTIFICATE_API_VERSION
from .rollout import plan as plan_rollout
from .scheduling import NodeInfo, PendingDemand, check_capacity, gpu_summary
from .sizing import gpu_types, size_gpus
from .status import (
    DeploymentInfo,
    Failure,
    Observed,
    PodInfo,
    StatusResult,
    compute_status,
    deployment_info,
    failed_status,
)
from .timestamps import parse_time

log = logging.getLogger("kubemaas.reconcile")


class Retry(Exception):
    """Something transient failed (the API server, a conflict); try again after `delay`."""

    def __init__(self, message: str, delay: float = 5.0) -> None:
        super().__init__(message)
        self.delay = delay


@dataclass(frozen=True)
class Snapshot:
    """What the indexes know about one ModelDeployment and its surroundings."""

    body: Mapping[str, Any]  # the ModelDeployment: metadata, spec, status
    children: Mapping[str, Mapping[str, Any]]  # kind -> the observed child object
    pods: Sequence[PodInfo] = ()
    nodes: Sequence[NodeInfo] = ()
    used: Mapping[str, Mapping[str, int]] = field(default_factory=dict)  # others' pods
    # GPU requests of unscheduled pods (Pending, no node yet) of other models and workloads, and
    # of the pods other models' Deployments owe (not created yet): demand that the free GPUs of
    # matching nodes serve before a surge (scheduling.PendingDemand).
    pending: Sequence[PendingDemand] = ()
    gateway_api: bool = False  # the API server serves gateway.networking.k8s.io/v1 HTTPRoute
    cert_manager: bool = False  # the API server serves cert-manager.io/v1 Certificate
    # the API server serves inference.networking.k8s.io/v1 InferencePool
    inference_pools: bool = False
    cache: CacheMount | None = None  # the ModelCache spec.model.cache names (modelcache/)
    keda: bool = False  # the API server serves keda.sh/v1alpha1 ScaledObject
    http_addon: bool = False  # the API server serves http.keda.sh/v1beta1 InterceptorRoute
    # spec.model.autoCache: the cache to create/adopt/release (body's spec already names it)
    implicit: Plan | None = None


@dataclass
class Outcome:
    status: StatusResult | None = None
    failure: Failure | None = None
    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    requeue_after: float | None = None


def _rv(obj: Mapping[str, Any] | None) -> int:
    try:
        return int((obj or {}).get("metadata", {}).get("resourceVersion") or 0)
    except (TypeError, ValueError):
        return 0


class Memory:
    """What this process applied, until the watch streams catch up (avoids duplicate writes)."""

    def __init__(self) -> None:
        self._applied: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._templates: dict[str, tuple[float, dict[str, str] | None]] = {}
        self._rejected: dict[tuple[str, str, str], tuple[str, str]] = {}
        self._renders: dict[str, tuple[ModelDeploymentSpec, Rendered]] = {}
        self._statuses: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self._told: set[tuple[str, str, str]] = set()

    def first_time(self, namespace: str, name: str, what: str) -> bool:
        """True once per model and message (for log lines that must not repeat every look)."""
        key = (namespace, name, what)
        if key in self._told:
            return False
        self._told.add(key)
        return True

    def wrote_status(self, namespace: str, name: str, response: Mapping[str, Any],
                     status: dict[str, Any]) -> None:
        self._statuses[(namespace, name)] = (_rv(response), status)

    def previous_status(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """The model's status as last written: ours if the watch has not caught up yet."""
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        mine = self._statuses.get(key)
        if mine is not None:
            if _rv(body) < mine[0]:
                return mine[1]
            self._statuses.pop(key, None)
        return dict(body.get("status") or {})

    def render(self, raw_spec: Mapping[str, Any], ctx: RenderContext,
               template_name: str) -> tuple[ModelDeploymentSpec, Rendered]:
        """parse + render, memoized: most reconciles (a pod's event, a resync) change neither."""
        key = digest([raw_spec, ctx.name, ctx.namespace, ctx.uid, template_name,
                      ctx.template_source, ctx.default_gateway_namespace,
                      ctx.monitoring_namespace, repr(ctx.cache), ctx.vllm_image,
                      ctx.gpu_types, ctx.model_record, ctx.keda, ctx.prometheus,
                      ctx.http_addon, ctx.http_scaler, ctx.http_interceptor], 32)
        hit = self._renders.get(key)
        if hit is None:  # gpu.count auto: sized from the model's shape and the GPU node types
            spec = size_gpus(parse_spec(raw_spec), ctx.gpu_types, ctx.model_record)
            hit = (spec, render(spec, ctx))
            if len(self._renders) >= 256:
                self._renders.pop(next(iter(self._renders)))
            self._renders[key] = hit
        return hit

    def rejected(self, child: Mapping[str, Any]) -> str | None:
        """The API server's message if it already refused exactly this manifest."""
        meta = child["metadata"]
        entry = self._rejected.get((child["kind"], meta["namespace"], meta["name"]))
        if entry is not None and entry[0] == meta["annotations"][SPEC_HASH]:
            return entry[1]
        return None

    def reject(self, child: Mapping[str, Any], message: str) -> None:
        meta = child["metadata"]
        self._rejected[(child["kind"], meta["namespace"], meta["name"])] = (
            meta["annotations"][SPEC_HASH], message)

    def remember(self, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        meta.pop("managedFields", None)
        self._applied[(obj.get("kind", ""), meta.get("namespace", ""), meta.get("name", ""))] = obj

    def forget(self, kind: str, namespace: str, name: str) -> None:
        self._applied.pop((kind, namespace, name), None)

    def forget_all(self, namespace: str, name: str) -> None:
        self._statuses.pop((namespace, name), None)
        self._told = {t for t in self._told if t[:2] != (namespace, name)}
        self.forget("Deployment", namespace, canary_name(name))
        self.forget("HTTPRoute", namespace, name)
        self.forget("InferencePool", namespace, name)
        for track in (STABLE_TRACK, CANARY_TRACK):
            self.forget("Service", namespace, track_service_name(name, track))
        for _, kind in CHILD_KINDS:
            self.forget(kind, namespace, name)
            self._rejected.pop((kind, namespace, name), None)

    def freshest(self, kind: str, namespace: str, name: str,
                 observed: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        mine = self._applied.get((kind, namespace, name))
        if mine is None:
            return observed
        if observed is not None and _rv(observed) >= _rv(mine):
            self._applied.pop((kind, namespace, name), None)
            return observed
        return mine

    def templates(self, key: str, ttl: float) -> tuple[bool, dict[str, str] | None]:
        entry = self._templates.get(key)
        if entry is None or time.monotonic() - entry[0] > ttl:
            return False, None
        return True, entry[1]

    def cache_templates(self, key: str, data: dict[str, str] | None) -> None:
        self._templates[key] = (time.monotonic(), data)


async def _template(settings: Settings, cluster: AsyncCluster, memory: Memory,
                    name: str) -> str | None:
    """The administrator's template source, or None for the built-in one."""
    if name == BUILTIN_TEMPLATE:
        return None
    key = f"{settings.namespace}/{settings.templates_configmap}"
    hit, data = memory.templates(key, settings.templates_ttl_s)
    if not hit:
        try:
            cm = await cluster.get_configmap(settings.namespace, settings.templates_configmap)
        except ApiError as err:
            raise Retry(f"cannot read the templates ConfigMap {key}: {err}") from err
        data = dict((cm or {}).get("data") or {}) if cm is not None else None
        memory.cache_templates(key, data)
    if data is None:
        raise LookupError(f"template {name!r} not found: the templates ConfigMap {key} does not "
                          f"exist; use template \"default\" or ask the cluster administrator")
    if name not in data:
        known = ", ".join(sorted(["default", *data])) or "default"
        raise LookupError(f"template {name!r} not found in the ConfigMap {key}; known: {known}")
    return data[name]


def _involved(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta.get("name"),
            "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion")}


async def _write_status(cluster: AsyncCluster, memory: Memory, body: Mapping[str, Any],
                        result: StatusResult) -> None:
    if not result.changed:
        return
    meta = body.get("metadata") or {}
    try:
        previous = memory.previous_status(body)
        response = await cluster.patch_status(meta["namespace"], meta["name"], result.status,
                                              previous)
        memory.wrote_status(meta["namespace"], meta["name"], response, result.status)
        count_rollouts(previous, result.status)
    except ApiError as err:
        if err.status == 404:
            return  # deleted meanwhile
        raise Retry(f"cannot write the status: {err}") from err
    for event in result.events:
        try:
            await cluster.post_event(_involved(body), event.type, event.reason, event.message)
        except ApiError as err:  # an Event is a courtesy; never fail a reconcile on it
            log.warning("cannot post an Event for %s/%s: %s", meta["namespace"], meta["name"],
                        err)


def _next_check(pods: Sequence[PodInfo], now: datetime, grace: float) -> float | None:
    """Seconds until a not-ready pod's grace period ends (then the status must say so)."""
    waits = []
    for p in pods:
        if p.phase == "Running" and not p.ready and p.running_since and not p.terminating:
            since = parse_time(p.running_since)
            if since is None:
                continue
            left = grace - (now - since).total_seconds()
            if left > 0:
                waits.append(left + 0.5)
    return min(waits) if waits else None


async def _pin_replicas(cluster: AsyncCluster, memory: Memory, name: str, namespace: str,
                        replicas: int) -> dict[str, Any]:
    """Apply only the Deployment's replicas, as the autoscaling floor's field manager."""
    try:
        applied = await cluster.apply(replicas_manifest(name, namespace, replicas), FLOOR_MANAGER)
    except ApiError as err:
        raise Retry(f"cannot set the replicas of the Deployment {namespace}/{name} to the "
                    f"autoscaling floor ({replicas}): {err}") from err
    memory.remember(applied)
    return applied


def _security_context(settings: Settings, snap: Snapshot,
                      record: ModelShape | None) -> dict[str, Any]:
    """The RenderContext fields the NetworkPolicy takes from the operator's settings, those of
    language models (the vLLM image, the GPU node types, the model cache's shape) and of
    autoscaling (whether KEDA is served, the Prometheus its triggers read; whether KEDA's HTTP
    add-on is, and where its scaler and interceptor listen)."""
    default = settings.default_gateway()
    return {"default_gateway_namespace": default[0] if default else None,
            "monitoring_namespace": settings.monitoring_namespace,
            "vllm_image": settings.vllm_image, "gpu_types": gpu_types(snap.nodes),
            "model_record": record, "keda": snap.keda, "prometheus": settings.prometheus,
            "http_addon": snap.http_addon, "http_scaler": settings.http_scaler,
            "http_interceptor": settings.http_interceptor}


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


def _live_strategy(dep: Mapping[str, Any] | None) -> tuple[int, int]:
    """The rolling-update numbers the live Deployment has (ours), else replace one at a time."""
    rolling = (((dep or {}).get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {}
    surge, unavailable = rolling.get("maxSurge"), rolling.get("maxUnavailable")
    if isinstance(surge, int) and isinstance(unavailable, int) and (surge or unavailable):
        return surge, unavailable
    return 0, 1


async def reconcile(snap: Snapshot, settings: Settings, cluster: AsyncCluster,
                    memory: Memory, now: datetime | None = None) -> Outcome:
    body = snap.body
    meta = body.get("metadata") or {}
    name, namespace = meta["name"], meta["namespace"]
    now = now or datetime.now(UTC)
    outcome = Outcome()
    observed_children = {
        kind: memory.freshest(kind, namespace, name, snap.children.get(kind))
        for _, kind in CHILD_KINDS}
    dep_obj = observed_children.get("Deployment")
    base = Observed(
        name=name, namespace=namespace, generation=meta.get("generation") or 0, now=now,
        previous=memory.previous_status(body),
        deployment=deployment_info(dep_obj) if dep_obj else None, pods=snap.pods,
        selector=selector_string(name), not_ready_grace_s=settings.not_ready_grace_s,
        model_cache=snap.cache.name if snap.cache is not None else None)

    if snap.implicit is not None:  # 0. the model cache spec.model.autoCache asks for
        try:
            await implicit_apply.ensure(cluster, namespace, Owner(name, meta.get("uid", "")),
                                        snap.implicit)
        except ApiError as err:
            raise Retry(f"cannot create or share the model cache {snap.implicit.name}: {err}",
                        1.0 if err.status == 409 else 5.0) from err

    # 1. parse; 2. pick the template; 3. render. Any failure here needs a spec change.
    try:
        if not valid_name(name):
            raise SpecError("metadata.name", "must be a DNS-1035 label of at most 63 characters "
                            "(it names the Service)")
        raw_spec = body.get("spec") or {}
        template_name = str((raw_spec.get("runtime") or {}).get("template") or BUILTIN_TEMPLATE)
        source = await _template(settings, cluster, memory, template_name)
        record = await cache_progress.read_shape(cluster, namespace, raw_spec)
        spec, rendered = memory.render(raw_spec, RenderContext(
            name=name, namespace=namespace, uid=meta.get("uid", ""),
            template_name=template_name, template_source=source, cache=snap.cache,
            **_security_context(settings, snap, record)), template_name)
        outcome.failure = (cache_wait(spec.model.cache, snap.cache)
                           or cached_optimization.wait(spec, snap.cache))
        tls = spec.serving.tls
        if tls is not None and tls.cert_manager is not None and not snap.cert_manager:
            outcome.failure = Failure(
                "CertManagerNotInstalled", "spec.serving.tls.certManager asks for a cert-manager "
                f"Certificate, but the API server does not serve {CERTIFICATE_API_VERSION} "
                "certificates: install cert-manager, or name a kubernetes.io/tls Secret in "
                "spec.serving.tls.secretName")
    except SpecError as err:
        outcome.failure = Failure("InvalidSpec", str(err))
    except LookupError as err:
        outcome.failure = Failure("TemplateNotFound", str(err))
    except RenderError as err:
        outcome.failure = Failure("TemplateError", str(err))
    if outcome.failure is not None:
        outcome.status = failed_status(outcome.failure, base)
        await _write_status(cluster, memory, body, outcome.status)
        return outcome

    # 4. the capacity check, from the indexes (this model's own pods do not count as used): for
    # what the spec asks, or what the autoscaler asks now (a scale-out that cannot fit says so).
    live = deployment_info(dep_obj) if dep_obj else None
    desired_n = (max(spec.autoscaling.min_replicas, live.spec_replicas)
                 if spec.autoscaling is not None and live is not None
                 and live.spec_replicas is not None else spec.desired_replicas)
    capacity = check_capacity(spec, snap.nodes, snap.used, desired_n)

    # 5. the rollout: which pod template the Deployment carries, and how it rolls (rollout.py).
    surge_room = check_capacity(spec, snap.nodes, snap.used, desired_n + spec.rollout.max_surge,
                                pending=snap.pending)
    gateway = gateway_for(spec, settings) if snap.gateway_api else None
    pool = wants_pool(spec, snap.inference_pools)  # then the picker chooses, not weights
    if spec.serving.gateway is not None and not snap.gateway_api and memory.first_time(
            namespace, name, "no-httproute"):
        log.warning("%s/%s: spec.serving.gateway names %s, but the API server does not serve "
                    "%s HTTPRoute (are the Gateway API CRDs installed?): no route; a canary "
                    "splits by ready replicas", namespace, name, spec.serving.gateway.name,
                    HTTPROUTE_API_VERSION)
    plan = plan_rollout(spec, raw_spec, rendered.revision, live, snap.pods, desired_n,
                        max(0, surge_room.room - desired_n), base.previous.get("rollout") or {},
                        now, HTTP_ROUTE if gateway is not None and not pool else READY_REPLICAS,
                        never=capacity.message if capacity.never else "")
    for note in plan.notes:
        log.info("%s/%s: %s", namespace, name, note)
    children = list(rendered.children)
    target_revision = rendered.revision
    if plan.target == "hold" and live is not None:
        target_revision = live.revision
        children = [c for c in children if c["kind"] != "Deployment"]
    elif plan.target == "stable" and plan.stable_spec is not None:
        stable_raw = {k: v for k, v in plan.stable_spec.items()
                      if k not in ("replicas", "autoscaling")}
        stable_raw.update({k: raw_spec[k] for k in ("replicas", "autoscaling") if k in raw_spec})
        stable_template = str((stable_raw.get("runtime") or {}).get("template")
                              or BUILTIN_TEMPLATE)
        try:
            stable_source = await _template(settings, cluster, memory, stable_template)
            _, stable = memory.render(stable_raw, RenderContext(
                name=name, namespace=namespace, uid=meta.get("uid", ""),
                template_name=stable_template, template_source=stable_source,
                cache=snap.cache, **_security_context(settings, snap, record)),
                stable_template)
        except (SpecError, LookupError, RenderError) as err:
            raise Retry(f"cannot render the last good revision to roll back to: {err}",
                        30.0) from err
        target_revision = stable.revision
        children = [next(c for c in stable.children if c["kind"] == "Deployment") if c[
            "kind"] == "Deployment" else c for c in children]
    surge_unavailable = plan.deployment_strategy or _live_strategy(dep_obj)
    children = [with_strategy(c, *surge_unavailable, replicas=plan.main_replicas)
                if c["kind"] == "Deployment" else c for c in children]
    canary_obj = memory.freshest("Deployment", namespace, canary_name(name),
                                 snap.children.get("CanaryDeployment"))
    # (manifest, observed, role): role "main" (the children of CHILD_KINDS), "canary" (the
    # canary Deployment) or "route" (the HTTPRoute split's Services and HTTPRoute).
    pairs: list[tuple[dict[str, Any], Mapping[str, Any] | None, str]] = [
        (c, observed_children.get(c["kind"]), "main") for c in children]
    if plan.canary_replicas is not None:  # the canary Deployment runs the spec's revision
        main = next(c for c in rendered.children if c["kind"] == "Deployment")
        pairs.append((with_strategy(main, 0, 1, replicas=plan.canary_replicas, canary=True),
                      canary_obj, "canary"))
    route_children = {key: memory.freshest(kind, namespace, obj_name, snap.children.get(key))
                      for key, _, kind, obj_name in gateway_children(name)}
    wanted_routes: set[str] = set()
    try:
        for manifest in route_manifests(spec, RenderContext(
                name=name, namespace=namespace, uid=meta.get("uid", "")), gateway, pool,
                settings.default_endpoint_picker(), plan.canary_weight):
            key = next(k for k, _, kind, obj_name in gateway_children(name)
                       if kind == manifest["kind"] and obj_name == manifest["metadata"]["name"])
            wanted_routes.add(key)
            pairs.append((manifest, route_children[key], "route"))
    except RenderError as err:  # cannot happen for a parsed spec; say so if it does
        raise Retry(f"cannot render the model's routes: {err}", 30.0) from err

    # 6. apply what is missing, changed or drifted; delete what is no longer wanted.
    wanted = {child["kind"]: child for child in rendered.children}
    for child, have, role in pairs:
        kind = child["kind"]
        is_canary = role == "canary"
        reason = None
        if have is None:
            reason = "missing"
        elif (have.get("metadata", {}).get("annotations") or {}).get(SPEC_HASH) != child[
                "metadata"]["annotations"][SPEC_HASH]:
            reason = "spec changed"
        else:
            reason = drift(child, have)
            if reason is not None:
                reason = f"drifted at {reason}"
        if reason is None:
            continue
        refused = memory.rejected(child)
        try:
            if refused is not None:  # the same manifest again: do not ask again
                raise ApiError(422, "Invalid", refused)
            at_zero = (role == "main" and kind == "Deployment" and have is None
                       and starts_at_zero(spec, rendered.autoscaler))
            if role == "main" and kind == "Deployment" and have is not None:
                pin = hand_over(spec, deployment_info(have).spec_replicas,
                                autoscaler_observed(observed_children))
                if pin is not None:
                    await _pin_replicas(cluster, memory, name, namespace, pin)
            applied = await cluster.apply(
                {**child, "spec": {**child["spec"], "replicas": 0}} if at_zero else child)
            if at_zero:  # the floor keeps 0 when the next apply leaves replicas out (floor.py)
                applied = await _pin_replicas(cluster, memory, name, namespace, 0)
        except ApiError as err:
            if err.invalid:
                memory.reject(child, err.message)
                outcome.failure = Failure("Rejected", f"the API server rejected the {kind}: "
                                          f"{err.message}")
                outcome.status = failed_status(outcome.failure, base)
                await _write_status(cluster, memory, body, outcome.status)
                return outcome
            raise Retry(f"cannot apply the {kind} {namespace}/{name}: {err}") from err
        memory.remember(applied)
        if is_canary:
            canary_obj = applied
        elif role == "main":
            observed_children[kind] = applied
        what = {"canary": "canary ", "route": f"{child['metadata']['name']} "}.get(role, "")
        outcome.applied.append(f"{what}{kind} ({reason})")
    if plan.canary_replicas is None and canary_obj is not None:
        try:
            await cluster.delete("apps/v1", "Deployment", namespace, canary_name(name))
        except ApiError as err:
            raise Retry(f"cannot delete the canary Deployment {namespace}/{name}: {err}") from err
        memory.forget("Deployment", namespace, canary_name(name))
        canary_obj = None
        outcome.deleted.append("canary Deployment")
    for key, api_version, kind, obj_name in gateway_children(name):  # routes no longer wanted
        if key in wanted_routes or route_children.get(key) is None:
            continue
        try:
            await cluster.delete(api_version, kind, namespace, obj_name)
        except ApiError as err:
            raise Retry(f"cannot delete the {kind} {namespace}/{obj_name}: {err}") from err
        memory.forget(kind, namespace, obj_name)
        outcome.deleted.append(f"{obj_name} {kind}")
    for api_version, kind in CHILD_KINDS:
        if kind not in wanted and observed_children.get(kind) is not None:
            try:
                await cluster.delete(api_version, kind, namespace, name)
            except ApiError as err:
                raise Retry(f"cannot delete the {kind} {namespace}/{name}: {err}") from err
            memory.forget(kind, namespace, name)
            outcome.deleted.append(kind)

    # The autoscaling floor: a new Deployment starts at minReplicas, not at the default of 1.
    dep_obj = observed_children.get("Deployment")
    floor = raise_to_floor(spec, deployment_info(dep_obj).spec_replicas,
                           rendered.autoscaler) if dep_obj else None
    if dep_obj is not None and floor is not None:
        observed_children["Deployment"] = await _pin_replicas(cluster, memory, name, namespace,
                                                              floor)
        outcome.applied.append(f"Deployment replicas {floor} (autoscaling floor)")

    # 7. the status, from what is there now.
    dep_obj = observed_children.get("Deployment")
    dep: DeploymentInfo | None = deployment_info(dep_obj) if dep_obj else None
    if dep is not None and canary_obj is not None:  # the model's replicas are in both
        can = deployment_info(canary_obj)
        dep = dataclasses.replace(
            dep, replicas=dep.replicas + can.replicas,
            ready_replicas=dep.ready_replicas + can.ready_replicas,
            updated_replicas=dep.updated_replicas + can.updated_replicas,
            available_replicas=dep.available_replicas + can.available_replicas)
    cache = await cache_progress.read(cluster, namespace, raw_spec, snap.pods,
                                      dep.ready_replicas if dep else 0, desired_n)
    products = {n.name: n.product for n in snap.nodes}
    placed = [products.get(p.node, "") for p in snap.pods if p.node and not p.terminating]
    observed = Observed(
        name=name, namespace=namespace, generation=base.generation, now=now,
        previous=base.previous, desired_revision=target_revision, deployment=dep,
        pods=snap.pods, node_products=products, capacity=capacity,
        url=url(name, namespace, spec.serving.port), selector=base.selector,
        not_ready_grace_s=settings.not_ready_grace_s, rollout=plan.view, cache=cache,
        autoscaling=autoscaling_status.status(rendered.autoscaler, rendered.wake_on_request),
        model_cache=base.model_cache)
    outcome.status = compute_status(spec, observed, gpu_summary(spec, placed))
    await _write_status(cluster, memory, body, outcome.status)
    waits = [w for w in (_next_check(snap.pods, now, settings.not_ready_grace_s),
                         plan.requeue_after, cache_progress.requeue_after(cache))
             if w is not None]
    outcome.requeue_after = min(waits) if waits else None
    return outcome
