"""Start the kubemaas operator: `python -m kubemaas_operator` (or `kubemaas-operator`).

Settings come from KUBEMAAS_OPERATOR_* environment variables (see config.py and
docs/operator.md); the Kubernetes credentials from the pod's ServiceAccount, or $KUBECONFIG.
One replica (kopf runs standalone, without peering).
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

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
    from . import handlers  # noqa: F401  (registers the handlers with kopf)

    endpoint = (f"http://0.0.0.0:{settings.health_port}/healthz"
                if settings.health_port else None)
    kopf.run(standalone=True, clusterwide=True, liveness_endpoint=endpoint)
    return 0


if __name__ == "__main__":
    sys.exit(main())
