"""The Gateway API's standard-channel CRDs (GatewayClass, Gateway, HTTPRoute, ReferenceGrant) for
a testbed cluster, read from the Go module sigs.k8s.io/gateway-api in the module cache (the
files ship inside the module under config/crd/standard/; nothing is vendored here).

hack/build-testbed downloads the module once (it is cached like every Go module) and records
its directory as `gateway-api-module-dir` beside the binaries; without that record this module
asks `go mod download` itself. No Gateway controller is installed: the CRDs let the API server
store Gateways and HTTPRoutes, nothing routes traffic.

  python -m kubemaas_testbed.gateway KUBECONFIG    install them (idempotent: server-side apply)
"""

from __future__ import annotations

from pathlib import Path

from . import gomodule

GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api"
GATEWAY_API_VERSION = "v1.6.3"
RECORD = "gateway-api-module-dir"
# The standard channel's kinds the operator's HTTPRoute needs (a route's parentRef names a
# Gateway of a GatewayClass; a ReferenceGrant lets a route cross namespaces to a backend).
KINDS = ("gatewayclasses", "gateways", "httproutes", "referencegrants")


def module_dir() -> Path:
    """The module's directory in the Go module cache (downloaded when missing)."""
    return gomodule.module_dir(GATEWAY_API_MODULE, GATEWAY_API_VERSION, RECORD)


def crd_files() -> list[Path]:
    base = module_dir() / "config" / "crd" / "standard"
    return gomodule.existing([base / f"gateway.networking.k8s.io_{kind}.yaml" for kind in KINDS],
                             "Gateway API CRDs")


def install(kubeconfig: str | Path, timeout: float = 60.0) -> list[str]:
    """Apply the CRDs and wait until they are Established; return their names."""
    names = [f"{kind}.gateway.networking.k8s.io" for kind in KINDS]
    return gomodule.apply_crds(kubeconfig, crd_files(), names, timeout)


if __name__ == "__main__":
    gomodule.install_main(__doc__, install)
