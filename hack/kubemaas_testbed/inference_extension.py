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

import subprocess
from pathlib import Path

from . import binaries, gomodule

MODULE = "sigs.k8s.io/gateway-api-inference-extension"
VERSION = "v1.6.0"
RECORD = "inference-extension-module-dir"
CRDS = ("inference.networking.k8s.io_inferencepools.yaml",)
NAMES = ("inferencepools.inference.networking.k8s.io",)


def module_dir() -> Path:
    """The module's directory in the Go module cache (downloaded when missing)."""
    return gomodule.module_dir(MODULE, VERSION, RECORD)


def crd_files() -> list[Path]:
    base = module_dir() / "config" / "crd" / "bases"
    return gomodule.existing([base / name for name in CRDS], "Inference Extension CRDs")


def install(kubeconfig: str | Path, timeout: float = 60.0) -> list[str]:
    """Apply the CRD and wait until it is Established; return its name."""
    return gomodule.apply_crds(kubeconfig, crd_files(), NAMES, timeout)


def uninstall(kubeconfig: str | Path) -> None:
    """Delete the CRD (and with it every InferencePool)."""
    subprocess.run([binaries.kubectl(), f"--kubeconfig={kubeconfig}", "delete", "crd",
                    "--ignore-not-found", "--wait=true", *NAMES],
                   check=True, capture_output=True, text=True)


if __name__ == "__main__":
    gomodule.install_main(__doc__, install)
