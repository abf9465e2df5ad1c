"""PURE: a model with ``spec.model.optimize`` on a ModelCache serves what the cache optimized.

The cache optimizes once per option key and copy (modelcache/optimize.py); the model waits for
it (phase Pending, reason ``CacheOptimizing``), its pods go only to the copies where it finished
(node storage: the nodes; the claim: once), and its optimize init container is pointed at the
cache's result (``KUBEMAAS_OPTIMIZE_FROM_CACHE``): it links the cached model into the pod's
``optimized/serve/`` and reports the cached figures (termination message -> status.optimization,
as without a cache) without optimizing. When the cache's result is not usable (the cache's
optimize pod failed, or the files were downloaded again since) the init container optimizes in
the pod, as without a cache, and its log says why.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..api import ModelDeploymentSpec
from ..api.model import CACHE_URI
from ..modelcache.mount import CacheMount
from ..status import Failure
from .optimization import INIT_CONTAINER, OPTIMIZED_DIR, options_key

REASON = "CacheOptimizing"


def cached_dir(spec: ModelDeploymentSpec) -> str:
    """Where the model pods find the cache's result for this model's options."""
    return f"{CACHE_URI.removeprefix('file://')}/{OPTIMIZED_DIR}/{options_key(spec)}"


def _entry(spec: ModelDeploymentSpec, cache: CacheMount) -> tuple[tuple[str, ...], str] | None:
    key = options_key(spec)
    return next(((where, msg) for k, where, msg in cache.optimized if k == key), None)


def narrow(spec: ModelDeploymentSpec, cache: CacheMount) -> CacheMount:
    """Node storage: only the nodes whose copy finished optimizing for this model's options."""
    if spec.model.optimize is None or cache.host_path is None:
        return cache
    entry = _entry(spec, cache)
    done = entry[0] if entry is not None else ()
    return dataclasses.replace(cache, nodes=tuple(n for n in cache.nodes if n in done))


def wait(spec: ModelDeploymentSpec, cache: CacheMount | None) -> Failure | None:
    """Pending until the cache optimized for this model's options on at least one copy."""
    if spec.model.optimize is None or cache is None or not cache.ready:
        return None
    entry = _entry(spec, cache)
    if entry is None:
        return Failure(REASON, f"ModelCache {cache.name} has not started to optimize the model "
                       f"for these options (key {options_key(spec)}) yet", phase="Pending")
    if (cache.host_path is None and not entry[0]) or (
            cache.host_path is not None and not narrow(spec, cache).nodes):
        return Failure(REASON, f"ModelCache {cache.name} optimizes the model for these options "
                       f"(key {options_key(spec)}): {entry[1] or 'in progress'}",
                       phase="Pending")
    return None


def use_cache(deployment: dict[str, Any], spec: ModelDeploymentSpec) -> None:
    """Point the optimize init container at the cache's result. In place."""
    if spec.model.optimize is None:
        return
    for init in deployment["spec"]["template"]["spec"].get("initContainers") or []:
        if init.get("name") == INIT_CONTAINER:
            init["env"] = [*(init.get("env") or []), {"name": "KUBEMAAS_OPTIMIZE_FROM_CACHE",
                                                      "value": cached_dir(spec)}]
