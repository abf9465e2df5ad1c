"""Load on one server: wrk or hey for a bounded time, and a check of one answer against
onnxruntime's."""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import models as bench_models
import numpy as np
from launch import HERE, HOST, http_request


def run_wrk(port: int, path: str, model: bench_models.ModelFiles, body: str, conns: int,
            seconds: float, core: str, threads: int = 1) -> dict[str, Any]:
    env = dict(os.environ)
    if body == "binary":
        env["BENCH_BODY"] = str(model.binary_body)
        env["BENCH_CONTENT_TYPE"] = "application/octet-stream"
        env["BENCH_HEADER_LEN"] = str(model.binary_header_len)
    else:
        env["BENCH_BODY"] = str(model.json_body)
        env["BENCH_CONTENT_TYPE"] = "application/json"
    cmd = ["taskset", "-c", core, "wrk", f"-t{min(threads, conns)}", f"-c{conns}",
           f"-d{max(1, round(seconds))}s",
           "--timeout", "60s", "-s", str(HERE / "post.lua"), f"http://{HOST}:{port}{path}"]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=seconds + 90)
    for line in out.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            return dict(json.loads(line[len("BENCH_JSON "):]))
    raise RuntimeError(f"wrk gave no summary (rc {out.returncode}): {out.stderr.strip()[:300]}")


def run_hey(port: int, path: str, model: bench_models.ModelFiles, body: str, conns: int,
            seconds: float, core: str) -> dict[str, Any]:
    """The same point with hey (Go): per-request CSV, percentiles computed here."""
    if body == "binary":
        data, ctype = model.binary_body, "application/octet-stream"
        extra = ["-H", f"Inference-Header-Content-Length: {model.binary_header_len}"]
    else:
        data, ctype, extra = model.json_body, "application/json", []
    cmd = ["taskset", "-c", core, "hey", "-z", f"{max(1, round(seconds))}s", "-c", str(conns),
           "-m", "POST", "-T", ctype, "-D", str(data), *extra, "-t", "60", "-o", "csv",
           f"http://{HOST}:{port}{path}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 90)
    rows = [line.split(",") for line in out.stdout.splitlines()[1:] if line.count(",") == 7]
    if not rows:
        raise RuntimeError(f"hey gave no rows (rc {out.returncode}): {out.stderr.strip()[:300]}")
    lat = np.array([float(r[0]) for r in rows]) * 1e6
    status = [r[6] for r in rows]
    end = max(float(r[7]) + float(r[0]) for r in rows)
    bad = sum(1 for st in status if st != "200")
    return {"requests": len(rows), "duration_us": max(end, seconds) * 1e6,
            "errors": {"connect": 0, "read": 0, "write": 0, "status": bad, "timeout": 0},
            "latency_us": {"min": float(lat.min()), "mean": float(lat.mean()),
                           "p50": float(np.percentile(lat, 50)),
                           "p90": float(np.percentile(lat, 90)),
                           "p99": float(np.percentile(lat, 99)),
                           "p999": float(np.percentile(lat, 99.9)), "max": float(lat.max())}}


LOAD_TOOLS = {"wrk": run_wrk, "hey": run_hey}


def served_output(port: int, path: str, model: bench_models.ModelFiles,
                  body: str) -> np.ndarray:
    """The server's answer to the model's request (JSON or binary), as an array; RuntimeError
    when it is not a 200."""
    if body == "binary":
        data = model.binary_body.read_bytes()
        headers = {"Content-Type": "application/octet-stream",
                   "Inference-Header-Content-Length": str(model.binary_header_len)}
    else:
        data = model.json_body.read_bytes()
        headers = {"Content-Type": "application/json"}
    status, rh, raw = http_request(port, "POST", path, data, headers)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {raw[:300]!r}")
    hlen = rh.get("inference-header-content-length")
    if hlen is not None:
        out = json.loads(raw[:int(hlen)])["outputs"][0]
        got = np.frombuffer(raw[int(hlen):], dtype=np.float32)
    else:
        out = json.loads(raw)["outputs"][0]
        got = np.asarray(out["data"], dtype=np.float32)
    return got.reshape(out["shape"])


def check_answer(port: int, path: str, model: bench_models.ModelFiles, body: str) -> str | None:
    """None when the server's answer equals onnxruntime's; else what is wrong."""
    expected = np.load(model.sample)["y"]
    try:
        got = served_output(port, path, model, body)
    except RuntimeError as err:
        return str(err)
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        return f"answer differs from onnxruntime's: shape {got.shape}, " \
               f"max abs diff {float(np.max(np.abs(got - expected))):.3g}"
    return None
