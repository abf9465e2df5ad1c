"""Find the testbed's binaries: a user's own directory first, then the build cache."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

K8S_VERSION = "v1.36.3"
REQUIRED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "hack" / "build-testbed"


class MissingBinaryError(RuntimeError):
    """A binary the testbed needs is nowhere to be found."""


def cache_bin_dir() -> Path:
    cache = Path(os.environ.get("KUBEMAAS_TESTBED_CACHE", Path.home() / ".cache/kubemaas/testbed"))
    return cache / K8S_VERSION / "bin"


def search_dirs() -> list[Path]:
    """Where binaries are looked for, in order.

    KUBEMAAS_TESTBED_BIN names a directory of the user's own binaries;
    KUBEBUILDER_ASSETS is envtest's convention (it holds etcd and
    kube-apiserver); the build cache comes last.
    """
    dirs = [os.environ.get("KUBEMAAS_TESTBED_BIN"), os.environ.get("KUBEBUILDER_ASSETS")]
    return [Path(d) for d in dirs if d] + [cache_bin_dir()]


def find(name: str) -> Path | None:
    for directory in search_dirs():
        candidate = directory / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    return None


def require(name: str, build: str) -> Path:
    """The binary `name`, or MissingBinaryError that says how to build it (`build`)."""
    found = find(name)
    if found is None:
        raise MissingBinaryError(f"{name} is not built: run {build}")
    return found


def kubectl() -> str:
    """kubectl from the testbed's directories, else the one on PATH."""
    found = find("kubectl") or shutil.which("kubectl")
    if not found:
        raise MissingBinaryError("kubectl is neither in the testbed's directories nor on PATH")
    return str(found)


@dataclass(frozen=True)
class Binaries:
    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kwok: Path
    kwok_module_dir: Path

    @property
    def kubectl(self) -> str:
        return kubectl()


def ensure(build: bool = True) -> Binaries:
    """Locate every required binary, building the missing ones when allowed."""
    missing = [name for name in REQUIRED if find(name) is None]
    if missing and build:
        subprocess.run([str(BUILD_SCRIPT)], check=True)
        missing = [name for name in REQUIRED if find(name) is None]
    if missing:
        raise MissingBinaryError(
            f"missing {', '.join(missing)}: run {BUILD_SCRIPT} or set KUBEMAAS_TESTBED_BIN"
        )
    paths = {name: find(name) for name in REQUIRED}
    return Binaries(
        etcd=paths["etcd"],  # type: ignore[arg-type]
        kube_apiserver=paths["kube-apiserver"],  # type: ignore[arg-type]
        kube_controller_manager=paths["kube-controller-manager"],  # type: ignore[arg-type]
        kube_scheduler=paths["kube-scheduler"],  # type: ignore[arg-type]
        kwok=paths["kwok"],  # type: ignore[arg-type]
        kwok_module_dir=_kwok_module_dir(),
    )


def _kwok_module_dir() -> Path:
    """kwok's Stage files ship inside its Go module: find its directory."""
    for directory in search_dirs():
        recorded = directory / "kwok-module-dir"
        if recorded.is_file():
            path = Path(recorded.read_text().strip())
            if path.is_dir():
                return path
    out = subprocess.run(
        ["go", "mod", "download", "-json", "sigs.k8s.io/kwok@v0.8.0"],
        check=True, capture_output=True, text=True, cwd="/",
        env={**os.environ, "GOFLAGS": "-mod=mod"},
    ).stdout
    import json

    return Path(json.loads(out)["Dir"])
