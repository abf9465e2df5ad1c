"""PURE: GPU placement (resources, node affinity, tolerations) and a capacity check.

`placement(spec)` says what a replica's pod must ask for and where it may run; `check_capacity`
counts, from the nodes' allocatable resources minus what scheduled pods already request, how many
replicas could be placed right now, and when that is fewer than asked says so with the numbers.
For the surge-or-replace decision it can first take off what waiting pods (unscheduled, or owed
by a Deployment) will claim: `free_after_demand`, with `may_land_on` deciding where each may go.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .api import GPUSpec, ModelDeploymentSpec

GPU_TAINT_KEY = "nvidia.com/gpu"
PRODUCT_LABEL = "nvidia.com/gpu.product"
MEMORY_LABEL = "nvidia.com/gpu.memory"
PRESENT_LABEL = "nvidia.com/gpu.present"


@dataclass(frozen=True)
class NodeInfo:
    """What the capacity check needs to know about a node (from the operator's node index)."""

    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, Any], ...] = ()
    allocatable: Mapping[str, int] = field(default_factory=dict)
    unschedulable: bool = False

    @property
    def product(self) -> str:
        return self.labels.get(PRODUCT_LABEL, "")


@dataclass(frozen=True)
class Placement:
    """The scheduling part of a replica's pod spec."""

    requests: Mapping[str, str]
    limits: Mapping[str, str]
    node_selector: Mapping[str, str]
    affinity: Mapping[str, Any]
    tolerations: tuple[Mapping[str, Any], ...]


# Capacity reasons that waiting cannot cure: no node the model may use is big enough for one
# replica, or no node offers the GPU product it names. "Not now" is InsufficientGPU.
# ModelTooLarge: GPU sizing (sizing.py) found no node type that holds a `gpu.count: auto` model.
NEVER_FIT_REASONS = ("GPURequestTooLarge", "UnknownGPUProduct", "ModelTooLarge")


@dataclass(frozen=True)
class Capacity:
    """Whether the wanted replicas fit in the free capacity of matching nodes, and why not."""

    fits: bool
    wanted: int
    room: int
    reason: str = ""
    message: str = ""
    summary: str = ""  # "Reason: short text" for the Reason column

    @property
    def never(self) -> bool:
        """No node as the cluster is now could ever hold one replica: the spec must change."""
        return self.reason in NEVER_FIT_REASONS


def _gpu_affinity_terms(spec: ModelDeploymentSpec) -> list[dict[str, Any]]:
    gpu = spec.gpu
    if gpu is None:
        if spec.scheduling.allow_gpu_nodes:
            return []
        return [{"key": PRESENT_LABEL, "operator": "NotIn", "values": ["true"]}]
    exprs: list[dict[str, Any]] = []
    if gpu.products:
        exprs.append({"key": PRODUCT_LABEL, "operator": "In", "values": sorted(gpu.products)})
    mib = gpu.min_memory_mib
    if mib is not None:
        exprs.append({"key": MEMORY_LABEL, "operator": "Gt", "values": [str(mib - 1)]})
    return exprs


def placement(spec: ModelDeploymentSpec) -> Placement:
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    res = spec.runtime.resources
    if res.cpu is not None:
        requests["cpu"] = res.cpu
    if res.cpu_limit is not None:
        limits["cpu"] = res.cpu_limit
    if res.memory is not None:
        requests["memory"] = res.memory
        limits["memory"] = res.memory
    tolerations: list[Mapping[str, Any]] = []
    if spec.gpu is not None:
        requests[spec.gpu.resource] = str(spec.gpu.count)
        limits[spec.gpu.resource] = str(spec.gpu.count)
        tolerations.append({"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"})
    tolerations.extend(t.to_k8s() for t in spec.scheduling.tolerations)

    affinity: dict[str, Any] = {k: v for k, v in spec.scheduling.affinity.items()}
    ours = _gpu_affinity_terms(spec)
    if ours:
        node_aff = dict(affinity.get("nodeAffinity") or {})
        required = dict(node_aff.get("requiredDuringSchedulingIgnoredDuringExecution") or {})
        user_terms = list(required.get("nodeSelectorTerms") or [])
        if user_terms:
            terms = [{**t, "matchExpressions": [*(t.get("matchExpressions") or []), *ours]}
                     for t in user_terms]
        else:
            terms = [{"matchExpressions": ours}]
        required["nodeSelectorTerms"] = terms
        node_aff["requiredDuringSchedulingIgnoredDuringExecution"] = required
        affinity["nodeAffinity"] = node_aff
    return Placement(requests=requests, limits=limits,
                     node_selector=dict(spec.scheduling.node_selector),
                     affinity=affinity, tolerations=tuple(tolerations))


def _tolerates(taint: Mapping[str, Any], tolerations: Iterable[Mapping[str, Any]]) -> bool:
    if taint.get("effect") == "PreferNoSchedule":
        return True
    for t in tolerations:
        if t.get("effect") and t.get("effect") != taint.get("effect"):
            continue
        if t.get("operator") == "Exists":
            if not t.get("key") or t.get("key") == taint.get("key"):
                return True
        elif t.get("key") == taint.get("key") and (t.get("value") or "") == (
                taint.get("value") or ""):
            return True
    return False


def _matches(node: NodeInfo, spec: ModelDeploymentSpec, place: Placement,
             cordoned_too: bool = False) -> bool:
    if node.unschedulable and not cordoned_too:
        return False
    if any(node.labels.get(k) != v for k, v in place.node_selector.items()):
        return False
    if not all(_tolerates(t, place.tolerations) for t in node.taints):
        return False
    gpu = spec.gpu
    if gpu is None:
        return True
    if gpu.products and node.product not in gpu.products:
        return False
    mib = gpu.min_memory_mib
    if mib is not None:
        try:
            if int(node.labels.get(MEMORY_LABEL, "0")) < mib:
                return False
        except ValueError:
            return False
    return True


@dataclass(frozen=True)
class PendingDemand:
    """A pod that waits for GPUs: Pending, not bound to a node yet (from the pod index).

    Its GPU requests are demand that the free GPUs of the nodes it may land on serve before any
    surge: the scheduler places it as soon as a GPU frees up there.
    """

    name: str  # namespace/name, for a stable order
    requests: Mapping[str, int]
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    # requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms (OR of ANDs)
    node_terms: tuple[Mapping[str, Any], ...] = ()


def pending_demand(name: str, pod_spec: Mapping[str, Any],
                   requests: Mapping[str, int]) -> PendingDemand:
    """The scheduling constraints of a Pending pod's spec, as PendingDemand."""
    affinity = ((pod_spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution") or {}
    return PendingDemand(
        name=name, requests=dict(requests),
        node_selector={str(k): str(v) for k, v in (pod_spec.get("nodeSelector") or {}).items()},
        tolerations=tuple(dict(t) for t in pod_spec.get("tolerations") or []),
        node_terms=tuple(dict(t) for t in affinity.get("nodeSelectorTerms") or []))


def owed_pods(demand: PendingDemand, replicas: int, live: int) -> list[PendingDemand]:
    """The pods a Deployment owes: `replicas` asked for, `live` (not terminating) exist.

    While a replacement runs, the Deployment controller deletes an old pod and creates its
    successor a moment later (seconds, when it is busy with many Deployments); in between, the
    GPU looks free but is spoken for. Each missing pod counts as waiting demand like a Pending
    one (its constraints are the Deployment's pod template)."""
    return [dataclasses.replace(demand, name=f"{demand.name}#{i}")
            for i in range(max(0, replicas - live))]


def _expression_holds(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op = expr.get("key", ""), expr.get("operator", "")
    values = [str(v) for v in expr.get("values") or []]
    if op == "In":
        return key in labels and labels[key] in values
    if op == "NotIn":
        return key not in labels or labels[key] not in values
    if op == "Exists":
        return key in labels
    if op == "DoesNotExist":
        return key not in labels
    if op in ("Gt", "Lt") and key in labels and values:
        try:
            have, bound = int(labels[key]), int(values[0])
        except ValueError:
            return False
        return have > bound if op == "Gt" else have < bound
    return False


def _term_holds(term: Mapping[str, Any], node: NodeInfo) -> bool:
    fields = {"metadata.name": node.name}
    return (all(_expression_holds(e, node.labels) for e in term.get("matchExpressions") or [])
            and all(_expression_holds(e, fields) for e in term.get("matchFields") or []))


def may_land_on(demand: PendingDemand, node: NodeInfo) -> bool:
    """Whether the scheduler could bind the waiting pod to `node` (selector, taints, required
    node affinity; CPU and memory are not considered)."""
    if node.unschedulable:
        return False
    if any(node.labels.get(k) != v for k, v in demand.node_selector.items()):
        return False
    if not all(_tolerates(t, demand.tolerations) for t in node.taints
               if t.get("effect") in ("NoSchedule", "NoExecute")):
        return False
    terms = [t for t in demand.node_terms if t.get("matchExpressions") or t.get("matchFields")]
    return not terms or any(_term_holds(t, node) for t in terms)


def free_after_demand(nodes: Iterable[NodeInfo], used: Mapping[str, Mapping[str, int]],
                      pending: Iterable[PendingDemand]) -> dict[str, dict[str, int]]:
    """Free GPU resources per node once the waiting pods have taken theirs.

    Each pending pod (in name order) is placed the way the scheduler's default scoring would
    lean, on the node it may land on with the most free of its resource, and what it asks for
    (at most what is free there) is taken from that node. A pod that fits nowhere yet takes what
    is left on the candidate with the most free: it waits for GPUs there, and a surge must not
    take them. A pod that asks for more than any node has can never land and takes nothing.
    """
    node_list = sorted(nodes, key=lambda n: n.name)
    free: dict[str, dict[str, int]] = {}
    for node in node_list:
        taken = used.get(node.name, {})
        free[node.name] = {r: max(0, total - taken.get(r, 0))
                           for r, total in node.allocatable.items()}
    for demand in sorted(pending, key=lambda d: d.name):
        candidates = [n for n in node_list if may_land_on(demand, n)
                      and all(n.allocatable.get(r, 0) >= c for r, c in demand.requests.items())]
        if not candidates or not demand.requests:
            continue
        fits = [n for n in candidates if all(free[n.name].get(r, 0) >= c
                                             for r, c in demand.requests.items())]
        pool = fits or candidates

        wants = tuple(demand.requests)
        best = min(pool, key=lambda n: (-sum(free[n.name].get(r, 0) for r in wants), n.name))
        for resource, count in demand.requests.items():
            have = free[best.name].get(resource, 0)
            free[best.name][resource] = max(0, have - count)
    return free


def _short(product: str) -> str:
    return product.removeprefix("NVIDIA-") or "unlabelled"


def check_capacity(spec: ModelDeploymentSpec, nodes: Iterable[NodeInfo],
                   used: Mapping[str, Mapping[str, int]], wanted: int,
                   pending: Iterable[PendingDemand] = ()) -> Capacity:
    """How many of `wanted` replicas fit now; `used` excludes this model's own pods.

    `pending`: pods of others that wait for GPUs (unscheduled); their requests come off the free
    capacity of the nodes they may land on first (free_after_demand), so a GPU that another
    model's replacement just gave back is not counted as room for a surge.

    Only GPU models are checked (CPU and memory are left to the scheduler, whose message reaches
    the status when pods stay Pending). The user's own affinity terms are not evaluated here.
    """
    gpu = spec.gpu
    if gpu is None or wanted == 0:
        return Capacity(fits=True, wanted=wanted, room=wanted)
    if gpu.sizing is not None and gpu.sizing.reason:  # gpu.count auto found no fit
        return Capacity(fits=False, wanted=wanted, room=0, reason=gpu.sizing.reason,
                        message=gpu.sizing.message, summary=gpu.sizing.summary)
    place = placement(spec)
    resource, per = gpu.resource, gpu.count
    nodes = list(nodes)
    pending = list(pending)
    if pending:
        after = free_after_demand(nodes, used, pending)
        used = {n.name: {r: total - after[n.name].get(r, 0)
                         for r, total in n.allocatable.items()} for n in nodes}
    free_by_product: dict[str, list[tuple[str, int]]] = {}
    others: dict[str, int] = {}
    room = 0
    for node in sorted(nodes, key=lambda n: n.name):
        total = node.allocatable.get(resource, 0)
        if total <= 0:
            continue
        free = max(0, total - used.get(node.name, {}).get(resource, 0))
        if not _matches(node, spec, place):
            others[node.product] = others.get(node.product, 0) + free
            continue
        free_by_product.setdefault(node.product, []).append((node.name, free))
        room += free // per
    if room >= wanted:
        return Capacity(fits=True, wanted=wanted, room=room)
    never = _never_fits(spec, nodes, place, wanted)
    if never is not None:
        return never
    return _insufficient(gpu, wanted, room, free_by_product, others)


def _insufficient(gpu: GPUSpec, wanted: int, room: int,
                  free_by_product: dict[str, list[tuple[str, int]]],
                  others: dict[str, int]) -> Capacity:
    """The InsufficientGPU verdict, naming the free GPUs per product and node."""
    resource, per = gpu.resource, gpu.count
    needed = wanted * per
    where = " or ".join(sorted(gpu.products)) if gpu.products else "any product"
    if gpu.min_memory:
        where += f" with at least {gpu.min_memory} per GPU"
    free_total = sum(f for entries in free_by_product.values() for _, f in entries)
    if free_by_product:
        parts = []
        for product, entries in sorted(free_by_product.items()):
            detail = ", ".join(f"{name} {free}" for name, free in entries)
            parts.append(f"{product}: {sum(f for _, f in entries)} free ({detail})")
        have = "; ".join(parts)
    else:
        have = "no schedulable node offers it"
        if others:
            have += " (other nodes: " + ", ".join(
                f"{p or 'unlabelled'} {f} free" for p, f in sorted(others.items())) + ")"
    message = (f"needs {wanted} replica(s) x {per} {resource} on one node each ({needed} in all) "
               f"on {where}; room for {room} replica(s) now. Free {resource} per product: {have}")
    if gpu.sizing is not None:  # gpu.count auto: say why this many
        message = f"{gpu.sizing.need}. {message[0].upper()}{message[1:]}"
    label = resource.removeprefix("nvidia.com/")
    summary = f"InsufficientGPU: needs {wanted}x{per} {label}, {free_total} free"
    if free_by_product:
        summary += " on " + ", ".join(_short(p) for p in sorted(free_by_product))
    return Capacity(fits=False, wanted=wanted, room=room, reason="InsufficientGPU",
                    message=message, summary=summary)


def _never_fits(spec: ModelDeploymentSpec, nodes: list[NodeInfo], place: Placement,
                wanted: int) -> Capacity | None:
    """GPURequestTooLarge or UnknownGPUProduct when no node as the cluster is now could hold one
    replica however many GPUs were freed (a cordoned node counts: it may come back); None when
    waiting for capacity may help (then it is InsufficientGPU)."""
    gpu = spec.gpu
    assert gpu is not None
    resource, per = gpu.resource, gpu.count
    label = resource.removeprefix("nvidia.com/")
    offered = sorted({n.product for n in nodes if n.product})
    if gpu.products and offered and not set(gpu.products) & set(offered):
        asked = " or ".join(sorted(gpu.products))
        message = (f"no node offers {asked} (label {PRODUCT_LABEL}); the cluster's GPU nodes "
                   f"offer {', '.join(offered)}: set spec.gpu.products to one of them")
        return Capacity(fits=False, wanted=wanted, room=0, reason="UnknownGPUProduct",
                        message=message,
                        summary=f"UnknownGPUProduct: no node offers {asked}; nodes offer "
                                + ", ".join(_short(p) for p in offered))
    sizes = [(n.allocatable.get(resource, 0), n.name, n.product) for n in nodes
             if n.allocatable.get(resource, 0) > 0 and _matches(n, spec, place, True)]
    if not sizes:
        return None
    most, name, product = max(sizes, key=lambda t: (t[0], t[1]))
    if most >= per:
        return None
    message = (f"one replica needs {per} {resource} on one node, but the largest node it may use "
               f"has {most} ({name}, {product or 'unlabelled'}): lower spec.gpu.count to at "
               f"most {most}, or allow nodes with more GPUs")
    return Capacity(fits=False, wanted=wanted, room=0, reason="GPURequestTooLarge",
                    message=message,
                    summary=f"GPURequestTooLarge: needs {per} {label} per replica, the largest "
                            f"node has {most} ({name})")


def most_held(spec: ModelDeploymentSpec, nodes: Iterable[NodeInfo]) -> tuple[int, int]:
    """(replicas, GPUs): how many replicas of `spec` the matching nodes could hold were nothing
    else on them (each node's allocatable in whole replicas; a cordoned node counts: it may come
    back), and the GPUs they have; (0, 0) for a CPU model or no matching node."""
    gpu = spec.gpu
    if gpu is None or gpu.count <= 0:
        return 0, 0
    place = placement(spec)
    sizes = [n.allocatable.get(gpu.resource, 0) for n in nodes
             if n.allocatable.get(gpu.resource, 0) > 0 and _matches(n, spec, place, True)]
    return sum(s // gpu.count for s in sizes), sum(sizes)


def gpu_summary(spec: ModelDeploymentSpec, placed_products: Iterable[str] = ()) -> str:
    """The GPU column: '1xNVIDIA-H100-80GB-HBM3', '2xmig-1g.10gb', '-' for CPU."""
    gpu = spec.gpu
    if gpu is None:
        return "-"
    if gpu.mig_profile:
        return f"{gpu.count}xmig-{gpu.mig_profile}"
    placed = sorted({p for p in placed_products if p})
    products = placed or sorted(gpu.products)
    return f"{gpu.count}x{'|'.join(products) if products else 'any'}"
