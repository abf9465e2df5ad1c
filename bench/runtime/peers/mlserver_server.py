"""MLServer peer launcher: writes settings.json and model-settings.json into a fresh folder and
execs ``mlserver start`` there (same process id, so the benchmark measures the right tree).

    python mlserver_server.py --model m.onnx --name mlp --port 8080 --grpc-port 8081 \
        --metrics-port 8082 --intra 1 [--batch 32 --batch-time-s 0.001] [--workers 1]

``--batch N`` turns on MLServer's adaptive batching (max_batch_size N, max_batch_time T).
``--workers`` is MLServer's parallel_workers: 1 (its default) runs inference in one worker process
behind an IPC queue; 0 runs it in the server process. debug is off (its default, on, logs every
request).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--grpc-port", type=int, required=True)
    ap.add_argument("--metrics-port", type=int, required=True)
    ap.add_argument("--intra", type=int, default=1)
    ap.add_argument("--batch", type=int, default=0)
    ap.add_argument("--batch-time-s", type=float, default=0.001)
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()

    here = Path(__file__).resolve().parent
    root = Path(tempfile.mkdtemp(prefix="kubemaas-bench-mlserver-"))
    model_dir = root / args.name
    model_dir.mkdir()
    for name in ("mlserver_model.py", "ortsession.py"):
        shutil.copy(here / name, model_dir / name)
    (root / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": args.port, "grpc_port": args.grpc_port,
        "metrics_port": args.metrics_port, "parallel_workers": args.workers, "debug": False}))
    model: dict[str, object] = {
        "name": args.name, "implementation": "mlserver_model.OnnxModel",
        "parameters": {"uri": str(Path(args.model).resolve()),
                       "extra": {"intra": args.intra}}}
    if args.batch:
        model["max_batch_size"] = args.batch
        model["max_batch_time"] = args.batch_time_s
    (model_dir / "model-settings.json").write_text(json.dumps(model))
    exe = Path(sys.executable).parent / "mlserver"
    os.execv(str(exe), [str(exe), "start", str(root)])


if __name__ == "__main__":
    main()
