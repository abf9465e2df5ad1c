"""PURE: a ModelDeployment's pods mount a ModelCache read-only.

The runtime gets `KUBEMAAS_MODEL_URI=file:///var/lib/kubemaas/model-cache` (the directory: it
finds the one model file there, or, with format hf, loads the directory) and downloads nothing.
With node storage the pods are placed only on nodes whose copy is Ready (a required node
affinity on `metadata.name`, ANDed into every term; Node objects are never written)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..status import Failure
from .render import CACHE_LABEL

MOUNT_DIR = "/var/lib/kubemaas/model-cache"
FILES_ANNOTATION = "serving.kubemaas.io/model-cache-files"
MOUNT_URI = f"file://{MOUNT_DIR}"
VOLUME = "model-files"


@dataclass(frozen=True)
class CacheMount:
    """What a ModelDeployment needs of the cache it names (from the ModelCache's status)."""

    name: str
    ready: bool
    reason: str = ""  # why not ready: CacheNotFound, CacheNotReady, CacheFailed
    message: str = ""
    claim_name: str | None = None  # pvc storage
    sub_path: str | None = None
    host_path: str | None = None  # node storage
    nodes: tuple[str, ...] = ()  # node storage: the nodes whose copy is Ready
    # spec.model.optimize done in the cache (modelcache/optimize.py): per option key, the copies
    # where it has finished ("" for the claim) and what the cache says of it
    optimized: tuple[tuple[str, tuple[str, ...], str], ...] = ()
    files: str = ""  # status.specHash: which files (source, storage); new files roll the pods


def mount_status(name: str, cache: Mapping[str, Any] | None) -> CacheMount:
    """The ModelCache object (or None) -> CacheMount."""
    if cache is None:
        return CacheMount(name=name, ready=False, reason="CacheNotFound",
                          message=f"ModelCache {name} does not exist in this namespace")
    spec, status = cache.get("spec") or {}, cache.get("status") or {}
    phase = status.get("phase") or "Pending"
    storage = (spec.get("storage") or {}).get("type")
    nodes = tuple(sorted(str(n["name"]) for n in status.get("nodes") or []
                         if n.get("phase") == "Ready" and n.get("name")))
    meta = cache.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return CacheMount(name=name, ready=False, reason="CacheDeleting", message=(
            f"ModelCache {name} is being deleted; name another cache, or recreate it"))
    fresh = status.get("observedGeneration") == meta.get("generation")
    optimized = _optimized(status)
    files = str(status.get("specHash") or "")
    if storage == "pvc" and phase == "Ready" and fresh:
        return CacheMount(name=name, ready=True, claim_name=status.get("claimName"),
                          sub_path=status.get("path"), optimized=optimized, files=files)
    if storage == "node" and nodes and fresh:
        return CacheMount(name=name, ready=True, host_path=status.get("path"), nodes=nodes,
                          optimized=optimized, files=files)
    reason = "CacheFailed" if phase == "Failed" else "CacheNotReady"
    what = status.get("progress") or "no progress yet"
    return CacheMount(name=name, ready=False, reason=reason, message=(
        f"ModelCache {name} is {phase} ({status.get('reason') or 'waiting'}: "
        f"{status.get('message') or what}); the model starts once its files are Ready"))


def _optimized(status: Mapping[str, Any]) -> tuple[tuple[str, tuple[str, ...], str], ...]:
    """(key, copies where the optimization finished, message) of status.optimizations."""
    out = []
    for entry in status.get("optimizations") or []:
        done = ("Ready", "Failed")
        where = tuple(sorted(str(n.get("name")) for n in entry.get("nodes") or []
                             if n.get("phase") in done)) if "nodes" in entry else (
            ("",) if entry.get("phase") in done else ())
        out.append((str(entry.get("key")), where, str(entry.get("message") or "")))
    return tuple(out)


def mount_cache(deployment: dict[str, Any], cache: CacheMount) -> None:
    """Mount the cache into the runtime container (the first one) read-only, point the runtime
    at it and, for node storage, keep the pods on nodes with a Ready copy. In place."""
    pod = deployment["spec"]["template"]
    labels = pod.setdefault("metadata", {}).setdefault("labels", {})
    labels[CACHE_LABEL] = cache.name[:63].rstrip("-.")  # a valid label value, as render.labels
    if cache.files:  # the pods loaded these files: a new source (or storage) rolls them
        pod["metadata"].setdefault("annotations", {})[FILES_ANNOTATION] = cache.files
    spec = pod["spec"]
    if cache.claim_name is not None:
        volume: dict[str, Any] = {"name": VOLUME, "persistentVolumeClaim": {
            "claimName": cache.claim_name, "readOnly": True}}
    else:
        volume = {"name": VOLUME, "hostPath": {"path": cache.host_path, "type": "Directory"}}
    spec["volumes"] = [*(spec.get("volumes") or []), volume]
    container = spec["containers"][0]
    mount: dict[str, Any] = {"name": VOLUME, "mountPath": MOUNT_DIR, "readOnly": True}
    if cache.claim_name is not None and cache.sub_path:
        mount["subPath"] = cache.sub_path
    container["volumeMounts"] = [*(container.get("volumeMounts") or []), mount]
    for init in spec.get("initContainers") or []:  # an optimize/convert step reads it too
        init["volumeMounts"] = [*(init.get("volumeMounts") or []), dict(mount)]
    if cache.host_path is not None:
        _only_on(spec, list(cache.nodes))


def _only_on(spec: dict[str, Any], nodes: list[str]) -> None:
    """Only on `nodes`, ANDed into every required term. The API server allows one value per
    `matchFields` requirement on metadata.name (In or NotIn), so each term becomes one term
    per node (the terms are ORed): a single `In [n1, n2]` was refused, and a model on a cache
    with two Ready copies got no Deployment (Failed, Rejected)."""
    required = spec.setdefault("affinity", {}).setdefault("nodeAffinity", {}).setdefault(
        "requiredDuringSchedulingIgnoredDuringExecution", {})
    terms = required.get("nodeSelectorTerms") or [{}]
    out = []
    for term in terms:
        for node in nodes:
            one = copy.deepcopy(term)  # no list shared between terms
            one["matchFields"] = [*(one.get("matchFields") or []),
                                  {"key": "metadata.name", "operator": "In", "values": [node]}]
            out.append(one)
    required["nodeSelectorTerms"] = out


def cache_wait(name: str | None, cache: CacheMount | None) -> Failure | None:
    """A ModelDeployment that names a cache that is not Ready waits: phase Pending with the
    cache's reason (CacheNotFound, CacheNotReady) — or Failed when the download failed."""
    if name is None or (cache is not None and cache.ready):
        return None
    if cache is None:
        cache = CacheMount(name=name, ready=False, reason="CacheNotReady",
                           message=f"ModelCache {name} has not been seen yet")
    return Failure(cache.reason, cache.message,
                   phase="Failed" if cache.reason == "CacheFailed" else "Pending")
