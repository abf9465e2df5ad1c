"""One server's run (cold starts, answer check, a point per concurrency, retried while other
processes disturb it) and the in-process onnxruntime limit."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import models as bench_models
from launch import HERE, MAX_BATCH, Running, Server, free_port, server_command
from loadtools import LOAD_TOOLS, check_answer
from procfs import (
    CLK_TCK,
    RssSampler,
    cpu_busy_ticks,
    loadavg,
    process_tree,
    tree_cpu_ticks,
    tree_rss,
)


@dataclass
class Plan:
    concurrency: list[int]
    warm_s: dict[str, float]
    measure_s: dict[str, float]
    cold_starts: int
    server_core: str
    load_core: str
    intra: int
    retries: int = 2
    disturbed_pct: float = 10.0
    max_load: float = 0.0
    load_wait_s: float = 0.0
    load_tool: str = "wrk"
    results: dict[str, Any] = field(default_factory=dict)


def settle(pid: int, limit_s: float = 60.0) -> float:
    """Wait until the server is idle again (a closed wrk leaves requests it had sent behind:
    a slow server is still working on them). Returns the seconds waited."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit_s:
        pids = process_tree(pid)
        before = tree_cpu_ticks(pids)
        time.sleep(0.3)
        if (tree_cpu_ticks(pids) - before) / CLK_TCK / 0.3 < 0.05:
            break
    return round(time.perf_counter() - t0, 2)


def measure_point(run: Running, path: str, model: bench_models.ModelFiles, body: str,
                  conns: int, plan: Plan) -> dict[str, Any]:
    settled = settle(run.pid)
    pids = process_tree(run.pid)
    cpu0 = cpu_busy_ticks(int(plan.server_core))
    load0 = cpu_busy_ticks(int(plan.load_core))
    tool0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ticks0, wall0 = tree_cpu_ticks(pids), time.perf_counter()
    with RssSampler(run.pid) as rss:
        w = LOAD_TOOLS[plan.load_tool](run.port, path, model, body, conns,
                                       plan.measure_s[model.name], plan.load_core)
    wall = time.perf_counter() - wall0
    ticks = tree_cpu_ticks(process_tree(run.pid)) - ticks0
    cpu1 = cpu_busy_ticks(int(plan.server_core))
    load1 = cpu_busy_ticks(int(plan.load_core))
    tool1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    core_busy = (cpu1[0] - cpu0[0]) / max(1, cpu1[1] - cpu0[1])
    load_busy = (load1[0] - load0[0]) / max(1, load1[1] - load0[1])
    tool_cpu = (tool1.ru_utime + tool1.ru_stime - tool0.ru_utime - tool0.ru_stime) / wall
    server_cpu = ticks / CLK_TCK / wall
    lat = w["latency_us"]
    return {
        "concurrency": conns, "requests": w["requests"],
        "rps": round(w["requests"] / (w["duration_us"] / 1e6), 1),
        "p50_ms": lat["p50"] / 1000, "p90_ms": lat["p90"] / 1000,
        "p99_ms": lat["p99"] / 1000, "mean_ms": round(lat["mean"] / 1000, 3),
        "max_ms": lat["max"] / 1000, "errors": w["errors"],
        "error_total": sum(w["errors"].values()),
        "server_cpu_pct": round(100 * server_cpu, 1),
        "core0_other_pct": round(100 * max(0.0, core_busy - server_cpu), 1),
        "load_tool_cpu_pct": round(100 * tool_cpu, 1),
        # the load core also runs this script's sampler (a few %): counted as "other"
        "core1_other_pct": round(100 * max(0.0, load_busy - tool_cpu), 1)
        if plan.load_core != plan.server_core else 0.0,
        "peak_rss_mb": round(rss.peak / 2**20, 1),
        "loadavg": loadavg(), "settle_s": settled,
    }


def wait_for_quiet(plan: Plan) -> None:
    """With --max-load: wait (bounded) until the 1-minute load average is below it."""
    if not plan.max_load:
        return
    end = time.monotonic() + plan.load_wait_s
    while loadavg()[0] > plan.max_load and time.monotonic() < end:
        print(f"  1-minute load {loadavg()[0]:.2f} > {plan.max_load}; waiting", flush=True)
        time.sleep(15)


def _disturbance(point: dict[str, Any]) -> float:
    """CPU that processes other than the server and the load tool used on the two cores."""
    return float(max(point["core0_other_pct"], point["core1_other_pct"]))


def bench_server(srv: Server, python: Path, model: bench_models.ModelFiles, plan: Plan,
                 logdir: Path) -> dict[str, Any]:
    res: dict[str, Any] = {"server": srv.key, "impl": srv.impl, "batching": srv.batching,
                           "body": srv.body, "note": srv.note, "model": model.name,
                           "points": [], "cold_start_s": [], "error": None}
    ready_path = f"/v2/models/{model.name}/ready"
    infer_path = f"/v2/models/{model.name}/infer"
    starts = plan.cold_starts if model.name == "mlp" else 1
    wait_for_quiet(plan)
    run: Running | None = None
    try:
        for i in range(starts):
            port = free_port()
            cmd, env = server_command(srv, python, model, port, plan.intra)
            res["command"] = cmd
            run = Running(cmd, env, port, logdir / f"{srv.key}-{model.name}-{i}.log",
                          plan.server_core)
            res["cold_start_s"].append(round(run.wait_ready(ready_path, 180), 4))
            if i < starts - 1:
                run.stop()
                run = None
        assert run is not None
        res["idle_rss_mb"] = round(tree_rss(process_tree(run.pid)) / 2**20, 1)
        problem = check_answer(run.port, infer_path, model, srv.body)
        if problem:
            raise RuntimeError(problem)
        for conns in plan.concurrency:
            settle(run.pid)
            LOAD_TOOLS[plan.load_tool](run.port, infer_path, model, srv.body, conns,
                                       plan.warm_s[model.name], plan.load_core)
            point: dict[str, Any] | None = None
            for attempt in range(1 + plan.retries):
                candidate = measure_point(run, infer_path, model, srv.body, conns, plan)
                candidate["attempt"] = attempt + 1
                if point is None or _disturbance(candidate) < _disturbance(point):
                    point = candidate
                if _disturbance(point) <= plan.disturbed_pct:
                    break
            assert point is not None
            point["disturbed"] = _disturbance(point) > plan.disturbed_pct
            res["points"].append(point)
            errors = point["error_total"]
            print(f"  {srv.key:<20} {model.name:<9} c={conns:<3} {point['rps']:>8.1f} req/s  "
                  f"p50 {point['p50_ms']:8.3f}  p99 {point['p99_ms']:8.3f} ms  "
                  f"cpu {point['server_cpu_pct']:5.1f}%  rss {point['peak_rss_mb']:6.1f} MB  "
                  f"other@core0 {point['core0_other_pct']:4.1f}% "
                  f"other@core1 {point['core1_other_pct']:4.1f}% (try {point['attempt']})"
                  + (f"  ERRORS {point['errors']}" if errors else ""), flush=True)
            if run.proc.poll() is not None:
                raise RuntimeError(f"server exited during the run: {run.log_tail()}")
    except Exception as exc:
        res["error"] = f"{type(exc).__name__}: {exc}"
        print(f"  {srv.key:<20} {model.name:<9} FAILED: {res['error'][:400]}", flush=True)
    finally:
        if run is not None:
            run.stop()
    return res


def inprocess_limit(model: bench_models.ModelFiles, plan: Plan, seconds: float) -> dict[str, Any]:
    batch = MAX_BATCH if model.name == "mlp" else 8
    cmd = ["taskset", "-c", plan.server_core, sys.executable, str(HERE / "inprocess.py"),
           str(model.onnx), "--row-shape", *map(str, model.row_shape), "--seconds", str(seconds),
           "--batch", str(batch), "--intra", str(plan.intra)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode:
        return {"error": out.stderr.strip()[-500:]}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))
