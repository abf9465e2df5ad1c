"""Runtime benchmark: our runtime against KServe, MLServer and PyTriton, and the in-process limit.

    .venv/bin/python bench/runtime/run.py            # the full sweep (about 15 minutes)
    .venv/bin/python bench/runtime/run.py --quick    # c=1 and 16, short points (a few minutes)

In one run, on the same model files, the same onnxruntime version and session options
(intra_op_num_threads=1, sequential, ORT_ENABLE_ALL, CPU) and the same machine:

* every server is started pinned to core 0 (``taskset -c 0``; its children inherit the mask);
* ``wrk`` (one thread) is pinned to core 1 and POSTs one fixed v2 infer body to 127.0.0.1 with
  1, 2, 4, 8, 16, 32 keep-alive connections, each point bounded in time;
* per point: req/s, p50/p90/p99 latency (wrk's histogram), errors, the server's CPU (utime+stime
  of its whole process tree from /proc/<pid>/stat deltas, 100% = one core), peak RSS of the tree
  (sampled), and what else ran on core 0 meanwhile (from /proc/stat);
* per server: cold start = process start -> the model's v2 ready endpoint answering 200, and a
  correctness check of one answer against onnxruntime's;
* the limit: onnxruntime in-process on core 0, per-call latency at batch 1 and rows/s batched.

Peers run from their own cached virtualenvs (venvs.py). A peer that cannot be installed or started
is recorded with its error and the run goes on. Results: bench/results/runtime-<UTC>.json (and
runtime-latest.json); ``--update-doc`` rewrites the results section of docs/runtime-benchmark.md
and the plot docs/img/runtime-benchmark.png.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import models as bench_models  # noqa: E402
import venvs  # noqa: E402

HOST = "127.0.0.1"  # the only address this benchmark sends traffic to
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")
MODEL_CACHE = Path.home() / ".cache" / "kubemaas" / "bench-models"
RESULTS = REPO / "bench" / "results"
DOC = REPO / "docs" / "runtime-benchmark.md"
PLOT = REPO / "docs" / "img" / "runtime-benchmark.png"
MAX_BATCH = 32


# --------------------------------------------------------------------------------------------
# /proc helpers
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def process_tree(root: int) -> list[int]:
    kids = _children_map()
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(kids.get(pid, []))
    return out


def tree_cpu_ticks(pids: list[int]) -> int:
    """utime+stime (+ reaped children's) of every process in the tree."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total


def tree_rss(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * PAGE
        except OSError:
            continue
    return total


def cpu_busy_ticks(cpu: int) -> tuple[int, int]:
    """(busy, total) ticks of one CPU from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                total = sum(v[:8])
                return total - v[3] - v[4], total
    return 0, 1


def loadavg() -> list[float]:
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def busy_processes(seconds: float = 2.0, top: int = 6) -> list[str]:
    """The processes that used the most CPU over ``seconds`` (who else is on the machine)."""
    def snapshot() -> dict[int, tuple[str, int]]:
        out = {}
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    with open(f"/proc/{entry.name}/stat") as f:
                        stat = f.read()
                except OSError:
                    continue
                comm = stat[stat.index("(") + 1:stat.rindex(")")]
                fields = stat[stat.rindex(")") + 2:].split()
                out[int(entry.name)] = (comm, int(fields[11]) + int(fields[12]))
        return out

    before = snapshot()
    time.sleep(seconds)
    after = snapshot()
    used = sorted(((t - before.get(pid, (c, t))[1], c, pid) for pid, (c, t) in after.items()),
                  reverse=True)[:top]
    return [f"{c}[{pid}] {100 * d / CLK_TCK / seconds:.0f}%" for d, c, pid in used if d > 0]


class RssSampler:
    """Peak RSS of a process tree, sampled every ``period`` seconds in a thread."""

    def __init__(self, root: int, period: float = 0.2) -> None:
        self.root, self.period, self.peak = root, period, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        pids = process_tree(self.root)
        n = 0
        while not self._stop.is_set():
            if n % 10 == 0:
                pids = process_tree(self.root)  # workers may come and go
            self.peak = max(self.peak, tree_rss(pids))
            n += 1
            self._stop.wait(self.period)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------------------------
# servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    key: str            # table name
    impl: str           # kubemaas | kserve | mlserver | pytriton
    batching: bool
    body: str = "json"  # json | binary
    note: str = ""


SERVERS: list[Server] = [
    Server("kubemaas", "kubemaas", False, note="batching off"),
    Server("kubemaas-batch", "kubemaas", True,
           note=f"--max-batch-size {MAX_BATCH} --max-batch-delay-ms 0"),
    Server("kubemaas-batch-bin", "kubemaas", True, "binary",
           note="as kubemaas-batch, binary tensor extension in and out"),
    Server("kserve", "kserve", False, note="custom kserve.Model; no batching in kserve's server"),
    Server("mlserver", "mlserver", False, note="custom MLModel, parallel_workers=1 (default)"),
    Server("mlserver-batch", "mlserver", True,
           note=f"adaptive batching max_batch_size={MAX_BATCH}, max_batch_time=1ms"),
    Server("pytriton", "pytriton", False, note="max_batch_size=1, no dynamic batcher"),
    Server("pytriton-batch", "pytriton", True,
           note=f"Triton dynamic batcher, max_batch_size={MAX_BATCH}, delay 0"),
    Server("pytriton-batch-bin", "pytriton", True, "binary",
           note="as pytriton-batch, binary tensor extension in and out"),
]


def server_command(srv: Server, python: Path, model: bench_models.ModelFiles, port: int,
                   intra: int) -> tuple[list[str], dict[str, str]]:
    env = dict(os.environ)
    peers = HERE / "peers"
    if srv.impl == "kubemaas":
        cmd = [str(python), "-m", "kubemaas_runtime", "--model-uri", str(model.onnx),
               "--format", "onnx", "--name", model.name, "--host", HOST, "--port", str(port),
               "--intra-op-threads", str(intra), "--inter-op-threads", "0",
               "--cache-dir", str(MODEL_CACHE / "runtime-cache"), "--log-format", "json"]
        if srv.batching:
            cmd += ["--max-batch-size", str(MAX_BATCH), "--max-batch-delay-ms", "0"]
        env["PYTHONPATH"] = str(REPO / "runtime")
        return cmd, env
    common = ["--model", str(model.onnx), "--name", model.name, "--port", str(port),
              "--intra", str(intra)]
    if srv.impl == "kserve":
        return [str(python), str(peers / "kserve_server.py"), *common], env
    if srv.impl == "mlserver":
        cmd = [str(python), str(peers / "mlserver_server.py"), *common,
               "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
        if srv.batching:
            cmd += ["--batch", str(MAX_BATCH), "--batch-time-s", "0.001"]
        return cmd, env
    if srv.impl == "pytriton":
        cmd = [str(python), str(peers / "pytriton_server.py"), *common,
               "--grpc-port", str(free_port()), "--metrics-port", str(free_port())]
        if srv.batching:
            cmd += ["--batch", str(MAX_BATCH), "--delay-us", "0"]
        # Triton's python backend stub links libpython3.X.so; make it find the one that matches
        # the venv's interpreter (pyenv builds), not an older system copy (stdlib mismatch).
        libdir = subprocess.run([str(python), "-c", "import sysconfig;"
                                 "print(sysconfig.get_config_var('LIBDIR'))"],
                                capture_output=True, text=True, check=True).stdout.strip()
        env["LD_LIBRARY_PATH"] = libdir + os.pathsep + env.get("LD_LIBRARY_PATH", "")
        return cmd, env
    raise ValueError(srv.impl)


def http_request(port: int, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None,
                 timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


class Running:
    """A server process (own session and process group), its log and its port."""

    def __init__(self, cmd: list[str], env: dict[str, str], port: int, log: Path,
                 core: str) -> None:
        self.port = port
        self.log = log
        self._log_f = log.open("wb")
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(["taskset", "-c", core, *cmd], env=env, cwd=str(REPO),
                                     stdout=self._log_f, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid  # taskset execs the command: same pid

    def wait_ready(self, path: str, timeout: float) -> float:
        deadline = self.t0 + timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with code {self.proc.returncode} before ready: "
                                   + self.log_tail())
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _, _ = http_request(self.port, "GET", path, timeout=1)
                if status == 200:
                    return time.perf_counter() - self.t0
            time.sleep(0.005)
        raise RuntimeError(f"not ready after {timeout:.0f}s: " + self.log_tail())

    def log_tail(self, lines: int = 6) -> str:
        self._log_f.flush()
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(line.strip()[:300] for line in text[-lines:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=20)
        # whatever is left in the group we created (Triton's stub, MLServer's workers)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._log_f.close()


# --------------------------------------------------------------------------------------------
# load
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


# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="c=1 and 16, short points")
    ap.add_argument("--servers", nargs="+", default=[s.key for s in SERVERS],
                    choices=[s.key for s in SERVERS])
    ap.add_argument("--models", nargs="+", default=["mlp", "resnet18"],
                    choices=list(bench_models.BUILDERS))
    ap.add_argument("--concurrency", type=int, nargs="+")
    ap.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    ap.add_argument("--cold-starts", type=int, default=3,
                    help="starts per server on the small model (median reported)")
    ap.add_argument("--max-load", type=float, default=0.0,
                    help="wait (up to --load-wait-s) until the 1-minute load is below this")
    ap.add_argument("--load-wait-s", type=float, default=600)
    ap.add_argument("--retries", type=int, default=2,
                    help="measure a point again (keep the least disturbed) when other processes "
                         "used more than --disturbed-pct of core 0 meanwhile")
    ap.add_argument("--disturbed-pct", type=float, default=10.0)
    ap.add_argument("--load-tool", choices=sorted(LOAD_TOOLS), default="wrk")
    ap.add_argument("--update-doc", action="store_true",
                    help="rewrite the results section of docs/runtime-benchmark.md and the plot")
    ap.add_argument("--no-plot", action="store_true")
    args = ap.parse_args(argv)
    # SIGTERM (and SIGINT, which a background job may ignore) unwind through the finally
    # blocks that stop the servers this run started
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_on_signal)

    for tool in (args.load_tool, "taskset"):
        if shutil.which(tool) is None:
            print(f"error: {tool} not found (apt-get install -y wrk hey util-linux)",
                  file=sys.stderr)
            return 2
    ncpu = os.cpu_count() or 1
    server_core, load_core = ("0", "1") if ncpu >= 2 else ("0", "0")
    # this process (its /proc sampler) stays off the server's core too
    os.sched_setaffinity(0, {int(load_core)})
    quick = args.quick
    plan = Plan(
        concurrency=args.concurrency or ([1, 16] if quick else [1, 2, 4, 8, 16, 32]),
        warm_s={"mlp": 1, "resnet18": 1 if quick else 3},
        measure_s={"mlp": 2 if quick else 4, "resnet18": 4 if quick else 8},
        cold_starts=1 if quick else args.cold_starts,
        server_core=server_core, load_core=load_core, intra=args.threads,
        retries=args.retries, disturbed_pct=args.disturbed_pct, max_load=args.max_load,
        load_wait_s=args.load_wait_s, load_tool=args.load_tool)

    wait_for_quiet(plan)

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    RESULTS.mkdir(parents=True, exist_ok=True)
    logdir = RESULTS / f"runtime-{stamp}-logs"
    logdir.mkdir()
    import onnxruntime

    meta: dict[str, Any] = {
        "started_utc": stamp, "command": " ".join([".venv/bin/python", "bench/runtime/run.py",
                                                   *(argv or sys.argv[1:])]),
        "quick": quick, "cpu_count": ncpu, "cpu_model": _cpu_model(),
        "kernel": platform.release(), "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__, "intra_op_threads": plan.intra,
        "server_core": server_core, "load_core": load_core,
        "loadavg_start": loadavg(), "busy_start": busy_processes(),
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "runtime_uncommitted": _git("status", "--short", "--", "runtime").splitlines(),
        "concurrency": plan.concurrency,
        "warm_s": plan.warm_s, "measure_s": plan.measure_s, "max_batch_size": MAX_BATCH,
        "retries": plan.retries, "disturbed_pct": plan.disturbed_pct,
        "max_load": plan.max_load,
        "load_tool": plan.load_tool,
    }
    print(f"kubemaas runtime benchmark {stamp}: {ncpu} CPUs, server on core {server_core}, "
          f"wrk on core {load_core}, load {meta['loadavg_start']}", flush=True)

    pythons: dict[str, Path | None] = {"kubemaas": Path(sys.executable)}
    venv_errors: dict[str, str] = {}
    versions: dict[str, dict[str, str]] = {}
    for impl in sorted({s.impl for s in SERVERS if s.key in args.servers} - {"kubemaas"}):
        print(f"venv {impl} ...", flush=True)
        v = venvs.ensure_venv(impl, venvs.PEERS[impl])
        pythons[impl] = v.python
        if v.error:
            venv_errors[impl] = v.error
            print(f"  {impl}: {v.error[:500]}", flush=True)
        else:
            assert v.python is not None
            versions[impl] = venvs.pip_freeze(v.python, ("kserve", "mlserver", "nvidia-pytriton",
                                                         "onnxruntime", "numpy", "uvloop"))
    meta["peer_versions"] = versions

    results: list[dict[str, Any]] = []
    limits: dict[str, Any] = {}
    for name in args.models:
        print(f"model {name} ...", flush=True)
        model = bench_models.ensure_model(name, MODEL_CACHE)
        limits[name] = inprocess_limit(model, plan, 2 if quick else 4)
        print(f"  in-process {name}: {json.dumps(limits[name])}", flush=True)
        for srv in SERVERS:
            if srv.key not in args.servers:
                continue
            python = pythons.get(srv.impl)
            if python is None:
                results.append({"server": srv.key, "impl": srv.impl, "model": name,
                                "batching": srv.batching, "body": srv.body, "note": srv.note,
                                "points": [], "cold_start_s": [],
                                "error": f"not installed: {venv_errors.get(srv.impl)}"})
                continue
            results.append(bench_server(srv, python, model, plan, logdir))
    meta["loadavg_end"] = loadavg()
    meta["busy_end"] = busy_processes()
    meta["finished_utc"] = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())

    doc = {"meta": meta, "inprocess": limits, "results": results}
    doc["targets"] = evaluate_targets(doc)
    out = RESULTS / f"runtime-{stamp}.json"
    out.write_text(json.dumps(doc, indent=1))
    (RESULTS / "runtime-latest.json").write_text(json.dumps(doc, indent=1))
    import report

    print()
    print(report.markdown_tables(doc))
    print(report.targets_markdown(doc))
    print(f"results: {out.relative_to(REPO)}")
    if not args.no_plot:
        report.plot(out, PLOT)
    if args.update_doc:
        report.update_doc(doc, DOC)
        print(f"updated {DOC.relative_to(REPO)}")
    return 0


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=str(REPO), capture_output=True, text=True)
    return out.stdout.strip()


def _cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


# --------------------------------------------------------------------------------------------
def _point(doc: dict[str, Any], server: str, model: str, conns: int) -> dict[str, Any] | None:
    for r in doc["results"]:
        if r["server"] == server and r["model"] == model and not r["error"]:
            for p in r["points"]:
                if p["concurrency"] == conns and not p["error_total"] and p["requests"]:
                    return dict(p)
    return None


def evaluate_targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each with the measured figure and met / not met / not measured."""
    out: list[dict[str, Any]] = []

    def add(target: str, measured: str, met: bool | None) -> None:
        out.append({"target": target, "measured": measured, "met": met})

    lim = doc["inprocess"].get("mlp", {})
    p = _point(doc, "kubemaas", "mlp", 1)
    if p and "latency_us" in lim:
        added = p["p50_ms"] - lim["latency_us"]["p50"] / 1000
        add("added latency over in-process onnxruntime at c=1 (mlp, p50) <= 0.45 ms",
            f"{added:.3f} ms ({p['p50_ms']:.3f} - {lim['latency_us']['p50'] / 1000:.3f})",
            added <= 0.45)
    else:
        add("added latency at c=1 <= 0.45 ms", "not measured", None)

    ours = _point(doc, "kubemaas", "mlp", 16)
    ks = _point(doc, "kserve", "mlp", 16)
    if ours and ks:
        ratio = ours["rps"] / ks["rps"]
        add("mlp c=16: req/s >= 3x KServe", f"{ratio:.2f}x ({ours['rps']:.0f} vs "
            f"{ks['rps']:.0f} req/s)", ratio >= 3)
        # CPU time per request does not depend on how much of the core the server got
        per_core = (ks["server_cpu_pct"] / ks["rps"]) / (ours["server_cpu_pct"] / ours["rps"])
        add("mlp c=16: requests per CPU-second >= 3x KServe (robust to other load)",
            f"{per_core:.2f}x ({100 * ours['rps'] / ours['server_cpu_pct']:.0f} vs "
            f"{100 * ks['rps'] / ks['server_cpu_pct']:.0f} req per CPU-s)", per_core >= 3)
    else:
        add("mlp c=16: req/s >= 3x KServe", "not measured", None)

    for conns in (16, 32):
        best_ours = max(((k, q) for k in ("kubemaas-batch", "kubemaas-batch-bin")
                         if (q := _point(doc, k, "resnet18", conns))),
                        key=lambda kq: kq[1]["rps"], default=None)
        json_ours = _point(doc, "kubemaas-batch", "resnet18", conns)
        peers = [(r["server"], q) for r in doc["results"]
                 if r["impl"] != "kubemaas" and r["model"] == "resnet18"
                 and r.get("body", "json") == "json"
                 and (q := _point(doc, r["server"], "resnet18", conns))]
        bin_peers = [(r["server"], q) for r in doc["results"]
                     if r["impl"] != "kubemaas" and r["model"] == "resnet18"
                     and r.get("body") == "binary"
                     and (q := _point(doc, r["server"], "resnet18", conns))]
        ours_bin = _point(doc, "kubemaas-batch-bin", "resnet18", conns)
        if ours_bin and bin_peers:
            bname, bbest = max(bin_peers, key=lambda kq: kq[1]["rps"])
            ratio_bb = ours_bin["rps"] / bbest["rps"]
            add(f"resnet18 c={conns} with batching, binary against binary: >= 1.5x the best "
                "peer", f"{ratio_bb:.2f}x ({ours_bin['rps']:.1f} vs {bname} "
                f"{bbest['rps']:.1f} req/s)", ratio_bb >= 1.5)
            per_cpu = (ours_bin["rps"] / ours_bin["server_cpu_pct"]) / (
                bbest["rps"] / bbest["server_cpu_pct"])
            add(f"resnet18 c={conns} with batching, binary against binary, per CPU-second",
                f"{per_cpu:.2f}x", per_cpu >= 1.5)
        if json_ours and peers:
            name, best = max(peers, key=lambda kq: kq[1]["rps"])
            ratio = json_ours["rps"] / best["rps"]
            add(f"resnet18 c={conns} with batching (JSON): >= 1.5x the best peer",
                f"{ratio:.2f}x ({json_ours['rps']:.1f} vs {name} {best['rps']:.1f} req/s)",
                ratio >= 1.5)
            eff = {k: 100 * q["rps"] / q["server_cpu_pct"] for k, q in peers}
            best_eff = max(eff, key=lambda k: eff[k])
            ours_eff = 100 * json_ours["rps"] / json_ours["server_cpu_pct"]
            add(f"resnet18 c={conns} with batching (JSON): >= 1.5x the best peer, per CPU-second",
                f"{ours_eff / eff[best_eff]:.2f}x ({ours_eff:.1f} vs {best_eff} "
                f"{eff[best_eff]:.1f} req per CPU-s)", ours_eff / eff[best_eff] >= 1.5)
            if best_ours and best_ours[0] != "kubemaas-batch":
                ratio_b = best_ours[1]["rps"] / best["rps"]
                add(f"resnet18 c={conns} with batching, binary tensors: >= 1.5x the best peer "
                    "(JSON)", f"{ratio_b:.2f}x ({best_ours[1]['rps']:.1f} vs {name} "
                    f"{best['rps']:.1f} req/s)", ratio_b >= 1.5)
                bin_eff = 100 * best_ours[1]["rps"] / best_ours[1]["server_cpu_pct"]
                ratio_e = bin_eff / eff[best_eff]
                add(f"resnet18 c={conns} with batching, binary tensors: >= 1.5x the best peer "
                    "(JSON), per CPU-second", f"{ratio_e:.2f}x ({bin_eff:.1f} vs "
                    f"{best_eff} {eff[best_eff]:.1f} req per CPU-s)", ratio_e >= 1.5)
        else:
            add(f"resnet18 c={conns} with batching >= 1.5x best peer", "not measured", None)

    for key in ("kubemaas", "kubemaas-batch", "kubemaas-batch-bin"):
        for model in ("mlp", "resnet18"):
            pts = [q for c in (4, 8, 16, 32) if (q := _point(doc, key, model, c))]
            if not pts:
                continue
            worst = max(pts, key=lambda q: q["p99_ms"] / q["p50_ms"])
            ratio = worst["p99_ms"] / worst["p50_ms"]
            add(f"{key} {model}: p99 <= 1.5x p50 under load (c>=4, worst point)",
                f"{ratio:.2f}x at c={worst['concurrency']} (p50 {worst['p50_ms']:.2f}, "
                f"p99 {worst['p99_ms']:.2f} ms)", ratio <= 1.5)

    res = next((r for r in doc["results"] if r["server"] == "kubemaas" and r["model"] == "mlp"
                and not r["error"]), None)
    if res and res["points"]:
        rss = max(p["peak_rss_mb"] for p in res["points"])
        add("RSS <= 100 MB (mlp, peak over the sweep)", f"{rss:.1f} MB", rss <= 100)
        cold = statistics.median(res["cold_start_s"])
        add("cold start to ready <= 1 s (mlp, median)",
            f"{cold:.3f} s (runs: {', '.join(f'{c:.3f}' for c in res['cold_start_s'])})",
            cold <= 1.0)
    else:
        add("RSS <= 100 MB and cold start <= 1 s", "not measured", None)
    return out


if __name__ == "__main__":
    sys.exit(main())
