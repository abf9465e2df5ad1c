"""Step 6 of a ModelDeployment's reconcile pass: apply the children that are missing, changed or
drifted, delete those no longer wanted, and hold the autoscaling floor (floor.py). A child is
applied only when its spec-hash differs or it drifted from the desired manifest, so a steady
state writes nothing; the API server's refusal of a manifest is remembered (not asked again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .api import ModelDeploymentSpec
from .drift import drift
from .floor import autoscaler_observed, hand_over, raise_to_floor, starts_at_zero
from .k8s import ApiError, AsyncCluster
from .memory import Memory
from .observed import deployment_info
from .ownership import NameConflict, conflict_message, foreign_owner
from .render import CHILD_KINDS, SPEC_HASH, canary_name
from .render.autoscaler import Choice
from .writes import Refused, Retry, pin_replicas

# (manifest, observed, role): role "main" (the children of CHILD_KINDS), "canary" (the canary
# Deployment) or "route" (the HTTPRoute split's Services and HTTPRoute, an InferencePool).
Pair = tuple[dict[str, Any], Mapping[str, Any] | None, str]


class Forbidden(Exception):
    """RBAC does not let the operator write a child (an administrator removed an optional kind
    from its ClusterRole): retrying at once cannot help, the model says so in its status."""


@dataclass
class Children:
    """One model's children as this pass sees them, updated with what it applies."""

    cluster: AsyncCluster
    memory: Memory
    name: str
    namespace: str
    main: dict[str, Mapping[str, Any] | None]  # kind -> the child of CHILD_KINDS
    canary: Mapping[str, Any] | None  # the canary Deployment
    applied: list[str]  # what was written and why, for the log
    deleted: list[str]
    hold_s: float = 0.0  # a refused child (Refused, Forbidden) is asked again after this long


def _why(child: Mapping[str, Any], have: Mapping[str, Any] | None) -> str | None:
    """Why the child must be applied, or None."""
    if have is None:
        return "missing"
    if (have.get("metadata", {}).get("annotations") or {}).get(SPEC_HASH) != child[
            "metadata"]["annotations"][SPEC_HASH]:
        return "spec changed"
    at = drift(child, have)
    return f"drifted at {at}" if at is not None else None


async def apply(c: Children, pairs: Iterable[Pair], spec: ModelDeploymentSpec,
                engine: Choice | None) -> str | None:
    """Apply each child that needs it; the API server's message when it refused one (nothing
    after it is applied then). NameConflict: a missing child's name is another resource's."""
    for child, have, role in pairs:
        kind = child["kind"]
        reason = _why(child, have)
        if reason is None:
            continue
        main_deployment = role == "main" and kind == "Deployment"
        at_zero = main_deployment and have is None and starts_at_zero(spec, engine)
        try:
            _held(c, child)
            refused = c.memory.rejected(child)
            if refused is not None:  # the same manifest again: do not ask again
                raise ApiError(422, "Invalid", refused)
            if reason == "missing":  # one read before creating it: is the name someone else's?
                await _not_taken(c, child)
            if main_deployment and have is not None:
                pin = hand_over(spec, deployment_info(have).spec_replicas,
                                autoscaler_observed(c.main))
                if pin is not None:
                    await pin_replicas(c.cluster, c.memory, c.name, c.namespace, pin)
            applied = await _apply(
                c, {**child, "spec": {**child["spec"], "replicas": 0}} if at_zero else child,
                reason)
            if at_zero:  # the floor keeps 0 when the next apply leaves replicas out (floor.py)
                applied = await pin_replicas(c.cluster, c.memory, c.name, c.namespace, 0)
        except ApiError as err:
            if err.policy_refused:
                raise _hold(c, child, Refused(
                    f"the cluster's policy refused the {kind} {c.namespace}/"
                    f"{child['metadata']['name']}: {err.message}; it is tried again at each "
                    "resync")) from err
            if err.invalid:
                c.memory.reject(child, err.message)
                return f"the API server rejected the {kind}: {err.message}"
            if err.status == 403 and not err.namespace_terminating:
                raise _hold(c, child, Forbidden(
                    f"the operator may not write the {kind} {c.namespace}/"
                    f"{child['metadata']['name']}: {err.message}; give the operator's "
                    "ClusterRole the verbs on it (operator/kubemaas_operator/rbac/operator.yaml "
                    "or the chart); it is tried again at each resync")) from err
            raise Retry(f"cannot apply the {kind} {c.namespace}/{c.name}: {err}") from err
        c.memory.remember(applied)
        if role == "canary":
            c.canary = applied
        elif role == "main":
            c.main[kind] = applied
        what = {"canary": "canary ", "route": f"{child['metadata']['name']} "}.get(role, "")
        c.applied.append(f"{what}{kind} ({reason})")
    return None


def _held(c: Children, child: Mapping[str, Any]) -> None:
    """Raise again what refused exactly this manifest less than c.hold_s ago, asking nothing:
    each event of the model or of its children (an annotation, a pod's status) used to ask
    again, a refused write each."""
    held = c.memory.held_refusal(child, c.hold_s)
    if held is not None:
        reason, message = held
        raise (Forbidden if reason == "Forbidden" else Refused)(message)


def _hold(c: Children, child: Mapping[str, Any], err: Refused | Forbidden) -> Exception:
    c.memory.hold_refusal(child, type(err).__name__, str(err))
    return err


async def _apply(c: Children, child: Mapping[str, Any], reason: str) -> dict[str, Any]:
    """Server-side apply of the child. A drifted child whose manifest the API server took before
    (the same spec-hash) and refuses now was made invalid by a hand edit that added a list item
    beside ours: a Service port's number changed by hand leaves that port (another manager's)
    and ours of the same name, a duplicate. Its lists are then replaced with ours whole (a merge
    patch) and the apply is tried again."""
    try:
        return await c.cluster.apply(child)
    except ApiError as err:
        if not (err.invalid and reason.startswith("drifted")):
            raise
    await c.cluster.replace_spec_lists(child)
    return await c.cluster.apply(child)


async def _not_taken(c: Children, child: Mapping[str, Any]) -> None:
    """Raise NameConflict when the object of the child's name is another resource's."""
    name = child["metadata"]["name"]
    try:
        live = await c.cluster.get_optional(child["apiVersion"], child["kind"], c.namespace, name)
    except ApiError as err:
        raise Retry(f"cannot read the {child['kind']} {c.namespace}/{name}: {err}") from err
    owner = foreign_owner(child, live) if live is not None else None
    if owner is not None:
        raise NameConflict(conflict_message(child, owner))


async def _delete(c: Children, api_version: str, kind: str, name: str, said: str) -> None:
    try:
        await c.cluster.delete(api_version, kind, c.namespace, name)
    except ApiError as err:
        if err.policy_refused:
            raise Refused(f"the cluster's policy refused to delete the {kind} {c.namespace}/"
                          f"{name}: {err.message}; it is tried again at each resync") from err
        raise Retry(f"cannot delete the {kind} {c.namespace}/{name}: {err}") from err
    c.memory.forget(kind, c.namespace, name)
    c.deleted.append(said)


async def prune(c: Children, canary_wanted: bool, wanted_kinds: set[str],
                routes: Iterable[tuple[str, str, str, bool]]) -> None:
    """Delete the canary Deployment when no canary runs, the routing children no longer wanted
    (`routes`: apiVersion, kind, name, and whether one exists that is not wanted) and the main
    children the render no longer makes."""
    if not canary_wanted and c.canary is not None:
        await _delete(c, "apps/v1", "Deployment", canary_name(c.name), "canary Deployment")
        c.canary = None
    for api_version, kind, obj_name, unwanted in routes:
        if unwanted:
            await _delete(c, api_version, kind, obj_name, f"{obj_name} {kind}")
    for api_version, kind in CHILD_KINDS:
        if kind not in wanted_kinds and c.main.get(kind) is not None:
            await _delete(c, api_version, kind, c.name, kind)


async def hold_floor(c: Children, spec: ModelDeploymentSpec, engine: Choice | None) -> None:
    """The autoscaling floor: a new Deployment starts at minReplicas, not at the default of 1."""
    dep = c.main.get("Deployment")
    floor = raise_to_floor(spec, deployment_info(dep).spec_replicas, engine) if dep else None
    if dep is not None and floor is not None:
        # a floor a policy refused is asked again after c.hold_s, not at each event (as _held)
        held = c.memory.held(c.namespace, c.name, floor, what="floor")
        if held is not None:
            raise Refused(str(held[0]))
        try:
            c.main["Deployment"] = await pin_replicas(c.cluster, c.memory, c.name, c.namespace,
                                                      floor)
        except Refused as err:
            c.memory.hold(c.namespace, c.name, floor, c.hold_s, str(err), what="floor")
            raise
        c.applied.append(f"Deployment replicas {floor} (autoscaling floor)")


async def pin_canary(c: Children, replicas: int | None) -> None:
    """Only the canary Deployment's replicas, its template left as it is: a canary that gives its
    replicas back after the spec went back to the current revision (its pods keep theirs)."""
    if replicas is None or c.canary is None or deployment_info(c.canary).spec_replicas == replicas:
        return
    c.canary = await pin_replicas(c.cluster, c.memory, canary_name(c.name), c.namespace,
                                  replicas)
    c.applied.append(f"canary Deployment replicas {replicas} (given back)")
