"""observe -> desired -> apply -> status: the one place that sequences the operator's I/O.

The same `reconcile()` runs for create, update, resume, every change of a child or of one of its
pods, and the periodic drift check. What it observes comes from the operator's in-memory indexes
(a `Snapshot`, built by handlers.py); the pure modules decide; `k8s/` writes, through children.py
(the children: applied only when missing, changed or drifted) and writes.py (the status, patched
only when it changed): a steady-state resync writes nothing. reconcile() sequences the steps;
the larger ones are functions of their own below it, step 5 (the rollout's plan and the
children it wants) in reconcile_targets.py.

When the API server serves Gateway API HTTPRoutes and the model names a Gateway (or the operator
has a default one), the children also include the HTTPRoute split: NAME-stable and NAME-canary
Services and an HTTPRoute NAME whose weights rollout.py computes; otherwise they are deleted.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from . import autoscaling_status, cache_progress, children
from .api import ModelDeploymentSpec, ModelShape, SpecError, valid_name
from .api_failures import failing_write, held_failure
from .children import Children
from .config import Settings
from .k8s import ApiError, AsyncCluster
from .memory import Memory
from .modelcache import implicit_apply
from .modelcache.implicit import Owner, Plan
from .modelcache.mount import cache_wait
from .observed import DeploymentInfo, PodInfo
from .ownership import NameConflict
from .picker_peers import picker_pods_of
from .pod_life import CacheProgress
from .reconcile_pass import Pass, Snapshot
from .reconcile_targets import Targets
from .reconcile_targets import targets as plan_targets
from .render import (
    BUILTIN_TEMPLATE,
    CHILD_KINDS,
    SPEC_HASH,
    Rendered,
    RenderError,
    cached_optimization,
    canary_name,
    selector_string,
    url,
)
from .render.security import CERTIFICATE_API_VERSION
from .scheduling import Capacity, check_capacity, gpu_summary
from .status import Failure, Observed, StatusResult, compute_status, failed_status
from .template_source import template_source
from .timestamps import parse_time
from .writes import Refused, Retry, write_status

__all__ = ["Outcome", "Snapshot", "reconcile"]

# A child a policy or RBAC refused is asked again at the next resync pass (a pass's reconciles
# are spread over up to half the period, hence less than a whole period), not at each event.
REFUSAL_HOLD = 0.75

log = logging.getLogger("kubemaas.reconcile")


@dataclass
class Outcome:
    status: StatusResult | None = None
    failure: Failure | None = None
    applied: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    requeue_after: float | None = None


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


async def _ensure_implicit_cache(p: Pass, implicit: Plan,
                                 cluster: AsyncCluster) -> Failure | None:
    asking = json.dumps(dataclasses.asdict(implicit), sort_keys=True, default=str)
    held = p.memory.held(p.namespace, p.name, asking, what="cache")
    if held is not None and isinstance(held[0], Failure):
        return held[0]  # refused less than a resync ago: the model's events do not ask again
    try:
        await implicit_apply.ensure(cluster, p.namespace, Owner(p.name, p.uid), implicit)
    except implicit_apply.CacheNameTaken as err:
        return Failure("CacheNameConflict", str(err))
    except ApiError as err:
        if err.policy_refused:  # a ResourceQuota on modelcaches, an admission policy
            refused = Failure("Refused", f"the cluster's policy refused the model cache "
                              f"{p.namespace}/{implicit.name}: {err.message}; it is tried again "
                              "at each resync", phase="Pending")
            p.memory.hold(p.namespace, p.name, asking, REFUSAL_HOLD * p.settings.resync_s,
                          refused, what="cache")
            return refused
        return failing_write(p.memory, p.namespace, p.name, Retry(
            f"cannot create or share the model cache {implicit.name}: {err}",
            1.0 if err.status == 409 else 5.0))
    return None


def _desired_replicas(spec: ModelDeploymentSpec, live: DeploymentInfo | None) -> int:
    """What the spec asks, or with an autoscaler what it asks now (never under its minimum)."""
    if spec.autoscaling is not None and live is not None and live.spec_replicas is not None:
        return max(spec.autoscaling.min_replicas, live.spec_replicas)
    return spec.desired_replicas


async def _settle_children(c: Children, targets: Targets, spec: ModelDeploymentSpec,
                           rendered: Rendered) -> None:
    """After the applies: a canary that gives its replicas back keeps its template (only its
    replicas change); what is no longer wanted goes; a new Deployment starts at the autoscaling
    floor."""
    await children.pin_canary(c, targets.canary_pin)
    await children.prune(c, targets.plan.canary_replicas is not None,
                         {child["kind"] for child in rendered.children}, targets.unwanted_routes)
    await children.hold_floor(c, spec, rendered.autoscaler)


async def _apply_children(c: Children, targets: Targets, spec: ModelDeploymentSpec,
                          rendered: Rendered) -> Failure | None:
    """The applies and deletes of step 6; what stopped them, as the model's failure."""
    writing = tuple((child["kind"], child["metadata"]["name"],
                     (child["metadata"].get("annotations") or {}).get(SPEC_HASH, ""))
                    for child, _, _ in targets.pairs)
    held = held_failure(c.memory, c.namespace, c.name, writing)
    if held is not None:
        return held
    try:
        refused = await children.apply(c, targets.pairs, spec, rendered.autoscaler)
        if refused is None:
            await _settle_children(c, targets, spec, rendered)
    except NameConflict as err:
        return Failure("NameConflict", str(err))
    except (children.Forbidden, Refused) as err:  # reason Forbidden or Refused
        return Failure(type(err).__name__, str(err), phase="Pending")
    except Retry as err:  # raised again until it fails a few times in a row
        return failing_write(c.memory, c.namespace, c.name, err, writing)
    return None if refused is None else Failure("Rejected", refused)


async def reconcile(snap: Snapshot, settings: Settings, cluster: AsyncCluster,
                    memory: Memory, now: datetime | None = None) -> Outcome:
    meta = snap.body.get("metadata") or {}
    pickers = await picker_pods_of(cluster, snap.body.get("spec") or {}, meta["namespace"],
                                   snap.inference_pools, settings.default_endpoint_picker())
    p = Pass(snap, settings, cluster, memory, now or datetime.now(UTC), meta["name"],
              meta["namespace"], str(meta.get("uid", "")), pickers)
    outcome = Outcome()
    main = {kind: memory.freshest(kind, p.namespace, p.name, snap.children.get(kind))
            for _, kind in CHILD_KINDS}
    dep_obj = main.get("Deployment")
    live = memory.deployment(dep_obj) if dep_obj else None
    base = Observed(
        name=p.name, namespace=p.namespace, generation=meta.get("generation") or 0, now=p.now,
        previous=memory.previous_status(snap.body), deployment=live, pods=snap.pods,
        selector=selector_string(p.name), not_ready_grace_s=settings.not_ready_grace_s,
        model_cache=snap.cache.name if snap.cache is not None else None)

    if snap.implicit is not None:  # 0. the model cache spec.model.autoCache asks for
        taken = await _ensure_implicit_cache(p, snap.implicit, cluster)
        if taken is not None:
            return await _failed(p, outcome, taken, base)

    # 1. parse; 2. pick the template; 3. render. Any failure here needs a spec change.
    raw_spec = snap.body.get("spec") or {}
    parsed = await _parse_and_render(p, raw_spec)
    if isinstance(parsed, Failure):
        return await _failed(p, outcome, parsed, base)
    spec, rendered, record = parsed

    # 4. the capacity check, from the indexes (this model's own pods do not count as used): for
    # what the spec asks, or what the autoscaler asks now (a scale-out that cannot fit says so).
    desired_n = _desired_replicas(spec, live)
    capacity = check_capacity(spec, snap.nodes, snap.used, desired_n)

    # 5. the rollout: which pod template the Deployment carries, and how it rolls (rollout.py).
    c = Children(cluster, memory, p.name, p.namespace, main,
                 memory.freshest("Deployment", p.namespace, canary_name(p.name),
                                 snap.children.get("CanaryDeployment")),
                 outcome.applied, outcome.deleted, hold_s=REFUSAL_HOLD * settings.resync_s)
    targets = await plan_targets(p, spec, raw_spec, rendered, record, live, dep_obj, desired_n,
                             base.previous, capacity, c)

    # 6. apply what is missing, changed or drifted; delete what is no longer wanted.
    failure = await _apply_children(c, targets, spec, rendered)
    if failure is not None:
        return await _failed(p, outcome, failure, base)

    # 7. the status, from what is there now.
    memory.writes_went_through(p.namespace, p.name)
    cache = await _status(p, outcome, spec, rendered, targets, c, base, capacity, desired_n,
                          raw_spec)
    waits = [w for w in (_next_check(snap.pods, p.now, settings.not_ready_grace_s),
                         targets.plan.requeue_after, cache_progress.requeue_after(cache))
             if w is not None]
    outcome.requeue_after = min(waits) if waits else None
    return outcome


async def _failed(p: Pass, outcome: Outcome, failure: Failure, base: Observed) -> Outcome:
    outcome.failure = failure
    outcome.status = failed_status(failure, base)
    outcome.requeue_after = failure.retry_after
    await write_status(p.cluster, p.memory, p.snap.body, outcome.status)
    return outcome


async def _parse_and_render(p: Pass, raw_spec: Mapping[str, Any]) -> tuple[
        ModelDeploymentSpec, Rendered, ModelShape | None] | Failure:
    """The parsed spec, its render and the model cache's shape record, or why not."""
    try:
        if not valid_name(p.name):
            raise SpecError("metadata.name", "must be a DNS-1035 label of at most 63 characters "
                            "(it names the Service)")
        template_name = str((raw_spec.get("runtime") or {}).get("template") or BUILTIN_TEMPLATE)
        source = await template_source(p.settings, p.cluster, p.memory, template_name)
        record = await cache_progress.read_shape(p.cluster, p.namespace, raw_spec)
        spec, rendered = p.memory.render(raw_spec, p.context(template_name, source, record),
                                         template_name)
    except SpecError as err:
        return Failure("InvalidSpec", str(err))
    except LookupError as err:
        return Failure("TemplateNotFound", str(err))
    except RenderError as err:
        return Failure("TemplateError", str(err))
    failure = cache_wait(spec.model.cache, p.snap.cache) or cached_optimization.wait(
        spec, p.snap.cache)
    tls = spec.serving.tls
    if tls is not None and tls.cert_manager is not None and not p.snap.cert_manager:
        failure = Failure(
            "CertManagerNotInstalled", "spec.serving.tls.certManager asks for a cert-manager "
            f"Certificate, but the API server does not serve {CERTIFICATE_API_VERSION} "
            "certificates: install cert-manager, or name a kubernetes.io/tls Secret in "
            "spec.serving.tls.secretName")
    return failure if failure is not None else (spec, rendered, record)


async def _status(p: Pass, outcome: Outcome, spec: ModelDeploymentSpec, rendered: Rendered,
                  targets: Targets, c: Children, base: Observed, capacity: Capacity,
                  desired_n: int, raw_spec: Mapping[str, Any]) -> CacheProgress | None:
    """Compute and write the status from what is there now; the model cache's progress."""
    dep_obj = c.main.get("Deployment")
    dep: DeploymentInfo | None = p.memory.deployment(dep_obj) if dep_obj else None
    if dep is not None and c.canary is not None:  # the model's replicas are in both
        can = p.memory.deployment(c.canary)
        dep = dataclasses.replace(
            dep, replicas=dep.replicas + can.replicas,
            ready_replicas=dep.ready_replicas + can.ready_replicas,
            updated_replicas=dep.updated_replicas + can.updated_replicas,
            available_replicas=dep.available_replicas + can.available_replicas)
    snap = p.snap
    cache = await cache_progress.read(p.cluster, p.namespace, raw_spec, snap.pods,
                                      dep.ready_replicas if dep else 0, desired_n)
    products = {n.name: n.product for n in snap.nodes}
    placed = [products.get(pod.node, "") for pod in snap.pods if pod.node and not pod.terminating]
    observed = Observed(
        name=p.name, namespace=p.namespace, generation=base.generation, now=p.now,
        previous=base.previous, desired_revision=targets.revision, deployment=dep,
        pods=snap.pods, node_products=products, capacity=capacity,
        url=url(p.name, p.namespace, spec.serving.port), selector=base.selector,
        not_ready_grace_s=p.settings.not_ready_grace_s, rollout=targets.plan.view, cache=cache,
        autoscaling=autoscaling_status.status(rendered.autoscaler, rendered.wake_on_request),
        model_cache=base.model_cache)
    outcome.status = compute_status(spec, observed, gpu_summary(spec, placed))
    await write_status(p.cluster, p.memory, snap.body, outcome.status)
    return cache
