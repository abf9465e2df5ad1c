"""The runtime on a GPU: onnxruntime's CUDA provider and torch on CUDA, beside the in-process limit.

    python bench/runtime/gpu.py --out DIR      # needs a CUDA device and onnxruntime-gpu

resnet18 (the model of run.py, random weights, dynamic batch axis) served by
``python -m kubemaas_runtime --device cuda`` as ONNX (CUDA execution provider) with batching off
and on (JSON and binary tensors; FP32, and TF32 with ``--tf32 true``), and as TorchScript on CUDA
(binary, batching on). ``wrk`` (two threads, on cores apart from the server's) POSTs one v2
request over 1..64 connections to 127.0.0.1. The limit beside it: the same ONNX session and the
same TorchScript module called in-process with host numpy arrays (per-call latency at batch 1,
rows/s at batch 32), to which a server adds its HTTP, decode and batching costs. Each server's
first answer is compared with onnxruntime's on the CPU (max abs difference recorded).
Results: a line per point, and DIR/gpu-bench.json.

Peers (KServe, MLServer, PyTriton) are not run here: the GPU machine this was written for has no
network, and PyTriton's wheel alone is over what can be carried to it; run.py compares them on CPU.
Traffic goes only to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import launch  # noqa: E402
import loadtools  # noqa: E402
import measure  # noqa: E402
import models as bench_models  # noqa: E402
import procfs  # noqa: E402

MAX_BATCH = 32


@dataclass(frozen=True)
class Config:
    key: str
    model: str          # mlp | resnet18
    fmt: str            # onnx | torchscript
    device: str         # cuda | cpu
    batching: bool
    body: str           # json | binary
    extra: tuple[str, ...] = ()


GPU_CONFIGS = [
    Config("ort-cuda", "resnet18", "onnx", "cuda", False, "json"),
    Config("ort-cuda-batch", "resnet18", "onnx", "cuda", True, "json"),
    Config("ort-cuda-batch-bin", "resnet18", "onnx", "cuda", True, "binary"),
    Config("ort-cuda-batch-bin-tf32", "resnet18", "onnx", "cuda", True, "binary",
           ("--tf32", "true")),
    Config("torch-cuda-batch-bin", "resnet18", "torchscript", "cuda", True, "binary"),
]


def torchscript_resnet18(workdir: Path) -> Path:
    """resnet18 with models.py's weights (same seed), traced, with the metadata the runtime reads
    so that names and the dynamic batch axis match the ONNX file's."""
    import torch
    import torchvision

    path = workdir / "resnet18.torchscript.pt"
    if path.is_file():
        return path
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None).eval()
    traced = torch.jit.trace(net, torch.randn(1, 3, 224, 224))
    meta = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 224, 224]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 1000]}]}
    tmp = path.with_suffix(".tmp")
    torch.jit.save(traced, str(tmp), _extra_files={"kubemaas.json": json.dumps(meta)})
    tmp.replace(path)
    return path


def answer_error(port: int, path: str, model: bench_models.ModelFiles, body: str) -> float:
    """Max abs difference between the server's answer and onnxruntime's on CPU (GPU kernels,
    TF32 included, do not give the CPU's bits)."""
    expected = np.load(model.sample)["y"]
    return float(np.max(np.abs(loadtools.served_output(port, path, model, body) - expected)))


def serve(cfg: Config, model_path: Path, port: int, log: Path, core: str,
          extra: list[str]) -> launch.Running:
    cmd = [sys.executable, "-m", "kubemaas_runtime", "--model-uri", str(model_path),
           "--format", cfg.fmt, "--name", cfg.model, "--host", launch.HOST, "--port", str(port),
           "--device", cfg.device, "--log-format", "json",
           "--cache-dir", str(launch.MODEL_CACHE / "runtime-cache")]
    if cfg.device == "cpu":
        cmd += ["--intra-op-threads", "1", "--inter-op-threads", "0"]
    if cfg.batching:
        cmd += ["--max-batch-size", str(MAX_BATCH), "--max-batch-delay-ms", "0"]
    cmd += [*cfg.extra, *extra]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE.parent.parent / "runtime"), env.get("PYTHONPATH")) if p)
    return launch.Running(cmd, env, port, log, core)


def sweep(cfg: Config, model: bench_models.ModelFiles, model_path: Path, concurrency: list[int],
          seconds: float, cores: tuple[str, str, int], out_dir: Path,
          extra: list[str]) -> dict[str, Any]:
    server_cores, load_cores, load_threads = cores
    port = launch.free_port()
    run = serve(cfg, model_path, port, out_dir / f"{cfg.key}.log", server_cores, extra)
    result: dict[str, Any] = {"config": cfg.__dict__ | {"extra": list(cfg.extra)}, "points": []}
    try:
        result["ready_s"] = round(run.wait_ready(f"/v2/models/{cfg.model}/ready", 180), 3)
        path = f"/v2/models/{cfg.model}/infer"
        result["max_abs_diff_vs_cpu"] = answer_error(port, path, model, cfg.body)
        # the first batched calls pick kernels (cuDNN search) for each batch size: warm them all
        loadtools.run_wrk(port, path, model, cfg.body, max(concurrency), 4, load_cores,
                      load_threads)
        for conns in concurrency:
            measure.settle(run.pid)
            loadtools.run_wrk(port, path, model, cfg.body, conns, 1, load_cores, load_threads)
            measure.settle(run.pid)
            ticks0, wall0 = procfs.tree_cpu_ticks(procfs.process_tree(run.pid)), time.perf_counter()
            with procfs.RssSampler(run.pid) as rss:
                w = loadtools.run_wrk(port, path, model, cfg.body, conns, seconds, load_cores,
                                  load_threads)
            wall = time.perf_counter() - wall0
            cpu = (procfs.tree_cpu_ticks(procfs.process_tree(run.pid)) - ticks0) / procfs.CLK_TCK
            lat = w["latency_us"]
            rps = w["requests"] / (w["duration_us"] / 1e6)
            result["points"].append({
                "concurrency": conns, "rps": round(rps, 1),
                "p50_ms": lat["p50"] / 1000, "p90_ms": lat["p90"] / 1000,
                "p99_ms": lat["p99"] / 1000, "p99_over_p50": round(lat["p99"] / lat["p50"], 2),
                "errors": sum(w["errors"].values()),
                "server_cpu_pct": round(100 * cpu / wall, 1),
                "cpu_ms_per_request": round(1000 * cpu / max(1, w["requests"]), 3),
                "peak_rss_mb": round(rss.peak / 2**20, 1)})
            print(f"  {cfg.key:22s} c={conns:<3d} {rps:8.1f} req/s  p50 {lat['p50'] / 1000:7.3f}"
                  f"  p99 {lat['p99'] / 1000:7.3f} ms  cpu {100 * cpu / wall:5.0f}%", flush=True)
    except Exception as exc:  # recorded: the run goes on with the next config
        result["error"] = f"{type(exc).__name__}: {exc} | {run.log_tail()}"
        print(f"  {cfg.key}: {result['error']}", flush=True)
    finally:
        run.stop()
    return result


def inprocess_gpu(onnx_path: Path, ts_path: Path, seconds: float) -> dict[str, Any]:
    """The same ONNX file through onnxruntime's CUDA provider and the TorchScript module on CUDA,
    called in-process with host arrays, as the servers are."""
    import onnxruntime as ort
    import torch

    def timed(fn: Any, x: np.ndarray, min_calls: int) -> list[float]:
        for _ in range(5):
            fn(x)
        times: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < min_calls:
            t0 = time.perf_counter()
            fn(x)
            times.append(time.perf_counter() - t0)
        return times

    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, 3, 224, 224)).astype(np.float32)
    many = rng.standard_normal((MAX_BATCH, 3, 224, 224)).astype(np.float32)
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    sess = ort.InferenceSession(str(onnx_path), providers=["CUDAExecutionProvider"])
    net = torch.jit.load(str(ts_path), map_location="cuda").eval()

    def torch_run(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return np.asarray(net(torch.from_numpy(x).to("cuda")).cpu().numpy())

    result: dict[str, Any] = {"providers": sess.get_providers()}
    def ort_run(x: np.ndarray) -> Any:
        return sess.run(None, {"input": x})

    for key, fn in (("ort-cuda", ort_run), ("torch-cuda", torch_run)):
        t1 = np.array(timed(fn, one, 50)) * 1000
        tb = np.array(timed(fn, many, 10))
        result[key] = {"batch1_p50_ms": round(float(np.percentile(t1, 50)), 3),
                       "batch1_p99_ms": round(float(np.percentile(t1, 99)), 3),
                       f"batch{MAX_BATCH}_rows_per_s": round(MAX_BATCH / float(np.median(tb)), 1)}
        print(f"  in-process {key}: {result[key]}", flush=True)
    return result


def cuda_missing(ort_providers: list[str], torch_cuda: bool) -> str | None:
    """Why this machine cannot run the check, or None: without them onnxruntime falls back to
    the CPU with a warning and torch fails on its first CUDA tensor."""
    why = []
    if "CUDAExecutionProvider" not in ort_providers:
        why.append(f"onnxruntime has no CUDAExecutionProvider ({', '.join(ort_providers)})")
    if not torch_cuda:
        why.append("torch.cuda.is_available() is False")
    return "; ".join(why) or None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=6.0, help="measured seconds per point")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--configs", nargs="+", choices=[c.key for c in GPU_CONFIGS],
                    default=[c.key for c in GPU_CONFIGS])
    ap.add_argument("--extra", nargs="+", default=[], help="more runtime flags for every server")
    ap.add_argument("--no-inprocess", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = launch.MODEL_CACHE
    doc: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "command": " ".join(sys.argv), "cpus": os.cpu_count()}
    try:
        doc["gpu_name"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        doc["gpu_name"] = None
    import onnxruntime

    doc["onnxruntime"] = onnxruntime.__version__
    import torch

    doc["torch"] = torch.__version__
    missing = cuda_missing(onnxruntime.get_available_providers(), torch.cuda.is_available())
    if missing:
        print(f"runtime/gpu.py: skipped: {missing}; it needs a CUDA device and onnxruntime-gpu",
              file=sys.stderr)
        return 2
    resnet = bench_models.ensure_model("resnet18", work)
    ts_path = torchscript_resnet18(work)
    if not args.no_inprocess:
        doc["inprocess"] = inprocess_gpu(resnet.onnx, ts_path, 3.0)
    # server on 8 cores, wrk on 2 others: the box has 16
    cores = ("0-7", "10-11", 2)
    doc["gpu"] = [sweep(cfg, resnet, ts_path if cfg.fmt == "torchscript" else resnet.onnx,
                        args.concurrency, args.seconds, cores, args.out, args.extra)
                  for cfg in GPU_CONFIGS if cfg.key in args.configs]
    (args.out / "gpu-bench.json").write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
