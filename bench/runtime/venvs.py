"""One cached virtualenv per peer server, built with pip from PyPI.

Each peer gets its own environment because their pins clash (PyTriton needs numpy<2, KServe and
MLServer bring large, different stacks). Every environment gets the same onnxruntime version as
our runtime, so all servers run the same inference library with the same session options.

The cache key is the requirement list plus the Python version; a half-built venv is never used
(a marker file is written last). Build failures are returned, not raised: the benchmark records
the error and carries on with the other peers.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("KUBEMAAS_BENCH_CACHE",
                            Path.home() / ".cache" / "kubemaas" / "bench-venvs"))


def _onnxruntime_version() -> str:
    import onnxruntime  # the version our own venv runs

    return str(onnxruntime.__version__)


ORT = f"onnxruntime=={_onnxruntime_version()}"

PEERS: dict[str, list[str]] = {
    "kserve": ["kserve==0.21.0", ORT],
    "mlserver": ["mlserver==1.7.1", "uvloop<0.22", ORT],  # uvloop 0.22 breaks its workers
    "pytriton": ["nvidia-pytriton==0.7.0", "numpy<2", ORT],
}

TOOLS: dict[str, list[str]] = {"plot": ["matplotlib==3.11.2"]}


@dataclass
class VenvResult:
    name: str
    python: Path | None
    error: str | None = None


def ensure_venv(name: str, requirements: list[str], timeout: float = 1800) -> VenvResult:
    """Return the python of a cached virtualenv with ``requirements`` installed."""
    key = hashlib.sha256(("\n".join(requirements) + sys.version).encode()).hexdigest()[:12]
    root = CACHE / f"{name}-{key}"
    python = root / "bin" / "python"
    marker = root / ".kubemaas-ready"
    if marker.is_file():
        return VenvResult(name, python)
    root.parent.mkdir(parents=True, exist_ok=True)
    with (root.parent / f"{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file():
            return VenvResult(name, python)
        shutil.rmtree(root, ignore_errors=True)
        log = root.parent / f"{name}-{key}.pip.log"
        try:
            subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=120)
            with log.open("w") as out:
                subprocess.run([str(python), "-m", "pip", "install", "--disable-pip-version-check",
                                *requirements], check=True, timeout=timeout,
                               stdout=out, stderr=subprocess.STDOUT)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            text = log.read_text(errors="replace") if log.is_file() else ""
            tail = text.strip().splitlines()[-5:]
            return VenvResult(name, None, f"pip install {' '.join(requirements)} failed: {exc}; "
                                          + " | ".join(tail))
        marker.write_text("\n".join(requirements))
    return VenvResult(name, python)


def pip_freeze(python: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Versions of the named distributions inside a venv (for the results file)."""
    out = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze",
                          "--disable-pip-version-check"], capture_output=True, text=True,
                         timeout=120).stdout
    found = {}
    for line in out.splitlines():
        pkg, _, ver = line.partition("==")
        if pkg.lower() in names:
            found[pkg.lower()] = ver
    return found


if __name__ == "__main__":  # warm the cache: .venv/bin/python bench/runtime/venvs.py [name ...]
    for peer in sys.argv[1:] or list(PEERS):
        print(ensure_venv(peer, {**PEERS, **TOOLS}[peer]), flush=True)
