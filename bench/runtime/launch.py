"""The servers under test: which ones, the command that starts each, and the running process
(pinned to a core, in its own process group, logged to a file)."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import models as bench_models

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
HOST = "127.0.0.1"  # the only address this benchmark sends traffic to
MODEL_CACHE = Path.home() / ".cache" / "kubemaas" / "bench-models"
MAX_BATCH = 32


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
