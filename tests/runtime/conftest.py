"""Fixtures for the runtime tests: real runtime processes on 127.0.0.1 and real model files."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .venvs import CACHE  # shared between runs: resnet18 exports, side venvs

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable


class Server:
    """A `python -m kubemaas_runtime` process listening on 127.0.0.1 (port chosen by the OS)."""

    def __init__(self, args: list[str], env: Mapping[str, str] | None = None) -> None:
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("KUBEMAAS_")}
        full_env.update(env or {})
        full_env.setdefault("KUBEMAAS_CACHE_DIR", str(CACHE / "runtime-cache"))
        self.cmd = [PY, "-m", "kubemaas_runtime", "--host", "127.0.0.1", "--port", "0", *args]
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=full_env, cwd=REPO, text=True)
        self.lines: list[str] = []
        self.port: int | None = None
        self._listening = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if self.port is None:
                try:
                    doc = json.loads(line)
                except ValueError:
                    continue
                if doc.get("msg") == "listening":
                    self.port = int(doc["port"])
                    self._listening.set()
        self._listening.set()

    def logs(self) -> list[dict[str, Any]]:
        out = []
        for line in list(self.lines):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_listening(self, timeout: float = 30) -> None:
        if not self._listening.wait(timeout) or self.port is None:
            raise AssertionError(f"runtime did not start listening: {self.lines[-20:]}")

    def wait_ready(self, timeout: float = 60) -> None:
        self.wait_listening(timeout)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"runtime exited {self.proc.returncode}: "
                                     f"{self.lines[-20:]}")
            try:
                status, _, _ = self.request("GET", "/v2/health/ready")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.02)
        raise AssertionError(f"runtime not ready after {timeout}s: {self.lines[-20:]}")

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: Mapping[str, str] | None = None,
                timeout: float = 30) -> tuple[int, dict[str, str], bytes]:
        assert self.port is not None
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def post_json(self, path: str, doc: Any) -> tuple[int, Any]:
        status, _, body = self.request("POST", path, json.dumps(doc).encode(),
                                       {"Content-Type": "application/json"})
        return status, json.loads(body)

    def get_json(self, path: str) -> tuple[int, Any]:
        status, _, body = self.request("GET", path)
        return status, json.loads(body)

    def metrics(self) -> str:
        return self.request("GET", "/metrics")[2].decode()

    def ready_log(self, timeout: float = 10) -> dict[str, Any]:
        """The runtime's ready log line (the log is read in a thread: it may trail /health)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = next((d for d in self.logs() if d.get("msg") == "ready"), None)
            if found is not None:
                return found
            time.sleep(0.05)
        raise AssertionError(f"no ready log line within {timeout} s: {self.lines[-5:]}")

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)
        finally:
            self._reader.join(5)
            if self.proc.stdout is not None:
                self.proc.stdout.close()


def start_server(args: list[str], env: Mapping[str, str] | None = None,
                 ready: bool = True, timeout: float = 90) -> Server:
    server = Server(args, env)
    try:
        if ready:
            server.wait_ready(timeout)
        else:
            server.wait_listening(timeout)
    except BaseException:
        server.stop()
        raise
    return server


@pytest.fixture
def runtime_server() -> Iterator[Any]:
    """Factory: start_server(...) with cleanup at the end of the test."""
    started: list[Server] = []

    def factory(args: list[str], env: Mapping[str, str] | None = None,
                ready: bool = True, timeout: float = 90) -> Server:
        server = start_server(args, env, ready, timeout)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


# -- models ----------------------------------------------------------------------------------
def save_onnx(graph: Any, path: Path) -> None:
    """``graph`` (an onnx GraphProto) as a checked opset-17, IR-8 model file at ``path``."""
    import onnx
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def make_tiny_onnx(path: Path) -> None:
    """x FP32 [batch, 4] -> y = relu(x @ W) [batch, 3], z = x @ W [batch, 3]."""
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy_helper.from_array(
        (np.arange(12, dtype=np.float32).reshape(4, 3) - 5) / 10, "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["z"]), helper.make_node("Relu", ["z"], ["y"])],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 3])],
        [weights])
    save_onnx(graph, path)


def make_seq_onnx(path: Path) -> None:
    """ids INT64 [batch, len] and mask BOOL [batch, len] -> total INT64 [batch, 1]
    (sum of ids where mask is true): a model whose second dimension is dynamic too."""
    from onnx import TensorProto, helper

    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    zero = helper.make_tensor("zero", TensorProto.INT64, [], [0])
    graph = helper.make_graph(
        [helper.make_node("Where", ["mask", "ids", "zero"], ["kept"]),
         helper.make_node("ReduceSum", ["kept", "axes"], ["total"], keepdims=1)],
        "seq",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "len"]),
         helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", "len"])],
        [helper.make_tensor_value_info("total", TensorProto.INT64, ["batch", 1])],
        [axes, zero])
    save_onnx(graph, path)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def tiny_onnx(models_dir: Path) -> Path:
    path = models_dir / "tiny.onnx"
    make_tiny_onnx(path)
    return path


@pytest.fixture(scope="session")
def seq_onnx(models_dir: Path) -> Path:
    path = models_dir / "seq.onnx"
    make_seq_onnx(path)
    return path


@pytest.fixture(scope="session")
def light_onnx() -> Path:
    import onnx

    path = Path(onnx.__file__).parent / "backend/test/data/light/light_squeezenet.onnx"
    assert path.is_file(), f"the onnx wheel no longer ships {path}"
    return path


@pytest.fixture(scope="session")
def resnet18_dir() -> Path:
    """resnet18 (random weights) as ONNX, TorchScript and torch.export, built once and cached."""
    from importlib.metadata import version

    # versions from the metadata: importing torch here would cost seconds in the test process
    out = CACHE / f"resnet18-torch{version('torch')}-tv{version('torchvision')}"
    build_models_once(out)
    return out


def build_models_once(out: Path, *extra: str) -> None:
    """Run make_models.py into ``out`` unless done; a lock keeps two test runs from racing."""
    import fcntl

    if (out / "done").is_file():
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with (out.parent / f"{out.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (out / "done").is_file():
            subprocess.run([PY, str(Path(__file__).with_name("make_models.py")), str(out),
                            *extra], check=True, timeout=300)


@pytest.fixture(scope="session")
def torch_mlp() -> Path:
    """make_torch_mlp.py's seeded MLP (mlp.pt2 with batch 1..1024, mlp.pt), built once."""
    from importlib.metadata import version

    out = CACHE / f"torch-mlp-torch{version('torch')}"
    if not (out / "done").is_file():
        import fcntl

        out.parent.mkdir(parents=True, exist_ok=True)
        with (out.parent / f"{out.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (out / "done").is_file():
                subprocess.run([PY, str(Path(__file__).with_name("make_torch_mlp.py")),
                                str(out)], check=True, timeout=300)
    return out


def _servers_use_cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


# runtime servers start with --device auto: on a machine with a GPU and onnxruntime-gpu, on CUDA
SERVED_ON_GPU = _servers_use_cuda()


def assert_as_reference(got: np.ndarray, want: np.ndarray, exact: bool = True) -> None:
    """A served output equals the CPU reference: bit for bit on the CPU (``exact``; else to 1e-6);
    on a GPU, where other kernels sum in another order (TF32 stays off), to FP32 rounding."""
    if SERVED_ON_GPU:
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    elif exact:
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def ort_run(path: Path, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The reference: the same model file run by onnxruntime in this process."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))


def make_strings_onnx(path: Path) -> None:
    """text STRING [batch] -> same BYTES tensor back (Identity), and its shape as INT64."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"]),
         helper.make_node("Shape", ["text"], ["n"])],
        "strings",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch"]),
         helper.make_tensor_value_info("n", TensorProto.INT64, [1])])
    save_onnx(graph, path)


@pytest.fixture(scope="session")
def strings_onnx(models_dir: Path) -> Path:
    path = models_dir / "strings.onnx"
    make_strings_onnx(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight ~0.85 M-parameter Llama with the repository tokenizer (no download)."""
    from kubemaas_testbed.llm_models import build_llm

    return build_llm(tmp_path_factory.mktemp("llm") / "tiny-llama", family="llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kubemaas_testbed.llm_models import build_llm

    return build_llm(tmp_path_factory.mktemp("llm") / "tiny-gpt2", family="gpt2")


@pytest.fixture
def client(server: Server) -> Iterator[Any]:
    """The openai client of the test module's ``server``, closed after the test: a client left
    for the garbage collector leaves its pooled sockets open, and the ResourceWarning that their
    collection raises (in whichever later test it happens) fails the run."""
    import openai

    with openai.OpenAI(base_url=f"{server.base}/v1", api_key="unused", max_retries=0) as c:
        yield c


def stream_events(server: Server, path: str, doc: dict[str, Any]) -> list[Any]:
    """The events of a streamed answer (the JSON documents; ``[DONE]`` checked last)."""
    status, headers, body = server.request("POST", path, json.dumps(doc).encode(),
                                           {"Content-Type": "application/json"})
    assert status == 200, body
    assert headers["content-type"].startswith("text/event-stream")
    events = []
    for block in body.decode().split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        payload = block[len("data: "):]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    assert events[-1] == "[DONE]"
    return events[:-1]


def with_chat_template(model_dir: Path, out: Path, template: str) -> Path:
    """A copy of a model directory whose tokenizer has another chat template."""
    shutil.copytree(model_dir, out)
    (out / "chat_template.jinja").write_text(template)
    return out


def start_llm_server(model_dir: Path, *args: str, name: str = "tiny") -> Server:
    """A runtime serving a Hugging Face model directory over the OpenAI API."""
    return start_server(["--model-uri", str(model_dir), "--format", "hf", "--name", name,
                         "--kv-cache-memory", "16Mi", "--max-model-len", "512",
                         "--intra-op-threads", "1",
                         "--log-level", "warning", *args])
