"""Cold start and per-request latency of the textbook Keras models served by kubemaas.

    .venv/bin/python bench/runtime/keras.py [--seconds 10] [--conns 1,4] [--starts 3]

The models are the tests' (tests/runtime/make_keras_models.py: built by TensorFlow 2.21 in its
side virtualenv, random weights). For each way of serving the MNIST model (and the LSTM text
classifier) it starts the runtime pinned to core 0 `--starts` times and reads
``seconds_to_ready`` from its "ready" log line (process start -> listening -> model fetched,
loaded and warmed; the interpreter's own start is the first ~0.1 s before "listening"), plus the
wall time from spawning the process to the first 200 of /v2/health/ready. Then `hey` on core 1
POSTs one instance to ``/v1/models/NAME:predict`` for ``--seconds`` at each connection count.
SavedModels are converted first (kubemaas_runtime.tfconvert, timed too). Prints one JSON line per
point; nothing is written to the docs by this script.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
from tests.runtime import keras_models  # noqa: E402

from kubemaas_testbed.processes import stop_child  # noqa: E402

HOST = "127.0.0.1"


def start(model: Path, port: int, log: Path) -> tuple[subprocess.Popen[bytes], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEMAAS_")}
    cmd = ["taskset", "-c", "0", sys.executable, "-m", "kubemaas_runtime", "--model-uri",
           str(model), "--name", "m", "--host", HOST, "--port", str(port),
           "--intra-op-threads", "1", "--log-format", "json"]
    t0 = time.perf_counter()
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = t0 + 300
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"runtime exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://{HOST}:{port}/v2/health/ready", timeout=1):
                return proc, time.perf_counter() - t0
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("runtime not ready in 300 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    stop_child(proc)


def seconds_to_ready(log: Path) -> float:
    for line in log.read_text().splitlines():
        if '"ready"' in line:
            return float(json.loads(line)["seconds_to_ready"])
    raise RuntimeError("no ready line")


def hey(port: int, body: Path, conns: int, seconds: float) -> dict[str, Any]:
    cmd = ["taskset", "-c", "1", "hey", "-z", f"{seconds:.0f}s", "-c", str(conns), "-m",
           "POST", "-T", "application/json", "-D", str(body), "-t", "60", "-o", "csv",
           f"http://{HOST}:{port}/v1/models/m:predict"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 90)
    rows = [ln.split(",") for ln in out.stdout.splitlines()[1:] if ln.count(",") == 7]
    lat = np.array([float(r[0]) for r in rows]) * 1e3
    bad = sum(1 for r in rows if r[6] != "200")
    return {"requests": len(rows), "errors": bad, "rps": round(len(rows) / seconds, 1),
            "p50_ms": round(float(np.percentile(lat, 50)), 3),
            "p90_ms": round(float(np.percentile(lat, 90)), 3),
            "p99_ms": round(float(np.percentile(lat, 99)), 3)}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--conns", default="1,4")
    ap.add_argument("--starts", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated subset of the served files")
    args = ap.parse_args(argv)
    for tool in ("hey", "taskset"):
        if shutil.which(tool) is None:
            print(f"error: {tool} not found (apt-get install -y hey util-linux)", file=sys.stderr)
            return 2
    models = keras_models.keras_models_dir()
    work = Path(tempfile.mkdtemp(prefix="kubemaas-keras-bench-"))
    files = ["mnist.keras", "mnist.h5", "mnist_k2.h5", "mnist_savedmodel", "text.keras",
             "text_savedmodel"]
    if args.only:
        files = [f for f in files if f in args.only.split(",")]
    print(json.dumps({"uptime": os.getloadavg(), "models": str(models)}), flush=True)
    try:
        for name in files:
            point: dict[str, Any] = {"model": name}
            path = models / name
            if name.endswith("_savedmodel"):
                t0 = time.perf_counter()
                proc = keras_models.tfconvert(["--model-uri", str(path), "--out",
                                               str(work / name)])
                if proc.returncode:
                    raise RuntimeError(proc.stderr[-2000:])
                point["convert_s"] = round(time.perf_counter() - t0, 2)
                path = work / name / "model.onnx"
            x = np.load(models / ("mnist_x.npy" if name.startswith("mnist") else "text_x.npy"))
            body = work / f"{name}.json"
            body.write_text(json.dumps({"instances": [x[0].tolist()]}))
            starts, ready = [], []
            for i in range(args.starts):
                port = free_port()
                log = work / f"{name}-{i}.log"
                proc_s, wall = start(path, port, log)
                starts.append(round(wall, 2))
                ready.append(seconds_to_ready(log))
                if i < args.starts - 1:
                    stop(proc_s)
            point["spawn_to_ready_s"] = starts
            point["seconds_to_ready"] = ready
            try:
                for conns in (int(c) for c in args.conns.split(",")):
                    hey(port, body, conns, 2)  # warm the connection path
                    point[f"c{conns}"] = hey(port, body, conns, args.seconds)
            finally:
                stop(proc_s)
            point["load_after"] = [round(v, 2) for v in os.getloadavg()]
            print(json.dumps(point), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
