"""Step 5 of a reconcile pass: the rollout's plan (rollout.py) and every child to converge to
it: the main Deployment with the revision the plan chose (the spec's, the live one held, or the
last good one rendered again for a rollback), the canary Deployment, and the routing children
(an HTTPRoute split or an InferencePool)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .api import GatewayRef, ModelDeploymentSpec, ModelShape, SpecError
from .canary import HTTP_ROUTE, READY_REPLICAS, TrafficSplit
from .children import Children, Pair
from .gpu_ratio import held_by_nodes, rollout_gpus
from .observed import DeploymentInfo
from .quota_room import no_room
from .reconcile_pass import Pass
from .render import (
    BUILTIN_TEMPLATE,
    HTTPROUTE_API_VERSION,
    RenderContext,
    Rendered,
    RenderError,
    with_strategy,
)
from .render.inference import route_manifests, wants_pool
from .rollout import plan as plan_rollout
from .rollout_draft import Plan as RolloutPlan
from .rollout_room import surge_room
from .routes import gateway_children, gateway_for
from .scheduling import Capacity, check_capacity
from .template_source import template_source
from .writes import Retry

log = logging.getLogger("kubemaas.reconcile")


@dataclass
class Targets:
    """What step 5 decided: the rollout's plan, the revision the main Deployment carries, and
    every child to converge (with what is observed of it)."""

    plan: RolloutPlan
    revision: str
    pairs: list[Pair]
    unwanted_routes: list[tuple[str, str, str, bool]]
    canary_pin: int | None = None  # the canary Deployment's replicas alone (its template held)


def _live_strategy(dep: Mapping[str, Any] | None) -> tuple[int, int]:
    """The rolling-update numbers the live Deployment has (ours), else replace one at a time."""
    rolling = (((dep or {}).get("spec") or {}).get("strategy") or {}).get("rollingUpdate") or {}
    surge, unavailable = rolling.get("maxSurge"), rolling.get("maxUnavailable")
    if isinstance(surge, int) and isinstance(unavailable, int) and (surge or unavailable):
        return surge, unavailable
    return 0, 1


async def targets(p: Pass, spec: ModelDeploymentSpec, raw_spec: Mapping[str, Any],
                   rendered: Rendered, record: ModelShape | None, live: DeploymentInfo | None,
                   dep_obj: Mapping[str, Any] | None, desired_n: int,
                   previous: Mapping[str, Any], capacity: Capacity,
                   c: Children) -> Targets:
    snap = p.snap
    gateway = gateway_for(spec, p.settings) if snap.gateway_api else None
    pool = wants_pool(spec, snap.inference_pools)  # then the picker chooses, not weights
    if spec.serving.gateway is not None and not snap.gateway_api and p.memory.first_time(
            p.namespace, p.name, "no-httproute"):
        log.warning("%s/%s: spec.serving.gateway names %s, but the API server does not serve "
                    "%s HTTPRoute (are the Gateway API CRDs installed?): no route; a canary "
                    "splits by ready replicas", p.namespace, p.name, spec.serving.gateway.name,
                    HTTPROUTE_API_VERSION)
    plan = _plan(p, spec, raw_spec, rendered, live, dep_obj, desired_n, previous, capacity,
                 c, HTTP_ROUTE if gateway is not None and not pool else READY_REPLICAS)
    revision = rendered.revision
    deployment: dict[str, Any] | None = _kind(rendered, "Deployment")
    if plan.target == "hold" and live is not None:
        revision, deployment = live.revision, None
    elif plan.target == "stable" and plan.stable_spec is not None:
        stable = await _render_stable(p, plan.stable_spec, raw_spec, record,
                                      str((plan.status.get("current") or {}).get("hash") or ""))
        if stable is not None:
            revision, deployment = stable.revision, _kind(stable, "Deployment")
        else:  # not the revision the operator recorded: the Deployment is left as it is
            revision, deployment = (live.revision if live is not None else ""), None
    surge_unavailable = plan.deployment_strategy or _live_strategy(dep_obj)
    pairs: list[Pair] = []
    for child in rendered.children:
        if child["kind"] == "Deployment":
            if deployment is None:  # held: the Deployment is left as it is
                continue
            child = with_strategy(deployment, *surge_unavailable, replicas=plan.main_replicas)
        pairs.append((child, c.main.get(child["kind"]), "main"))
    if plan.canary_replicas is not None and not plan.hold_canary_template:
        # the canary Deployment runs the spec's revision
        pairs.append((with_strategy(_kind(rendered, "Deployment"), *plan.canary_strategy,
                                    replicas=plan.canary_replicas, canary=True),
                      c.canary, "canary"))
    unwanted = _route_pairs(p, spec, gateway, pool, plan.canary_weight, pairs)
    return Targets(plan, revision, pairs, unwanted,
                    plan.canary_replicas if plan.hold_canary_template else None)


def _plan(p: Pass, spec: ModelDeploymentSpec, raw_spec: Mapping[str, Any], rendered: Rendered,
          live: DeploymentInfo | None, dep_obj: Mapping[str, Any] | None, desired_n: int,
          previous: Mapping[str, Any], capacity: Capacity, c: Children,
          split: TrafficSplit) -> RolloutPlan:
    """rollout.plan with what this pass counted (its notes logged)."""
    snap = p.snap
    # the model's own pods counted as free: the room were they all gone (the pool a surge
    # could ever use); rollout_room.surge_room counts them held
    every = check_capacity(spec, snap.nodes, snap.used, desired_n + spec.rollout.max_surge,
                           pending=snap.pending)
    pod_spec = (_kind(rendered, "Deployment").get("spec") or {}).get("template") or {}
    plan = plan_rollout(spec, raw_spec, rendered.revision, live, snap.pods, desired_n,
                        max(0, every.room - desired_n), previous.get("rollout") or {},
                        p.now, split,
                        never=capacity.message if capacity.never else "",
                        quota_full=no_room(snap.quotas, pod_spec.get("spec") or {}),
                        gpu=held_by_nodes(rollout_gpus(
                            spec.gpu.resource if spec.gpu else None, pod_spec.get("spec"),
                            rendered.revision == (live.revision if live else ""), dep_obj,
                            c.canary, rendered.revision), spec, snap.nodes, snap.used,
                            snap.pending, snap.quotas),
                        room=surge_room(spec, snap.nodes, snap.used, snap.own, snap.pending,
                                        snap.pods, desired_n))
    for note in plan.notes:
        # A revision the API server refused leaves no rollout record (the Failed status has
        # none), so each pass "starts" it again without applying anything: say so once.
        if note.endswith(" starts") and not p.memory.first_time(p.namespace, p.name, note):
            continue
        log.info("%s/%s: %s", p.namespace, p.name, note)
    return plan


def _route_pairs(p: Pass, spec: ModelDeploymentSpec, gateway: GatewayRef | None, pool: bool,
                 canary_weight: int, pairs: list[Pair]) -> list[tuple[str, str, str, bool]]:
    """The routing children the spec wants, appended to ``pairs``; returns every routing
    child as (apiVersion, kind, name, whether it exists and is no longer wanted)."""
    route_children = {key: p.memory.freshest(kind, p.namespace, obj_name,
                                             p.snap.children.get(key))
                      for key, _, kind, obj_name in gateway_children(p.name)}
    wanted_routes: set[str] = set()
    try:
        for manifest in route_manifests(spec, RenderContext(
                name=p.name, namespace=p.namespace, uid=p.uid), gateway, pool,
                p.settings.default_endpoint_picker(), canary_weight):
            key = next(k for k, _, kind, obj_name in gateway_children(p.name)
                       if kind == manifest["kind"] and obj_name == manifest["metadata"]["name"])
            wanted_routes.add(key)
            pairs.append((manifest, route_children[key], "route"))
    except RenderError as err:  # cannot happen for a parsed spec; say so if it does
        raise Retry(f"cannot render the model's routes: {err}", 30.0) from err
    return [(api_version, kind, obj_name,
             key not in wanted_routes and route_children.get(key) is not None)
            for key, api_version, kind, obj_name in gateway_children(p.name)]


def _kind(rendered: Rendered, kind: str) -> dict[str, Any]:
    return next(c for c in rendered.children if c["kind"] == kind)


async def _render_stable(p: Pass, stable_spec: Mapping[str, Any], raw_spec: Mapping[str, Any],
                         record: ModelShape | None, recorded: str) -> Rendered | None:
    """The last good revision (a rollback's target), with today's replicas, autoscaling and
    rollout settings (none of them the pods': a stableSpec recorded with a canary does not
    combine with autoscaling switched on since); None when status.rollout.stableSpec does not
    render to the revision the operator recorded (`recorded`, status.rollout.current.hash):
    the status is writable by others, and a stableSpec edited there must not choose the pods'
    image and model."""
    today = ("replicas", "autoscaling", "rollout")
    stable_raw = {k: v for k, v in stable_spec.items() if k not in today}
    stable_raw.update({k: raw_spec[k] for k in today if k in raw_spec})
    template = str((stable_raw.get("runtime") or {}).get("template") or BUILTIN_TEMPLATE)
    try:
        source = await template_source(p.settings, p.cluster, p.memory, template)
        _, stable = p.memory.render(stable_raw, p.context(template, source, record), template)
    except (SpecError, LookupError, RenderError) as err:
        _untrusted(p, f"it does not render ({err})")
        return None
    if stable.revision != recorded:
        _untrusted(p, f"it renders revision {stable.revision}, not the recorded "
                   f"{recorded or '(none)'}")
        return None
    return stable


def _untrusted(p: Pass, why: str) -> None:
    if p.memory.first_time(p.namespace, p.name, f"untrusted-stable:{why}"):
        log.warning("%s/%s: status.rollout.stableSpec is not rolled back to: %s; the "
                    "Deployment is left as it is", p.namespace, p.name, why)
