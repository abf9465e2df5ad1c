"""One ModelCache: observe (the indexes, and the running download pods' last log lines) ->
decide (status.py, evict.py: pure) -> apply (its pods, its claim, its finalizer) -> status.

Deleting a ModelCache: the finalizer holds it while its download pods are deleted and, with
retention Delete, one clean-up pod per copy removes the files; when they have finished the
finalizer goes and the garbage collector removes the pods (owned by the ModelCache)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..api.fields import SpecError
from ..k8s import ApiError
from ..k8s.modelcache import CacheCluster
from .api import API_VERSION, KIND, CacheSpec, parse_cache_spec
from .evict import Resident, choose_evictions
from .optimize import Want
from .optimize import events as optimize_events
from .optimize import plan as plan_optimize
from .progress import Progress, last_progress
from .refusals import REFUSED_RETRY_S, Refusals, refusal_message, set_refused
from .render import (
    CONTAINER,
    FINALIZER,
    CacheRef,
    claim,
    claim_name,
    removal_pod,
    target_id,
)
from .status import CachePod, Copy, Decision, cache_status, copy_state

log = logging.getLogger("kubemaas.modelcache")
LOG_TAIL = 5
_UNREADABLE: set[str] = set()  # pods whose log could not be read (said once)


@dataclass(frozen=True)
class CacheSnapshot:
    body: Mapping[str, Any]
    pods: Sequence[CachePod] = ()
    nodes: Mapping[str, Mapping[str, str]] = field(default_factory=dict)  # name -> labels
    used_on: frozenset[str] = frozenset()  # nodes where a running model pod uses it ("" = pvc)
    # node storage, for the budget: other caches' copies per node
    neighbours: Mapping[str, Sequence[Resident]] = field(default_factory=dict)
    victims: Mapping[tuple[str, str], Mapping[str, Any]] = field(default_factory=dict)
    wants: Sequence[Want] = ()  # the option sets of the models on it (optimize.py)


class Memory:
    """The status last written per cache, until the watch delivers it."""

    def __init__(self) -> None:
        self.statuses: dict[tuple[str, str], tuple[int, dict[str, Any]]] = {}
        self.claims: set[tuple[str, str, str]] = set()
        self.failed_writes: dict[tuple[str, str], int] = {}  # reconciles failed in a row
        self.refusals = Refusals()

    def previous(self, body: Mapping[str, Any]) -> dict[str, Any]:
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        mine = self.statuses.get(key)
        if mine is not None and int(meta.get("resourceVersion") or 0) < mine[0]:
            return mine[1]
        self.statuses.pop(key, None)
        return dict(body.get("status") or {})


def _ref(body: Mapping[str, Any]) -> CacheRef:
    meta = body.get("metadata") or {}
    return CacheRef(name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid", ""))


def involved(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta.get("name"),
            "namespace": meta.get("namespace"), "uid": meta.get("uid")}


def selected_nodes(spec: CacheSpec, nodes: Mapping[str, Mapping[str, str]]) -> list[str]:
    node = spec.storage.node
    if node is None:
        return []
    chosen = set(n for n in node.nodes if n in nodes)
    if node.node_selector:
        chosen |= {name for name, labels in nodes.items()
                   if all(labels.get(k) == v for k, v in node.node_selector.items())}
    return sorted(chosen)


async def _progress(api: CacheCluster, ref: CacheRef, pods: Sequence[CachePod]) -> dict[
        str, Progress]:
    """The last progress line of each running download pod (a log that cannot be read leaves
    the previous figures in place)."""
    out: dict[str, Progress] = {}
    for pod in pods:
        if pod.role != "fetch" or pod.phase != "Running" or pod.deleting:
            continue
        try:
            text = await api.pod_log(ref.namespace, pod.name, CONTAINER, LOG_TAIL)
        except ApiError as err:
            if pod.name not in _UNREADABLE:  # once per pod: kwok's nodes serve no logs at all
                _UNREADABLE.add(pod.name)
                log.info("%s/%s: cannot read the progress of %s (%s); the status keeps the "
                         "last figures", ref.namespace, ref.name, pod.name, err)
            continue
        found = last_progress(text)
        if found is not None:
            out[pod.name] = found
    return out


def _budget(snap: CacheSnapshot, ref: CacheRef, spec: CacheSpec, decision: Decision,
            copies: list[Copy], previous: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Hold back first downloads that a node's budget has no room for; evict the least recently
    used copies that make room. Returns the evict pods to create."""
    node_spec = spec.storage.node
    if node_spec is None or node_spec.budget is None:
        return []
    need = int(spec.size_limit or (previous.get("bytesTotal") or 0) // max(1, len(copies)))
    evict: list[dict[str, Any]] = []
    for i, c in enumerate(copies):
        fresh = [m for m in decision.create if m["metadata"]["annotations"].get(
            "serving.kubemaas.io/cache-attempt") == "1" and m["spec"].get("nodeName") == c.node]
        if not fresh or c.node is None:
            continue
        choice = choose_evictions(node_spec.budget, snap.neighbours.get(c.node, ()),
                                  (ref.namespace, ref.name), need)
        if not choice.fits:
            decision.create = [m for m in decision.create if m not in fresh]
            copies[i] = Copy(c.node, "Pending", "WaitingForBudget", choice.message)
            continue
        for victim in choice.victims:
            body = snap.victims.get(victim)
            if body is None:
                continue
            try:
                vspec = parse_cache_spec(body.get("spec"))
            except SpecError:
                continue
            evict.append(removal_pod(_ref(body), vspec, c.node, "evict"))
    return evict


def clean_targets(snap: CacheSnapshot, spec: CacheSpec) -> list[str | None]:
    """The copies a deletion empties: the claim, or every node that may hold files: one with a
    download pod, one whose clean-up pod is there (the download pods it replaced are gone), or
    one the status lists (not evicted) that still exists (its pods may have been removed).
    From the download pods alone, the pass after a running one was deleted found no node and
    removed the finalizer while the clean-up pod ran: the files stayed."""
    if spec.storage.type == "pvc":
        return [None]
    nodes = {p.node for p in snap.pods if p.role in ("fetch", "clean") and p.node}
    listed = (snap.body.get("status") or {}).get("nodes")
    for entry in listed if isinstance(listed, list) else []:
        name = entry.get("name") if isinstance(entry, Mapping) else None
        if isinstance(name, str) and name in snap.nodes and entry.get("phase") != "Evicted":
            nodes.add(name)
    return [*sorted(nodes)]


async def _clean(snap: CacheSnapshot, api: CacheCluster, ref: CacheRef,
                 spec: CacheSpec) -> list[str]:
    """Start a clean-up pod per copy; the ones still running, each with why it does not run
    when it waits (its node gone, its image). A failed one is said once, in an Event on the
    pass that finds none running (the passes before it come every 2 s)."""
    busy, failed = [], []
    claim_of = claim_name(ref, spec)
    if claim_of is not None and not await api.claim_bound(ref.namespace, claim_of):
        return []  # no files: the claim was never made (refused) or bound, or is gone; a
        # clean-up pod would wait for it for ever, and the finalizer with it
    for node in clean_targets(snap, spec):
        clean = next((p for p in snap.pods if p.role == "clean"
                      and p.target == target_id(node)), None)
        if clean is None:
            manifest = removal_pod(ref, spec, node, "clean")
            try:
                await api.apply(manifest)
            except ApiError as err:
                if err.status != 403:  # 403: the namespace is going away
                    raise
                continue
            busy.append(f"clean-up pod {manifest['metadata']['name']}")
        elif clean.phase not in ("Succeeded", "Failed"):
            busy.append(f"clean-up pod {clean.name}" + (
                f" (it cannot start: {clean.waiting})" if clean.waiting else ""))
        elif clean.phase == "Failed":
            failed.append(clean.name)
    for name in failed if not busy else ():
        await api.post_event(involved(snap.body), "Warning", "CleanupFailed",
                             f"{name} could not remove the files; they stay")
    return busy


async def _finalize(snap: CacheSnapshot, api: CacheCluster, memory: Memory) -> float | None:
    body, ref = snap.body, _ref(snap.body)
    meta = body.get("metadata") or {}
    finalizers = list(meta.get("finalizers") or [])
    if FINALIZER not in finalizers:
        return None
    for pod in snap.pods:
        if pod.role in ("fetch", "optimize") and not pod.deleting and pod.phase in (
                "Pending", "Running"):
            await api.delete_pod(ref.namespace, pod.name)
    try:
        spec: CacheSpec | None = parse_cache_spec(body.get("spec"))
    except SpecError:
        spec = None
    if spec is not None and spec.retention == "Delete" and snap.used_on:
        # Like a claim's protection: the files stay while a running model reads them.
        where = ", ".join(sorted(n for n in snap.used_on if n)) or "its claim"
        previous = memory.previous(body)
        await write_status(api, memory, body, previous, {
            **previous, "reason": "InUse", "message": f"deletion waits until no running model "
            f"uses it (model pods on {where}); then its files are removed"})
        return 5.0
    if spec is not None and spec.retention == "Delete":
        busy = await _clean(snap, api, ref, spec)
        if busy:  # say so: the status still read Downloading (or Ready) while it waited
            previous = memory.previous(body)
            await write_status(api, memory, body, previous, {
                **previous, "reason": "CleaningUp", "message": (
                    "being deleted: waiting for " + "; ".join(busy) + " to remove the files")[
                        :2048]})
            return 2.0
    finalizers.remove(FINALIZER)
    try:
        await api.set_finalizers(ref.namespace, ref.name, finalizers,
                                 str(meta.get("resourceVersion") or ""))
    except ApiError as err:
        if err.status not in (404, 409):
            raise
        return 1.0 if err.status == 409 else None
    log.info("%s/%s: files cleaned up; finalizer removed", ref.namespace, ref.name)
    return None


async def _finalizer_refused(api: CacheCluster, memory: Memory, body: Mapping[str, Any],
                             err: ApiError) -> float:
    """The cleanup finalizer refused (a policy, RBAC, the schema): nothing starts without it
    (the files could not be removed on delete). The status says so, with a Warning Event and a
    log line once; the finalizer is tried again every minute and at each change."""
    meta = body.get("metadata") or {}
    previous = memory.previous(body)
    message = (f"the API server refused the cleanup finalizer {FINALIZER}: {err}; without it "
               "the cache's files could not be removed when it is deleted, so nothing starts; "
               "it is tried again every minute")[:2048]
    status = {**previous, "phase": previous.get("phase") or "Pending",
              "reason": "FinalizerRefused", "message": message}
    if status != previous:
        log.warning("%s/%s: %s", meta.get("namespace"), meta.get("name"), message)
        await write_status(api, memory, body, previous, status)
        if previous.get("phase") == status["phase"]:  # else write_status posted one
            await _post_events(api, body, _ref(body), [("Warning", "FinalizerRefused",
                                                        message)])
    return 60.0


async def reconcile_cache(snap: CacheSnapshot, api: CacheCluster, memory: Memory,
                          now: datetime | None = None) -> float | None:
    """One pass; returns when to look again (None: on the next event)."""
    body, ref = snap.body, _ref(snap.body)
    meta = body.get("metadata") or {}
    now = now or datetime.now(UTC)
    if meta.get("deletionTimestamp"):
        return await _finalize(snap, api, memory)
    if FINALIZER not in (meta.get("finalizers") or []):
        try:
            await api.set_finalizers(ref.namespace, ref.name,
                                     [*(meta.get("finalizers") or []), FINALIZER],
                                     str(meta.get("resourceVersion") or ""))
        except ApiError as err:
            if err.status in (404, 409):
                return 0.5 if err.status == 409 else None
            if not (err.policy_refused or err.invalid or err.status == 403):
                raise
            return await _finalizer_refused(api, memory, body, err)
    previous = memory.previous(body)
    try:
        spec = parse_cache_spec(body.get("spec"))
    except SpecError as err:
        status = {"phase": "Failed", "reason": "InvalidSpec", "message": str(err),
                  "observedGeneration": meta.get("generation") or 0}
        await write_status(api, memory, body, previous, status)
        return None
    progress = await _progress(api, ref, snap.pods)
    decision = Decision(status={})
    targets: list[str | None] = ([None] if spec.storage.type == "pvc"
                                 else list(selected_nodes(spec, snap.nodes)))
    generation = int(meta.get("generation") or 0)
    respec = previous.get("observedGeneration") not in (None, generation)
    copies = [copy_state(ref, spec, node, snap.pods, progress, previous,
                         (node or "") in snap.used_on, now, decision, respec)
              for node in targets]
    evictions = _budget(snap, ref, spec, decision, copies, previous)
    status = cache_status(ref, spec, generation, copies, previous, now)
    optimizing = plan_optimize(ref, spec, copies, snap.pods, snap.wants)
    if optimizing.entries:
        status["optimizations"] = optimizing.entries
    decision.create += optimizing.create
    decision.delete += optimizing.delete
    await _apply_children(api, memory, ref, generation, claim(ref, spec), decision, evictions,
                          status)
    for name in decision.delete:
        await api.delete_pod(ref.namespace, name)
    await write_status(api, memory, body, previous, status)
    await _post_events(api, body, ref, optimize_events(previous.get("optimizations") or [],
                                                       optimizing.entries))
    waits = [w for w in (decision.requeue_after,) if w is not None]
    if decision.read_logs:
        waits.append(float(spec.download.progress_interval_seconds))
    if decision.create or decision.delete:
        waits.append(1.0)
    return min(waits) if waits else None


async def _apply_children(api: CacheCluster, memory: Memory, ref: CacheRef, generation: int,
                          wanted_claim: dict[str, Any] | None, decision: Decision,
                          evictions: list[dict[str, Any]], status: dict[str, Any]) -> None:
    """The claim, the cache's own pods, then the evictions. A refused one ends the list and is
    not asked for again before REFUSED_RETRY_S (refusals.py) unless the spec changes; an invalid
    one on the next change."""
    key = (ref.namespace, ref.name)
    held = memory.refusals.held(key, generation)
    if held is not None and decision.create:
        set_refused(status, held[0])
        decision.create, decision.requeue_after = [], held[1]
        return
    if wanted_claim is not None and decision.create and not await _apply_claim(
            api, wanted_claim, status):
        decision.create = []  # pods would wait for the claim, or write to the old one
    # Its own pods first: evictions make room for a download, so one the API server refuses
    # (its namespace is being deleted: 403) must not evict another cache's copy.
    elif await _apply_pods(api, decision.create, status):
        await _apply_pods(api, evictions, status, victims=True)
    else:
        decision.create = []
    if status.get("reason") == "Refused":
        memory.refusals.remember(key, generation, str(status.get("message") or ""))
        decision.requeue_after = REFUSED_RETRY_S
    elif decision.create:
        memory.refusals.forget(key)


async def _apply_claim(api: CacheCluster, manifest: dict[str, Any],
                       status: dict[str, Any]) -> bool:
    """Apply the claim the operator creates; one the API server refuses (a bound claim keeps
    its spec: another storageClassName, a smaller size) fails the cache with its words (it
    used to be logged only, the status staying at its last message)."""
    try:
        await api.apply(manifest)
    except ApiError as err:
        if not (err.invalid or err.status == 403):
            raise
        name = manifest["metadata"]["name"]
        if err.policy_refused:
            _refused(status, f"the claim {name}", err)
            return False
        message = (f"the API server refused the claim {name}: {err.message}; a bound claim "
                   "keeps its storage class and cannot shrink: set spec.storage.pvc back, or "
                   "delete the claim and then change the ModelCache's spec")
        status.update(phase="Failed", reason="ClaimRejected", message=message[:2048])
        for condition in status.get("conditions") or []:
            condition.update(status="False", reason="ClaimRejected", message=message[:1024])
        return False
    return True


def _refused(status: dict[str, Any], what: str, err: ApiError) -> None:
    set_refused(status, refusal_message(what, err))


async def _apply_pods(api: CacheCluster, manifests: list[dict[str, Any]],
                      status: dict[str, Any], victims: bool = False) -> bool:
    """Apply the pods; one the API server refuses fails the cache (status) and ends the list
    (False). An evict pod (`victims`) refused because the other cache's namespace is being
    deleted is passed over: that copy leaves with its namespace."""
    for manifest in manifests:
        try:
            await api.apply(manifest)
        except ApiError as err:
            if victims and err.namespace_terminating:
                log.info("not evicting from %s: its namespace is being deleted",
                         manifest["metadata"]["namespace"])
                continue
            if err.policy_refused:  # e.g. a ResourceQuota, Pod Security refuses the hostPath
                _refused(status, f"the pod {manifest['metadata']['name']}", err)
                return False
            if err.invalid or err.status == 403:
                status.update(phase="Failed", reason="PodRejected", message=(
                    f"the API server refused the pod {manifest['metadata']['name']}: "
                    f"{err.message}"))
                return False
            raise
    return True


async def _post_events(api: CacheCluster, body: Mapping[str, Any], ref: CacheRef,
                       events: Iterable[tuple[str, str, str]]) -> None:
    for kind, reason, message in events:
        try:
            await api.post_event(involved(body), kind, reason, message)
        except ApiError as err:
            log.warning("%s/%s: cannot post an Event: %s", ref.namespace, ref.name, err)


async def write_status(api: CacheCluster, memory: Memory, body: Mapping[str, Any],
                 previous: Mapping[str, Any], status: dict[str, Any]) -> None:
    if status == previous:
        return
    meta = body.get("metadata") or {}
    key = (meta["namespace"], meta["name"])
    try:
        response = await api.patch_status(*key, status, previous)
    except ApiError as err:
        if err.status == 404:
            return
        raise
    rv = int((response.get("metadata") or {}).get("resourceVersion") or 0)
    memory.statuses[key] = (rv, status)
    if previous.get("phase") != status.get("phase"):
        failed = status.get("phase") == "Failed" or status.get("reason") == "FinalizerRefused"
        try:
            await api.post_event(involved(body), "Warning" if failed else "Normal",
                                 str(status.get("reason") or status.get("phase")),
                                 str(status.get("message") or ""))
        except ApiError as err:
            log.warning("%s/%s: cannot post an Event: %s", *key, err)
