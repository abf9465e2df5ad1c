"""API discovery of the optional kinds the operator renders when they are served: the Gateway
API's HTTPRoute, cert-manager's Certificate, the Gateway API Inference Extension's
InferencePool, KEDA's ScaledObject and its HTTP add-on's InterceptorRoute. Asked at start
(handlers.startup) and every gateway_discovery_s; when an answer changes, every model is looked
at again (its children of that kind are made or taken down).
A kind found served is also one kopf must watch (kopf_watch.py: kopf can miss a late CRD)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from . import kopf_watch, standby
from .render import HTTPROUTE_API_VERSION
from .render.autoscaler import SCALEDOBJECT_API_VERSION
from .render.inference import INFERENCEPOOL_API_VERSION
from .render.security import CERTIFICATE_API_VERSION
from .render.wake import INTERCEPTORROUTE_API_VERSION

if TYPE_CHECKING:
    from .handlers import Runtime

log = logging.getLogger("kubemaas.handlers")

# Runtime attribute -> (apiVersion, plural, what the log calls it, what "served" means)
OPTIONAL = {
    "cert_manager": (CERTIFICATE_API_VERSION, "certificates", "cert-manager Certificate", ""),
    "inference_pools": (INFERENCEPOOL_API_VERSION, "inferencepools",
                        "Gateway API Inference Extension InferencePool",
                        ": language models get an InferencePool"),
    "keda": (SCALEDOBJECT_API_VERSION, "scaledobjects", "KEDA ScaledObject",
             ": models that scale on queue, concurrency or kvCache get a ScaledObject"),
    "http_addon": (INTERCEPTORROUTE_API_VERSION, "interceptorroutes",
                   "KEDA HTTP add-on InterceptorRoute",
                   ": models at minReplicas 0 wake on a request through its interceptor"),
}


def _look_again(rt: Runtime) -> None:
    if not standby.paused() and rt.queue is not None:
        for key in list(rt.indexes["md_index"].keys()):
            rt.queue.enqueue(key)


async def discover(rt: Runtime, attr: str, watch: bool = True) -> None:
    """Whether one of OPTIONAL is served; on a change every model is looked at again.

    `watch`: make kopf watch a served kind it missed. Not at start: kopf's own first look at
    discovery comes after the startup activity, and asking it to look again from inside that
    activity hung the operator's start (a kind served before the operator started: KEDA's
    ScaledObject when the operator restarted on the testbed)."""
    api_version, plural, what, meaning = OPTIONAL[attr]
    try:
        served = await rt.cluster.serves(api_version, plural)
    except Exception as err:
        log.warning("API discovery of %s failed: %s", api_version, err)
        return
    if served and watch:
        await kopf_watch.ensure_watched(api_version, plural)
    if served != getattr(rt, attr):
        setattr(rt, attr, served)
        log.info("%s (%s) is %s", what, api_version,
                 f"served{meaning}" if served else "not served")
        _look_again(rt)


async def at_start(rt: Runtime) -> None:
    """Every answer once, before the first reconcile (so that a model never flips split)."""
    try:
        rt.gateway_api = await rt.cluster.serves(HTTPROUTE_API_VERSION, "httproutes")
    except Exception as err:
        log.warning("API discovery of %s failed at start: %s", HTTPROUTE_API_VERSION, err)
    for attr in OPTIONAL:
        await discover(rt, attr, watch=False)
    log.info("Gateway API HTTPRoute (%s) %s", HTTPROUTE_API_VERSION,
             "served" if rt.gateway_api else "not served: canaries split by ready replicas")


async def loop(rt: Runtime) -> None:
    """Ask again every gateway_discovery_s (startup asked once already)."""
    while True:
        await asyncio.sleep(rt.settings.gateway_discovery_s)
        for attr in OPTIONAL:
            await discover(rt, attr)
        try:
            served = await rt.cluster.serves(HTTPROUTE_API_VERSION, "httproutes")
        except Exception as err:
            log.warning("API discovery of %s failed: %s; asking again in %.0fs",
                        HTTPROUTE_API_VERSION, err, rt.settings.gateway_discovery_s)
            continue
        if served:
            await kopf_watch.ensure_watched(HTTPROUTE_API_VERSION, "httproutes")
        if served != rt.gateway_api:
            rt.gateway_api = served
            log.info("Gateway API HTTPRoute (%s) is %s: canary traffic splits by %s",
                     HTTPROUTE_API_VERSION, "served" if served else "not served",
                     "HTTPRoute weights (for models with a Gateway)" if served
                     else "ready replicas")
            _look_again(rt)
