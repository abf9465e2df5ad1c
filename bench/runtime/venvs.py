"""One cached virtualenv per peer server, built with pip from PyPI.

Each peer gets its own environment because their pins clash (PyTriton needs numpy<2, KServe and
MLServer bring large, different stacks). Every environment gets the same onnxruntime version as
our runtime, so all servers run the same inference library with the same session options.

The cache key is the requirement list plus the Python version; a half-built venv is never used
(a marker file is written last; kubemaas_testbed.venvs builds it). Build failures are returned,
not raised: the benchmark records the error and carries on with the other peers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from kubemaas_testbed.venvs import BUILD_ERRORS, CachedVenv, VenvResult

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


def ensure_venv(name: str, requirements: list[str], timeout: float = 1800) -> VenvResult:
    """Return the python of a cached virtualenv with ``requirements`` installed."""
    # keyed as bench/llm/envs.py keys its one-step venvs: the two share the cache, and "plot"
    # under two keys would have each delete the other's (CachedVenv keeps one key per name)
    venv = CachedVenv(CACHE, name, repr([requirements]))
    try:
        return VenvResult(name, venv.ensure([requirements], timeout=timeout, log=True))
    except BUILD_ERRORS as exc:
        return VenvResult(name, None, f"pip install {' '.join(requirements)} failed: {exc}; "
                                      + " | ".join(venv.pip_log_tail(5)))


def main(argv: list[str]) -> int:
    """Warm the cache: ``.venv/bin/python bench/runtime/venvs.py [name ...]`` (every peer without
    names); names are checked before anything is built."""
    names = {**PEERS, **TOOLS}
    if argv in (["-h"], ["--help"]):
        print(__doc__ + f"\nnames: {', '.join(names)}")
        return 0
    unknown = [name for name in argv if name not in names]
    if unknown:
        print(f"venvs.py: unknown {', '.join(unknown)}; names: {', '.join(names)}",
              file=sys.stderr)
        return 2
    for peer in argv or list(PEERS):
        print(ensure_venv(peer, names[peer]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
