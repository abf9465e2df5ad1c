"""Runtime start-up figures: how fast `--help` answers, how fast an ONNX model is served, and how
much memory the serving process holds (the targets docs/runtime.md states; the tests only check
what is functional: `--help` never imports torch, an ONNX server never imports torch).

    .venv/bin/python bench/runtime/startup.py [--runs 5]

Per run, for the benchmark's `mlp` model (models.py, generated offline), pinned to no core:

* ``help_s``: `python -m kubemaas_runtime --help`, process start to exit (target < 5 s);
* ``seconds_to_ready``: what the runtime's own "ready" log line says (load + warm-up, < 5 s);
* ``ready_endpoint_s``: process start until GET /v2/health/ready answers 200 (imports included);
* ``rss_mib``: the serving process's VmRSS once ready (target: 100 MB; the tests used to stop at
  150 MiB).

Prints each figure's median and worst, with the load average; the JSON goes to stdout's last line.
Traffic goes to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models as bench_models  # noqa: E402

TARGETS = {"help_s": 5.0, "seconds_to_ready": 5.0, "rss_mib": 100.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def help_seconds() -> float:
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "kubemaas_runtime", "--help"],
                          capture_output=True, text=True, timeout=60, check=True)
    took = time.monotonic() - start
    if "KUBEMAAS_MODEL_URI" not in proc.stdout:
        raise RuntimeError("--help does not list KUBEMAAS_MODEL_URI")
    return took


def serve_once(model: Path, workdir: Path) -> dict[str, float]:
    port = _free_port()
    log = workdir / f"runtime-{port}.log"
    start = time.monotonic()
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "kubemaas_runtime", "--model-uri",
                                 str(model), "--device", "cpu", "--host", "127.0.0.1",
                                 "--port", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        while not _ready(port):
            if proc.poll() is not None or time.monotonic() - start > 120:
                raise RuntimeError(f"the runtime did not become ready; see {log}")
            time.sleep(0.01)
        ready_endpoint = time.monotonic() - start
        status = Path(f"/proc/{proc.pid}/status").read_text()
        rss_kib = int(next(line for line in status.splitlines()
                           if line.startswith("VmRSS")).split()[1])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    docs = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    ready = next(doc for doc in docs if doc.get("msg") == "ready")
    return {"seconds_to_ready": float(ready["seconds_to_ready"]),
            "ready_endpoint_s": ready_endpoint, "rss_mib": rss_kib / 1024}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kubemaas-startup-") as tmp:
        workdir = Path(tmp)
        mlp = bench_models.ensure_model("mlp", workdir)
        runs: list[dict[str, float]] = []
        for _ in range(args.runs):
            runs.append({"help_s": help_seconds(), **serve_once(mlp.onnx, workdir)})
    out: dict[str, Any] = {"runs": runs, "loadavg": os.getloadavg(), "summary": {}}
    print(f"runtime start-up, {args.runs} runs, load average {os.getloadavg()[0]:.2f}")
    for key in ("help_s", "seconds_to_ready", "ready_endpoint_s", "rss_mib"):
        values = [r[key] for r in runs]
        median, worst = statistics.median(values), max(values)
        target = TARGETS.get(key)
        verdict = "" if target is None else (
            f"  target < {target:g}: {'met' if worst < target else 'NOT met'}")
        out["summary"][key] = {"median": median, "max": worst, "target": target}
        print(f"  {key:18} median {median:8.3f}  max {worst:8.3f}{verdict}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
