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

import json
import os
import subprocess
import sys
from pathlib import Path

from . import binaries, cluster

GATEWAY_API_MODULE = "sigs.k8s.io/gateway-api"
GATEWAY_API_VERSION = "v1.6.3"
RECORD = "gateway-api-module-dir"
# The standard channel's kinds the operator's HTTPRoute needs (a route's parentRef names a
# Gateway of a GatewayClass; a ReferenceGrant lets a route cross namespaces to a backend).
KINDS = ("gatewayclasses", "gateways", "httproutes", "referencegrants")


def module_dir() -> Path:
    """The module's directory in the Go module cache (downloaded when missing)."""
    for directory in binaries.search_dirs():
        recorded = directory / RECORD
        if recorded.is_file():
            path = Path(recorded.read_text().strip())
            if path.name == f"gateway-api@{GATEWAY_API_VERSION}" and path.is_dir():
                return path
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{GATEWAY_API_MODULE}@{GATEWAY_API_VERSION}"],
        check=True, capture_output=True, text=True, cwd="/",
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    ).stdout
    return Path(json.loads(out)["Dir"])


def crd_files() -> list[Path]:
    base = module_dir() / "config" / "crd" / "standard"
    files = [base / f"gateway.networking.k8s.io_{kind}.yaml" for kind in KINDS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise binaries.MissingBinaryError(f"Gateway API CRDs missing from the module: {missing}")
    return files


def install(kubeconfig: str | Path, timeout: float = 60.0) -> list[str]:
    """Apply the CRDs (server-side, so a second run changes nothing) and wait until they are
    Established; return their names."""
    kubectl = binaries.kubectl()
    files = crd_files()
    args = [kubectl, f"--kubeconfig={kubeconfig}"]
    subprocess.run([*args, "apply", "--server-side", "--force-conflicts",
                    *(f"--filename={f}" for f in files)],
                   check=True, capture_output=True, text=True)
    names = [f"{kind}.gateway.networking.k8s.io" for kind in KINDS]
    cluster.wait_established(kubeconfig, *names, timeout=timeout)
    return names


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    for crd in install(sys.argv[1]):
        print(f"installed {crd}")
