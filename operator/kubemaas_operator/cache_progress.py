"""The progress of the ModelCache a model names (`spec.model.cache`), for the Downloading reason.

Read only while the model has replicas on their way (a Ready model costs no read), with one GET
per reconcile; a missing cache, a kind the API server does not serve and a cache the operator may
not read all mean "no progress" (pod_life.py then keys on the pods alone). While the cache
downloads, the model is looked at again every POLL_S, since the cache's own progress is not
watched.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from .api import ModelShape
from .k8s import ApiError, AsyncCluster
from .observed import PodInfo
from .pod_life import CacheProgress, cache_name, cache_progress
from .sizing import shape_from_cache

log = logging.getLogger("kubemaas.cache_progress")

MODELCACHE_API_VERSION = "serving.kubemaas.io/v1alpha1"
POLL_S = 5.0


async def read(cluster: AsyncCluster, namespace: str, raw_spec: Mapping[str, Any],
               pods: Sequence[PodInfo], ready: int, desired: int) -> CacheProgress | None:
    name = cache_name(raw_spec)
    if name is None or (desired > 0 and ready >= desired and all(
            p.ready for p in pods if not p.terminating)):
        return None
    try:
        obj = await cluster.get_optional(MODELCACHE_API_VERSION, "ModelCache", namespace, name)
    except ApiError as err:  # transient: the status simply shows no progress this time
        log.debug("cannot read ModelCache %s/%s: %s", namespace, name, err)
        return None
    return cache_progress(name, obj)


def requeue_after(progress: CacheProgress | None) -> float | None:
    """Seconds until the cache's progress is worth reading again (None: it is not downloading)."""
    if progress is None or progress.ready or progress.phase == "Failed":
        return None
    return POLL_S


async def read_shape(cluster: AsyncCluster, namespace: str,
                     raw_spec: Mapping[str, Any]) -> ModelShape | None:
    """The shape the named ModelCache recorded in status.model, which GPU sizing prefers to
    spec.model.shape. Read only for `gpu.count: auto` (one GET per reconcile then); None when no
    cache is named, it is missing or not served, or it has recorded nothing yet."""
    name = cache_name(raw_spec)
    if name is None or (raw_spec.get("gpu") or {}).get("count") != "auto":
        return None
    try:
        obj = await cluster.get_optional(MODELCACHE_API_VERSION, "ModelCache", namespace, name)
    except ApiError as err:
        log.debug("cannot read ModelCache %s/%s: %s", namespace, name, err)
        return None
    return shape_from_cache(obj)
