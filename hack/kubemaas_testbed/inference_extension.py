"""The Gateway API Inference Extension's InferencePool CRD for a testbed cluster, read from the
Go module sigs.k8s.io/gateway-api-inference-extension in the module cache (the file ships inside
the module under config/crd/bases/; nothing is vendored here).

hack/build-testbed downloads the module once and records its directory as
`inference-extension-module-dir` beside the binaries; without that record this module asks
`go mod download` itself. No endpoint picker and no Gateway controller are installed: the CRD
lets the API server store InferencePools, nothing routes traffic.

  python -m kubemaas_testbed.inference_extension KUBECONFIG   install it (idempotent)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from . import binaries, cluster

MODULE = "sigs.k8s.io/gateway-api-inference-extension"
VERSION = "v1.6.0"
RECORD = "inference-extension-module-dir"
CRDS = ("inference.networking.k8s.io_inferencepools.yaml",)
NAMES = ("inferencepools.inference.networking.k8s.io",)


def module_dir() -> Path:
    """The module's directory in the Go module cache (downloaded when missing)."""
    for directory in binaries.search_dirs():
        recorded = directory / RECORD
        if recorded.is_file():
            path = Path(recorded.read_text().strip())
            if path.name == f"gateway-api-inference-extension@{VERSION}" and path.is_dir():
                return path
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{MODULE}@{VERSION}"],
        check=True, capture_output=True, text=True, cwd="/",
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    ).stdout
    return Path(json.loads(out)["Dir"])


def crd_files() -> list[Path]:
    base = module_dir() / "config" / "crd" / "bases"
    files = [base / name for name in CRDS]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise binaries.MissingBinaryError(
            f"Inference Extension CRDs missing from the module: {missing}")
    return files


def install(kubeconfig: str | Path, timeout: float = 60.0) -> list[str]:
    """Apply the CRD (server-side, so a second run changes nothing) and wait until it is
    Established; return its name."""
    subprocess.run([binaries.kubectl(), f"--kubeconfig={kubeconfig}", "apply", "--server-side",
                    "--force-conflicts", *(f"--filename={f}" for f in crd_files())],
                   check=True, capture_output=True, text=True)
    cluster.wait_established(kubeconfig, *NAMES, timeout=timeout)
    return list(NAMES)


def uninstall(kubeconfig: str | Path) -> None:
    """Delete the CRD (and with it every InferencePool)."""
    subprocess.run([binaries.kubectl(), f"--kubeconfig={kubeconfig}", "delete", "crd",
                    "--ignore-not-found", "--wait=true", *NAMES],
                   check=True, capture_output=True, text=True)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    for crd in install(sys.argv[1]):
        print(f"installed {crd}")
