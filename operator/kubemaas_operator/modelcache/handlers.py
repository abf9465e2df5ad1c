"""kopf indexes and handlers of ModelCaches (registered when the operator's handlers.py imports
this module). A work queue of its own runs one reconcile per cache at a time; every event of a
cache, of its pods or of a model pod that mounts it, and each progress interval while a download
runs, queue one. When what a ModelDeployment needs of a cache changes (ready, the nodes with a
copy), the ModelDeployments that name it are queued too.

Indexes:
  cache_index      (namespace, name) -> the ModelCache (compact JSON)
  cache_pod_index  ("own", namespace, cache) -> CachePod of its download/clean/evict pods
                   ("use", namespace, cache) -> (node, running) of model pods that mount it
  cache_node_index "nodes" -> (name, labels) of every node
"""

from __future__ import annotations

import json
import logging
from collections.abc import Hashable, Mapping
from typing import Any

import kopf

from .. import standby
from ..api_failures import REPORT_FROM, failing_message, report_delay
from ..k8s import ApiError
from ..k8s.modelcache import CacheCluster
from ..timestamps import parse_time
from . import implicit
from .api import GROUP, PLURAL, VERSION, parse_cache_spec
from .evict import Resident
from .mount import CacheMount, mount_status
from .optimize import CONTAINER as OPTIMIZE_CONTAINER
from .optimize import KEY_LABEL
from .optimize_watch import cache_wants
from .reconcile import CacheSnapshot, Memory, involved, reconcile_cache, write_status
from .render import (
    ATTEMPT_ANNOTATION,
    CACHE_LABEL,
    CONTAINER,
    NODE_ANNOTATION,
    ROLE_LABEL,
    SPEC_LABEL,
    TARGET_LABEL,
)
from .status import CachePod, pod_waiting

log = logging.getLogger("kubemaas.modelcache")
CACHE = (GROUP, VERSION, PLURAL)
_state: dict[str, Any] = {}




def cache_pod(body: Mapping[str, Any]) -> CachePod:
    meta, status = body.get("metadata") or {}, body.get("status") or {}
    labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
    terminated: Mapping[str, Any] = {}
    for c in status.get("containerStatuses") or []:
        if c.get("name") in (CONTAINER, "remove", OPTIMIZE_CONTAINER):
            terminated = (c.get("state") or {}).get("terminated") or {}
    try:
        attempt = int(notes.get(ATTEMPT_ANNOTATION) or 0)
    except ValueError:
        attempt = 0
    return CachePod(name=meta.get("name", ""), role=labels.get(ROLE_LABEL, ""),
                    target=labels.get(TARGET_LABEL, ""), node=notes.get(NODE_ANNOTATION),
                    spec_hash=labels.get(SPEC_LABEL, ""), attempt=attempt,
                    phase=status.get("phase") or "Pending",
                    exit_code=terminated.get("exitCode"), message=terminated.get("message"),
                    finished_at=parse_time(terminated.get("finishedAt")),
                    deleting=bool(meta.get("deletionTimestamp")), key=labels.get(KEY_LABEL, ""),
                    waiting=pod_waiting(status))


@kopf.index(*CACHE)
async def cache_index(body: kopf.Body, namespace: str | None, name: str, **_: Any) -> Any:
    out = {k: body.get(k) for k in ("metadata", "spec", "status")}
    out["metadata"] = {k: v for k, v in dict(body.get("metadata") or {}).items()
                       if k != "managedFields"}
    return {(namespace or "", name): json.dumps(out, separators=(",", ":"), default=str)}


@kopf.index("", "v1", "pods", labels={CACHE_LABEL: kopf.PRESENT})
async def cache_pod_index(body: kopf.Body, namespace: str | None, labels: Mapping[str, str],
                          spec: Mapping[str, Any], status: Mapping[str, Any], **_: Any) -> Any:
    cache = labels.get(CACHE_LABEL, "")
    if ROLE_LABEL in labels:
        return {("own", namespace or "", cache): cache_pod(body)}
    running = status.get("phase") == "Running" and not body.get("metadata", {}).get(
        "deletionTimestamp")
    return {("use", namespace or "", cache): (spec.get("nodeName") or "", running)}


@kopf.index("", "v1", "nodes")
async def cache_node_index(name: str, labels: Mapping[str, str], **_: Any) -> Any:
    return {"nodes": (name, dict(labels))}


def _unpack(store: Any) -> dict[str, Any] | None:
    first = next(iter(store), None) if store else None
    return None if first is None else dict(json.loads(first))


def cache_body(namespace: str, name: str) -> dict[str, Any] | None:
    idx = _state.get("cache_index")
    return None if idx is None else _unpack(idx.get((namespace, name)))


def cache_mount(namespace: str, name: str) -> CacheMount:
    """What a ModelDeployment in `namespace` that names cache `name` gets."""
    return mount_status(name, cache_body(namespace, name))


def caches_in(namespace: str) -> dict[str, dict[str, Any]]:
    """The namespace's ModelCaches by name, from the index."""
    idx = _state.get("cache_index")
    out: dict[str, dict[str, Any]] = {}
    if idx is None:
        return out
    for key in list(idx.keys()):
        if key[0] == namespace and (body := _unpack(idx.get(key))) is not None:
            out[key[1]] = body
    return out


def implicit_view(body: Mapping[str, Any]) -> tuple[Mapping[str, Any], implicit.Plan | None,
                                                     CacheMount | None]:
    """A ModelDeployment as its reconcile sees it: with autoCache, the body whose spec names
    the cache (implicit.effective_spec), what to create/adopt/release, and the cache's mount.
    A spec that does not parse is left as it is (its reconcile reports it) and releases
    nothing; a spec without autoCache only releases what the model owns."""
    meta = body.get("metadata") or {}
    raw_spec = body.get("spec") or {}
    raw_model = raw_spec.get("model") if isinstance(raw_spec, Mapping) else None
    namespace = str(meta.get("namespace") or "")
    owner = implicit.Owner(name=str(meta.get("name") or ""), uid=str(meta.get("uid") or ""))
    raw_auto = raw_model.get("autoCache") if isinstance(raw_model, Mapping) else None
    model = implicit.parse_asking(raw_spec) if raw_auto is not None else None
    if raw_auto is not None and model is None:
        return body, None, None
    caches = caches_in(namespace)
    named = raw_model.get("cache") if isinstance(raw_model, Mapping) else None
    plan = implicit.plan(namespace, owner, model, raw_auto, caches,
                         named if isinstance(named, str) else None)
    if not plan.name:
        return body, (plan if plan.release else None), None
    view = dict(body)
    view["spec"] = implicit.effective_spec(raw_spec, plan.name)
    mount = (mount_status(plan.name, caches[plan.name]) if plan.name in caches
             else implicit.creating_mount(plan.name, plan.uri))
    return view, plan, mount


def _neighbours(namespace: str, name: str, spec_path: str) -> tuple[
        dict[str, list[Resident]], dict[tuple[str, str], Mapping[str, Any]]]:
    """Other node caches under the same directory, per node, for the budget."""
    idx, pods = _state["cache_index"], _state["cache_pod_index"]
    per_node: dict[str, list[Resident]] = {}
    bodies: dict[tuple[str, str], Mapping[str, Any]] = {}
    for key in list(idx.keys()):
        if key == (namespace, name):
            continue
        body = _unpack(idx.get(key))
        if body is None or ((body.get("spec") or {}).get("storage") or {}).get("type") != "node":
            continue
        try:
            other = parse_cache_spec(body.get("spec"))
        except ValueError:
            continue
        if other.storage.node is None or other.storage.node.path != spec_path:
            continue
        bodies[key] = body
        used = {node for node, running in pods.get(("use", *key)) or [] if running}
        for entry in (body.get("status") or {}).get("nodes") or []:
            if entry.get("phase") not in ("Ready", "Downloading"):
                continue
            per_node.setdefault(str(entry.get("name")), []).append(Resident(
                key=key, bytes=int(entry.get("bytesTotal") or 0),
                last_used=str(entry.get("lastUsed") or ""), in_use=entry.get("name") in used))
    return per_node, bodies


def snapshot(namespace: str, name: str) -> CacheSnapshot | None:
    body = cache_body(namespace, name)
    if body is None:
        return None
    pods_idx = _state["cache_pod_index"]
    pods = list(pods_idx.get(("own", namespace, name)) or [])
    used = frozenset(node or "" for node, running in pods_idx.get(("use", namespace, name)) or []
                     if running)
    used = used | ({""} if used else frozenset())  # pvc: any running user
    nodes = {n: labels for n, labels in _state["cache_node_index"].get("nodes") or []}
    storage = ((body.get("spec") or {}).get("storage") or {})
    neighbours: dict[str, list[Resident]] = {}
    victims: dict[tuple[str, str], Mapping[str, Any]] = {}
    if storage.get("type") == "node" and (storage.get("node") or {}).get("budget") is not None:
        try:
            path = parse_cache_spec(body.get("spec")).storage.node
            if path is not None:
                neighbours, victims = _neighbours(namespace, name, path.path)
        except ValueError:
            pass
    return CacheSnapshot(body=body, pods=pods, nodes=nodes, used_on=used,
                         neighbours=neighbours, victims=victims,
                         wants=tuple(cache_wants(namespace, name, body)))


async def _queued(key: Hashable) -> float | None:
    assert isinstance(key, tuple)
    if standby.paused():
        return None
    snap = snapshot(*key)
    if snap is None:
        return None
    memory = _state["memory"]
    try:
        again = await reconcile_cache(snap, _state["api"], memory)
    except ApiError as err:
        if not err.invalid:  # the API server, a webhook, a conflict: look again soon
            return await _failing(key, snap.body, err)
        # it refused what was written: the same again in 5 s would be refused again
        log.error("%s/%s: the API server refused what the operator wrote: %s; retrying in 60s",
                  *key, err)
        return 60.0
    except Exception as err:
        log.warning("%s/%s: %s; retrying in 5s", *key, err)
        return 5.0
    memory.failed_writes.pop(key, None)
    return again


async def _failing(key: tuple[str, str], body: Mapping[str, Any], err: ApiError) -> float:
    """A write the API server failed: retried in 5 s; from the REPORT_FROM-th in a row the
    cache's status and a Warning Event say so (api_failures.py), its phase unchanged."""
    memory = _state["memory"]
    memory.failed_writes[key] = streak = memory.failed_writes.get(key, 0) + 1
    delay = report_delay(streak, 5.0)
    if delay is None:
        log.warning("%s/%s: %s; retrying in 5s", *key, err)
        return 5.0
    previous = memory.previous(body)
    message = failing_message(str(err))[:2048]
    status = {**previous, "phase": previous.get("phase") or "Pending", "reason": "ApiError",
              "message": message}
    try:
        await write_status(_state["api"], memory, body, previous, status)
        if streak == REPORT_FROM:
            await _state["api"].post_event(involved(body), "Warning", "ApiError", message)
    except ApiError as again:
        log.warning("%s/%s: %s; and the status cannot say so: %s", *key, err, again)
    return delay


def _queue() -> Any:
    if "queue" not in _state:
        from .. import handlers
        from ..workqueue import WorkQueue

        _state["api"] = CacheCluster(handlers._runtime().cluster)
        _state["memory"] = Memory()
        # ModelCaches have no resync timer: a reconcile that raised is retried by the queue
        _state["queue"] = WorkQueue(_queued, concurrency=16, retry_s=30.0)
    return _state["queue"]


def _models_using(namespace: str, name: str,
                  cache: Mapping[str, Any] | None = None) -> list[tuple[str, str]]:
    """The models that name the cache, and those whose autoCache matches it (`cache`: its
    body, the last one seen for a deleted cache: its models then create it again if they still
    ask)."""
    from .. import handlers

    out = []
    md_index = handlers._runtime().indexes["md_index"]
    for key in list(md_index.keys()):
        if key[0] != namespace:
            continue
        packed = next(iter(md_index.get(key) or []), None)
        if not packed:
            continue
        spec = json.loads(packed).get("spec") or {}
        if _uses(key, spec, name, cache):
            out.append(key)
    return out


def _uses(key: tuple[str, str], spec: Any, name: str, cache: Mapping[str, Any] | None) -> bool:
    """Does the model use the cache? A spec that cannot be read is skipped, so that one bad model
    stops no cache of its namespace (its own reconcile reports what is wrong with it)."""
    try:
        model = spec.get("model") if isinstance(spec, Mapping) else None
        if isinstance(model, Mapping) and model.get("cache") == name:
            return True
        return cache is not None and implicit.asks_for(spec, cache)
    except Exception as err:  # anything a hostile spec may raise
        log.warning("%s/%s: skipped while looking for the models on ModelCache %s: %s",
                    *key, name, err)
        return False


@kopf.on.event(*CACHE)
async def cache_event(type: str, namespace: str | None, name: str, body: kopf.Body,
                      **kwargs: Any) -> None:
    for index in ("cache_index", "cache_pod_index", "cache_node_index"):
        _state.setdefault(index, kwargs[index])
    key = (namespace or "", name)
    queue = _queue()
    if type == "DELETED":
        queue.forget(key)
        _state["memory"].statuses.pop(key, None)
        _state["memory"].refusals.forget(key)
    else:
        queue.enqueue(key)
    seen = _state.setdefault("mounts", {})
    now = mount_status(name, None if type == "DELETED" else dict(body))
    if seen.get(key) != now:
        seen[key] = now
        from .. import handlers

        for model in _models_using(*key, dict(body)):
            handlers._runtime().queue.enqueue(model)


@kopf.on.event("", "v1", "pods", labels={CACHE_LABEL: kopf.PRESENT})
async def cache_pod_event(namespace: str | None, labels: Mapping[str, str], **kwargs: Any) -> None:
    for index in ("cache_index", "cache_pod_index", "cache_node_index"):
        _state.setdefault(index, kwargs[index])
    _queue().enqueue((namespace or "", labels.get(CACHE_LABEL, "")), 0.2)


@kopf.on.event("", "v1", "nodes")
async def cache_node_event(type: str, name: str, labels: Mapping[str, str],
                           **kwargs: Any) -> None:
    """A node that appears, goes, or whose labels change may be one a node cache selects (its
    status, a heartbeat, changes nothing a cache reads: each woke every cache)."""
    seen = _state.setdefault("node_labels", {})
    now = None if type == "DELETED" else dict(labels)
    if seen.get(name) == now:
        return
    if now is None:
        seen.pop(name, None)
    else:
        seen[name] = now
    if type is None or "cache_index" not in _state:
        return
    for key in list(_state["cache_index"].keys()):
        _queue().enqueue(key, 1.0)


@kopf.on.startup()
async def cache_startup(**kwargs: Any) -> None:
    for index in ("cache_index", "cache_pod_index", "cache_node_index"):
        _state[index] = kwargs[index]


@kopf.on.cleanup()
async def cache_cleanup(**_: Any) -> None:
    queue = _state.pop("queue", None)
    if queue is not None:
        await queue.close()
