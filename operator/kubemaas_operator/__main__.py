"""Start the kubemaas operator: `python -m kubemaas_operator` (or `kubemaas-operator`).

Settings come from KUBEMAAS_OPERATOR_* environment variables (see config.py and
docs/operator.md); the Kubernetes credentials from the pod's ServiceAccount, or $KUBECONFIG.
Standalone (one replica) unless KUBEMAAS_OPERATOR_PEERING names a ClusterKopfPeering object:
then replicas see each other through it and only the one with the highest priority acts.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
from typing import Any, cast

import kopf

from .config import Settings, SettingsError


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena and rarely returns their
    memory; with a pool of API threads decoding JSON that inflates RSS by 100 MB and more. Two
    arenas cost nothing measurable here. (MALLOC_ARENA_MAX does the same from the environment.)"""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, arenas)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc


def main() -> int:
    _limit_malloc_arenas()
    try:
        settings = Settings.from_env()
    except SettingsError as err:
        print(f"kubemaas-operator: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kopf").setLevel(max(logging.INFO, logging.getLevelName(
        settings.log_level.upper()) if isinstance(logging.getLevelName(
            settings.log_level.upper()), int) else logging.INFO))
    for noisy in ("kopf.objects", "kopf.activities.probe", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from . import (
        handlers,  # noqa: F401  (registers the handlers with kopf)
        kopf_watch,
        standby,
    )

    standby.follow_kopf(peering=bool(settings.peering))
    kopf_watch.tolerate_vanished_kinds()

    endpoint = (f"http://0.0.0.0:{settings.health_port}/healthz"
                if settings.health_port else None)
    if not settings.peering:
        kopf.run(standalone=True, clusterwide=True, liveness_endpoint=endpoint,
                 insights=kopf_watch.INSIGHTS)
        return 0
    identity = settings.identity()
    priority = settings.effective_priority(identity)
    logging.getLogger("kubemaas").info("peering %r as %s with priority %d (lifetime %d s)",
                                       settings.peering, identity, priority,
                                       settings.peering_lifetime_s)
    kopf.run(clusterwide=True, liveness_endpoint=endpoint, peering_name=settings.peering,
             priority=priority, identity=cast(Any, identity),  # kopf's Identity is a str
             settings=_peering_settings(settings.peering_lifetime_s), insights=kopf_watch.INSIGHTS)
    return 0


def _peering_settings(lifetime_s: int) -> kopf.OperatorSettings:
    operator_settings = kopf.OperatorSettings()
    operator_settings.peering.lifetime = lifetime_s
    operator_settings.peering.stealth = True  # no log line for every keep-alive
    return operator_settings


if __name__ == "__main__":
    sys.exit(main())
