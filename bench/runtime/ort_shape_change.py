"""What a change of batch size costs onnxruntime's CUDA provider, in-process (no server).

    python bench/runtime/ort_shape_change.py      # needs a CUDA device and onnxruntime-gpu

resnet18 (run.py's model) in one session per configuration; every batch size 1..32 is run once
first, so nothing is cold. Then: the median of 30 calls at a fixed batch of 8, and the median per
batch size of 300 calls whose batch size is drawn at random from 1..8 (so it usually differs
from the previous call's). This is what dynamic batching does to the model, and why the runtime
pads batches for onnxruntime on CUDA (``--pad-batches auto``).
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models as bench_models
from launch import MODEL_CACHE

CONFIGS: list[tuple[str, dict[str, str], bool]] = [
    ("HEURISTIC conv search", {"cudnn_conv_algo_search": "HEURISTIC"}, True),
    ("EXHAUSTIVE conv search (the default)", {"cudnn_conv_algo_search": "EXHAUSTIVE"}, True),
    ("HEURISTIC, arena kSameAsRequested",
     {"cudnn_conv_algo_search": "HEURISTIC", "arena_extend_strategy": "kSameAsRequested"}, True),
    ("HEURISTIC, max cuDNN workspace",
     {"cudnn_conv_algo_search": "HEURISTIC", "cudnn_conv_use_max_workspace": "1"}, True),
    ("HEURISTIC, memory pattern off", {"cudnn_conv_algo_search": "HEURISTIC"}, False),
]


CUDA = "CUDAExecutionProvider"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        print(__doc__)
        return 0
    if args:
        print(f"ort_shape_change: takes no arguments (got {args}); see --help", file=sys.stderr)
        return 2
    if hasattr(ort, "preload_dlls"):
        ort.preload_dlls()
    if CUDA not in ort.get_available_providers():
        # onnxruntime would fall back to the CPU and these figures would be the CPU's
        print(f"ort_shape_change: skipped: onnxruntime {ort.__version__} has no {CUDA} "
              f"(providers: {', '.join(ort.get_available_providers())}); it needs "
              "onnxruntime-gpu and a CUDA device", file=sys.stderr)
        return 2
    path = str(bench_models.ensure_model("resnet18", MODEL_CACHE).onnx)
    rng = np.random.default_rng(0)
    xs = {b: rng.standard_normal((b, 3, 224, 224)).astype(np.float32) for b in range(1, 33)}
    for label, cuda_options, mem_pattern in CONFIGS:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.enable_mem_pattern = mem_pattern
        session = ort.InferenceSession(
            path, options, providers=[(CUDA, {"use_tf32": "0", **cuda_options})])
        if session.get_providers()[0] != CUDA:
            print(f"ort_shape_change: {label}: the session runs on {session.get_providers()}, "
                  f"not {CUDA}: stopped", file=sys.stderr)
            return 2
        for b in range(1, 33):
            session.run(None, {"input": xs[b]})
        fixed = []
        for _ in range(30):
            t0 = time.perf_counter()
            session.run(None, {"input": xs[8]})
            fixed.append(time.perf_counter() - t0)
        varying: dict[int, list[float]] = {}
        for _ in range(300):
            b = int(rng.integers(1, 9))
            t0 = time.perf_counter()
            session.run(None, {"input": xs[b]})
            varying.setdefault(b, []).append(time.perf_counter() - t0)
        per_size = {b: round(statistics.median(v) * 1000, 2) for b, v in sorted(varying.items())}
        print(f"{label}: fixed batch 8 {statistics.median(fixed) * 1000:.2f} ms; batch size "
              f"varying 1..8, median ms per size {per_size}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
