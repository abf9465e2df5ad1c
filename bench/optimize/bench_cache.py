"""What a ModelCache saves: the optimize step once in the cache against once per pod.

    PYTHONPATH=runtime:hack:. .venv/bin/python bench/optimize/bench_cache.py [--pods 3]

For each model and option: the wall time of the optimize step as a model pod runs it without a
cache (``python -m kubemaas_runtime.optimize`` into the pod's own directory: every pod pays it),
the same step once in the cache (``--publish``), and a model pod's step on the cache's result
(``--from-cache``, the cache mounted read-only is not needed for the timing), each a fresh
process as an init container is. The cache's directory is laid out as the downloader leaves it
(the model file and ``.kubemaas-manifest.json``). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_optimize import make_mlp, resnet18_dir


def fill(cache: Path, model: Path) -> None:
    cache.mkdir(parents=True)
    data = model.read_bytes()
    (cache / "model.onnx").write_bytes(data)
    (cache / ".kubemaas-manifest.json").write_text(json.dumps({"files": [
        {"path": "model.onnx", "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}]}))


def step(cache: Path, out: Path, opts: list[str], *extra: str) -> tuple[float, dict[str, object]]:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kubemaas_runtime.optimize", "--model-uri",
                           f"file://{cache}", "--format", "onnx", "--out", str(out),
                           "--termination-message-path", str(out.parent / "term"), "--repeats",
                           "3", *opts, *extra], capture_output=True, text=True, timeout=1200)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return seconds, json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pods", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_mlp(work / "mlp.onnx")
        cases = [("mlp", work / "mlp.onnx", ["--quantize", "fp16"]),
                 ("resnet18", resnet18_dir() / "resnet18.onnx", ["--quantize", "int8-static"])]
        print(f"| model | option | per pod, no cache (s) | once in the cache (s) | per pod, from "
              f"the cache (s, median of {args.pods}) | {args.pods} pods: no cache / cache (s) |")
        print("|---|---|---|---|---|---|")
        for name, model, opts in cases:
            cache = work / f"{name}-cache"
            fill(cache, model)
            alone, rep = step(cache, work / f"{name}-pod0" / "optimized", opts)
            assert rep["cached"] is False
            once, rep = step(cache, cache / ".kubemaas-optimized" / "k", opts, "--publish")
            assert rep["cached"] is False
            reads = []
            for i in range(args.pods):
                t, rep = step(cache, work / f"{name}-pod{i + 1}" / "optimized", opts,
                              "--from-cache", str(cache / ".kubemaas-optimized" / "k"))
                assert rep["optimizedIn"] == "modelCache"
                reads.append(t)
            per = statistics.median(reads)
            print(f"| {name} | {' '.join(opts[1:])} | {alone:.2f} | {once:.2f} | {per:.2f} | "
                  f"{args.pods * alone:.1f} / {once + sum(reads):.1f} |", flush=True)


if __name__ == "__main__":
    main()
