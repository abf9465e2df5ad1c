"""The limit: onnxruntime called in-process, no server, same session options as every server.

    taskset -c 0 python inprocess.py MODEL.onnx --row-shape 32 --seconds 3 --batch 32

Prints one JSON line: per-call latency at batch 1 (what one request costs without any server:
p50/p99/mean, microseconds) and rows per second when calls carry ``--batch`` rows (what
batching can reach at best). Runs in our own venv, pinned by the caller to the server's core.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from ortsession import make_session  # the peers' exact session


def _timed(session, feed: dict[str, np.ndarray], seconds: float, min_calls: int) -> list[float]:  # type: ignore[no-untyped-def]
    for _ in range(3):
        session.run(None, feed)
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < min_calls:
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--row-shape", type=int, nargs="+", required=True)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--intra", type=int, default=1)
    args = ap.parse_args()
    session = make_session(args.model, args.intra)
    name = session.get_inputs()[0].name
    rng = np.random.default_rng(0)
    one = rng.standard_normal((1, *args.row_shape)).astype(np.float32)
    t1 = np.array(_timed(session, {name: one}, args.seconds, 20)) * 1e6
    many = rng.standard_normal((args.batch, *args.row_shape)).astype(np.float32)
    tb = np.array(_timed(session, {name: many}, args.seconds, 3))
    print(json.dumps({
        "calls": len(t1),
        "latency_us": {"p50": float(np.percentile(t1, 50)), "p99": float(np.percentile(t1, 99)),
                       "mean": float(t1.mean()), "min": float(t1.min())},
        "batch": args.batch, "batch_calls": len(tb),
        "batch_rows_per_s": float(args.batch / np.median(tb)),
        "rows_per_s_at_batch1": float(1e6 / np.median(t1)),
    }))


if __name__ == "__main__":
    main()
