"""CRDs that ship inside a Go module, for a testbed cluster: find the module in the Go module cache
(hack/build-testbed downloads it once and records its directory beside the binaries; without that
record `go mod download` is asked here), and apply its CRD files server-side until Established.
Nothing is vendored: the files are the module's own."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import binaries, cluster


def module_dir(module: str, version: str, record: str) -> Path:
    """The directory of MODULE@VERSION in the Go module cache (downloaded when missing)."""
    for directory in binaries.search_dirs():
        recorded = directory / record
        if recorded.is_file():
            path = Path(recorded.read_text().strip())
            if path.name == f"{module.rsplit('/', 1)[-1]}@{version}" and path.is_dir():
                return path
    out = subprocess.run(
        ["go", "mod", "download", "-json", f"{module}@{version}"],
        check=True, capture_output=True, text=True, cwd="/",
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    ).stdout
    return Path(json.loads(out)["Dir"])


def existing(files: Sequence[Path], what: str) -> list[Path]:
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise binaries.MissingBinaryError(f"{what} missing from the module: {missing}")
    return list(files)


def apply_crds(kubeconfig: str | Path, files: Sequence[Path], names: Sequence[str],
               timeout: float) -> list[str]:
    """Apply the CRDs (server-side, so a second run changes nothing) and wait until they are
    Established; return their names."""
    subprocess.run([binaries.kubectl(), f"--kubeconfig={kubeconfig}", "apply", "--server-side",
                    "--force-conflicts", *(f"--filename={f}" for f in files)],
                   check=True, capture_output=True, text=True)
    cluster.wait_established(kubeconfig, *names, timeout=timeout)
    return list(names)


def install_main(doc: str | None, install: Callable[[str], list[str]]) -> None:
    """``python -m kubemaas_testbed.<module> KUBECONFIG``: ``install`` the module's CRDs and
    name each; without exactly one argument, ``doc`` on stderr and exit 2."""
    if len(sys.argv) != 2:
        print(doc, file=sys.stderr)
        sys.exit(2)
    for crd in install(sys.argv[1]):
        print(f"installed {crd}")
