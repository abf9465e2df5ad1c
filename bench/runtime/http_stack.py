"""Which HTTP stack for the runtime? Measure added latency at concurrency 1 on a small model.

    .venv/bin/python bench/runtime/http_stack.py [--requests 3000] [--rounds 6]

Servers (each in its own process pinned to CPU 0; the client is pinned to CPU 1, talks to
127.0.0.1 over one keep-alive connection, and sends a pre-built request):

* ``onnxruntime in-process``: session.run on the same input, no server: the floor.
* ``aiohttp web.Application``: a router + one handler that decodes JSON, runs the session inline,
  encodes JSON.
* ``aiohttp web.Server``: the low-level server (no router, no middleware), same handler.
* ``asyncio raw``: a minimal asyncio.Protocol HTTP/1.1 server (Content-Length bodies only), same
  handler: what a hand-written stack could save.
* ``kubemaas runtime (json|binary)``: the real runtime process, batching off.

Reports p50/p90/p99 in microseconds and the p50 added over in-process onnxruntime.
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
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve()
REPO = HERE.parents[2]
SERVER_CPU, CLIENT_CPU = 0, 1


def make_mlp(path: Path) -> None:
    """A small MLP: x[batch,64] -> 128 -> 10 (per-request overhead dominates)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(s).astype(np.float32), n)
             for n, s in (("W1", (64, 128)), ("b1", (128,)), ("W2", (128, 10)), ("b2", (10,)))]
    nodes = [helper.make_node("Gemm", ["x", "W1", "b1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "W2", "b2"], ["y"])]
    graph = helper.make_graph(nodes, "mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 10])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


# -- the bare servers ------------------------------------------------------------------------
def _session(model: str):  # type: ignore[no-untyped-def]
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])


def _handle(session, body: bytes) -> bytes:  # type: ignore[no-untyped-def]
    doc = json.loads(body)
    inp = doc["inputs"][0]
    x = np.asarray(inp["data"], dtype=np.float32).reshape(inp["shape"])
    (y,) = session.run(["y"], {"x": x})
    return json.dumps({"model_name": "mlp", "outputs": [
        {"name": "y", "datatype": "FP32", "shape": list(y.shape),
         "data": y.ravel().tolist()}]}).encode()


def serve_aiohttp(model: str, port: int, lowlevel: bool) -> None:
    import asyncio

    from aiohttp import web

    session = _session(model)

    async def handler(request: web.BaseRequest) -> web.Response:
        return web.Response(body=_handle(session, await request.read()),
                            content_type="application/json")

    async def main() -> None:
        if lowlevel:
            runner: web.BaseRunner = web.ServerRunner(web.Server(handler, access_log=None))
        else:
            app = web.Application()
            app.router.add_post("/v2/models/{name}/infer", handler)
            runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


def serve_raw(model: str, port: int) -> None:
    import asyncio

    session = _session(model)

    class Proto(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.t = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            self.buf += data
            while True:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = self.buf[:end].decode("latin-1").split("\r\n")
                length = 0
                for line in head[1:]:
                    k, _, v = line.partition(":")
                    if k.strip().lower() == "content-length":
                        length = int(v)
                if len(self.buf) < end + 4 + length:
                    return
                body = self.buf[end + 4:end + 4 + length]
                self.buf = self.buf[end + 4 + length:]
                out = _handle(session, body)
                self.t.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"  # type: ignore[attr-defined]
                             b"Content-Length: " + str(len(out)).encode() + b"\r\n\r\n" + out)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(Proto, "127.0.0.1", port)
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())


# -- the client ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _read_response(sock: socket.socket, buf: bytearray) -> None:
    while True:
        end = buf.find(b"\r\n\r\n")
        if end >= 0:
            head = bytes(buf[:end]).lower()
            i = head.find(b"\r\ncontent-length:") + 2
            j = head.find(b"\r\n", i)
            length = int(head[i + 15:j if j > 0 else len(head)])
            total = end + 4 + length
            if len(buf) >= total:
                if not head.startswith(b"http/1.1 200"):
                    raise RuntimeError(bytes(buf[:total])[:300])
                del buf[:total]
                return
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk


def measure(port: int, request: bytes, n: int) -> list[float]:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    buf = bytearray()
    lat = []
    try:
        for i in range(n + n // 10):
            t0 = time.perf_counter()
            sock.sendall(request)
            _read_response(sock, buf)
            if i >= n // 10:  # the first 10 % warm up
                lat.append(time.perf_counter() - t0)
    finally:
        sock.close()
    return lat


def wait_ready(proc: subprocess.Popen[str], port: int, runtime: bool,
               poll: float = 0.05) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                if not runtime:
                    return
                s.sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
                if s.recv(100).startswith(b"HTTP/1.1 200"):
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError("server exited")
        time.sleep(poll)
    raise RuntimeError("server not ready")


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cold_start(model: Path) -> float:
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "kubemaas_runtime", "--model-uri", str(model),
                             "--host", "127.0.0.1", "--port", str(port), "--log-level",
                             "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            text=True, cwd=REPO)
    try:
        wait_ready(proc, port, True, poll=0.002)
        return time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(10)


def request_bytes(body: bytes, extra: str = "") -> bytes:
    return (f"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
            ).encode() + body


def summary(lat: list[float]) -> dict[str, float]:
    lat = sorted(lat)
    q = statistics.quantiles(lat, n=100)
    return {"p50_us": q[49] * 1e6, "p90_us": q[89] * 1e6, "p99_us": q[98] * 1e6,
            "mean_us": statistics.fmean(lat) * 1e6}


# (name, how to start it, whether it is the runtime, which request it gets)
CASES = [("aiohttp web.Application", ["--serve", "app"], False, "json"),
         ("aiohttp web.Server (low-level)", ["--serve", "lowlevel"], False, "json"),
         ("asyncio raw protocol", ["--serve", "raw"], False, "json"),
         ("kubemaas runtime, JSON", ["runtime"], True, "json"),
         ("kubemaas runtime, binary", ["runtime"], True, "binary")]


def _requests(x: np.ndarray) -> tuple[bytes, bytes]:
    """The pre-built JSON and binary-extension requests for ``x``."""
    json_body = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                        "data": x.ravel().tolist()}]}).encode()
    header = json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}).encode()
    return request_bytes(json_body), request_bytes(
        header + x.tobytes(), f"Inference-Header-Content-Length: {len(header)}\r\n")


def _floor(model: Path, x: np.ndarray, requests: int) -> dict[str, float]:
    """onnxruntime in-process, one thread, the same session options: what no server beats."""
    session = _session(str(model))
    lat = []
    for i in range(requests + requests // 10):
        t0 = time.perf_counter()
        session.run(["y"], {"x": x})
        if i >= requests // 10:
            lat.append(time.perf_counter() - t0)
    return summary(lat)


def _server_command(how: list[str], runtime: bool, model: Path, port: int) -> list[str]:
    if runtime:
        return ["taskset", "-c", str(SERVER_CPU), sys.executable, "-m", "kubemaas_runtime",
                "--model-uri", str(model), "--name", "mlp", "--host", "127.0.0.1",
                "--port", str(port), "--intra-op-threads", "1", "--log-level", "warning"]
    return [sys.executable, str(HERE), *how, "--model", str(model), "--port", str(port)]


def _measure_servers(model: Path, bodies: dict[str, bytes], requests: int, rounds: int
                     ) -> tuple[dict[str, dict[str, float]], float]:
    """Every case's server up at once, requests interleaved in rounds (so that background
    load on this shared machine hits every stack alike): each case's latencies, and the
    runtime's RSS after the run."""
    procs = []
    try:
        ports = []
        for _name, how, runtime, _body in CASES:
            port = free_port()
            procs.append(subprocess.Popen(_server_command(how, runtime, model, port),
                                          stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, text=True, cwd=REPO))
            ports.append(port)
        for proc, port, (_n, _h, runtime, _b) in zip(procs, ports, CASES, strict=True):
            wait_ready(proc, port, runtime)
        per_round = max(100, requests // rounds)
        collected: dict[str, list[float]] = {name: [] for name, *_ in CASES}
        for _ in range(rounds):
            for port, (name, _h, _rt, body) in zip(ports, CASES, strict=True):
                collected[name] += measure(port, bodies[body], per_round)
        runtime_pid = procs[[c[2] for c in CASES].index(True)].pid
        return {name: summary(lat) for name, lat in collected.items()}, _rss_mib(runtime_pid)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000, help="per stack")
    parser.add_argument("--rounds", type=int, default=6, help="interleaved rounds")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        os.sched_setaffinity(0, {SERVER_CPU})
        if args.serve == "raw":
            serve_raw(args.model, args.port)
        else:
            serve_aiohttp(args.model, args.port, lowlevel=args.serve == "lowlevel")
        return

    os.sched_setaffinity(0, {CLIENT_CPU})
    model = Path(tempfile.mkdtemp(prefix="kubemaas-bench-")) / "mlp.onnx"
    make_mlp(model)
    x = np.random.default_rng(1).standard_normal((1, 64)).astype(np.float32)
    json_req, binary_req = _requests(x)
    results = {"onnxruntime in-process": _floor(model, x, args.requests)}
    served, rss_mib = _measure_servers(model, {"json": json_req, "binary": binary_req},
                                       args.requests, args.rounds)
    results.update(served)
    cold = [cold_start(model) for _ in range(5)]
    floor = results["onnxruntime in-process"]["p50_us"]
    print(f"{'stack':34} {'p50 us':>8} {'p90 us':>8} {'p99 us':>8} {'added p50 us':>13}")
    for name, r in results.items():
        print(f"{name:34} {r['p50_us']:8.1f} {r['p90_us']:8.1f} {r['p99_us']:8.1f} "
              f"{r['p50_us'] - floor:13.1f}")
    print(f"runtime RSS after the run: {rss_mib:.1f} MiB")
    print("runtime cold start to ready (spawn -> first 200 on /v2/health/ready), 5 runs: "
          + ", ".join(f"{c:.3f} s" for c in cold))

if __name__ == "__main__":
    main()
