"""Model storage: local paths, file://, http(s):// from a local server, s3:// against a real
S3-compatible server (moto's server mode, in its own cached virtualenv), checksums, atomic cache."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.server
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubemaas_runtime.errors import StartupError
from kubemaas_runtime.storage import S3Config, fetch_model, sigv4_headers

from .fetch_helpers import moto_server
from .venvs import MOTO, ensure_venv


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class ModelHTTPServer:
    """Serves files from a directory on 127.0.0.1, plus misbehaving routes."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.release = threading.Event()
        self.hits: list[str] = []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits.append(self.path)
                name = self.path.lstrip("/").split("?")[0]
                if name.startswith("slow/"):
                    outer.release.wait(30)
                    name = name[len("slow/"):]
                path = outer.root / name
                if name.startswith("truncated/"):
                    data = (outer.root / name[len("truncated/"):]).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                if not path.is_file():
                    self.send_error(404)
                    return
                data = path.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        class Quiet(http.server.ThreadingHTTPServer):
            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a runtime that stopped mid-download leaves a broken pipe: expected

        self.httpd = Quiet(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def model_http(tiny_onnx: Path, tmp_path: Path) -> Iterator[ModelHTTPServer]:
    root = tmp_path / "www"
    root.mkdir()
    (root / "tiny.onnx").write_bytes(tiny_onnx.read_bytes())
    (root / "corrupt.onnx").write_bytes(b"this is not an onnx model" * 10)
    server = ModelHTTPServer(root)
    yield server
    server.close()


def test_local_paths_and_checksums(tiny_onnx: Path, tmp_path: Path) -> None:
    digest = sha256(tiny_onnx)
    assert fetch_model(str(tiny_onnx), str(tmp_path)) == tiny_onnx
    assert fetch_model(tiny_onnx.as_uri(), str(tmp_path), sha256=digest) == tiny_onnx
    with pytest.raises(StartupError, match="checksum mismatch"):
        fetch_model(str(tiny_onnx), str(tmp_path), sha256="0" * 64)
    with pytest.raises(StartupError, match="not found"):
        fetch_model(str(tmp_path / "missing.onnx"), str(tmp_path))
    with pytest.raises(StartupError, match="unsupported model URI scheme"):
        fetch_model("gs://bucket/model.onnx", str(tmp_path))


def test_http_download_is_cached_and_verified(model_http: ModelHTTPServer, tiny_onnx: Path,
                                              tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    url = f"{model_http.url}/tiny.onnx"
    path = fetch_model(url, str(cache), sha256=sha256(tiny_onnx))
    assert path.read_bytes() == tiny_onnx.read_bytes()
    assert fetch_model(url, str(cache)) == path  # from the cache: no second download
    assert model_http.hits.count("/tiny.onnx") == 1
    with pytest.raises(StartupError, match="HTTP 404 not found"):
        fetch_model(f"{model_http.url}/missing.onnx", str(cache))
    with pytest.raises(StartupError, match="checksum mismatch"):
        fetch_model(f"{model_http.url}/tiny.onnx?v=2", str(cache), sha256="1" * 64)
    with pytest.raises(StartupError, match=r"truncated|broke off"):
        fetch_model(f"{model_http.url}/truncated/tiny.onnx", str(cache), timeout_s=5)
    # nothing half-written was left where the loader could find it
    leftovers = [p for p in cache.rglob("*") if p.is_file() and p != path]
    assert leftovers == []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed_port = sock.getsockname()[1]
    with pytest.raises(StartupError, match="cannot fetch model"):
        fetch_model(f"http://127.0.0.1:{closed_port}/tiny.onnx", str(cache), timeout_s=5)


def test_sigv4_matches_the_aws_documented_example() -> None:
    # "GET Object" example of the AWS Signature Version 4 documentation for S3
    headers = sigv4_headers(
        "GET", "https://examplebucket.s3.amazonaws.com/test.txt", region="us-east-1",
        access_key="AKIAIOSFODNN7EXAMPLE", secret_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        now=dt.datetime(2013, 5, 24, tzinfo=dt.UTC), extra_headers={"Range": "bytes=0-9"})
    assert headers["Authorization"].endswith(
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def test_s3_credentials_from_mounted_secret(tmp_path: Path) -> None:
    (tmp_path / "AWS_ACCESS_KEY_ID").write_text("AKIDFILE\n")
    (tmp_path / "AWS_SECRET_ACCESS_KEY").write_text("secretfile\n")
    cfg = S3Config.from_env({"AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_REGION": "eu-west-1",
                             "AWS_ENDPOINT_URL": "http://127.0.0.1:1"}, None, str(tmp_path))
    assert (cfg.access_key, cfg.secret_key, cfg.region) == ("AKIDFILE", "secretfile", "eu-west-1")
    assert cfg.endpoint == "http://127.0.0.1:1"


UPLOAD = """
import sys, boto3
endpoint, bucket, key, path = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
s3.create_bucket(Bucket=bucket)
s3.upload_file(path, bucket, key)
"""


@pytest.fixture(scope="module")
def s3_server() -> Iterator[str]:
    """moto's S3-compatible server (Flask/werkzeug) on 127.0.0.1, from its cached venv."""
    with moto_server() as (endpoint, _):
        yield endpoint


def upload(endpoint: str, bucket: str, key: str, path: Path) -> None:
    python = ensure_venv("moto", MOTO)
    subprocess.run([str(python), "-c", UPLOAD, endpoint, bucket, key, str(path)], check=True,
                   timeout=60)


def test_s3_download(s3_server: str, tiny_onnx: Path, tmp_path: Path) -> None:
    upload(s3_server, "models", "team a/tiny.onnx", tiny_onnx)
    cfg = S3Config(endpoint=s3_server, access_key="testing", secret_key="testing")
    path = fetch_model("s3://models/team a/tiny.onnx", str(tmp_path), s3=cfg,
                       sha256=sha256(tiny_onnx))
    assert path.read_bytes() == tiny_onnx.read_bytes()
    with pytest.raises(StartupError, match="HTTP 404"):
        fetch_model("s3://models/missing.onnx", str(tmp_path), s3=cfg)
    with pytest.raises(StartupError, match="HTTP 404"):
        fetch_model("s3://no-such-bucket/tiny.onnx", str(tmp_path), s3=cfg)


def test_runtime_serves_a_model_from_s3(runtime_server: Any, s3_server: str, tiny_onnx: Path,
                                        tmp_path: Path) -> None:
    upload(s3_server, "serving", "v1/tiny.onnx", tiny_onnx)
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "AWS_ACCESS_KEY_ID").write_text("testing")
    (secret / "AWS_SECRET_ACCESS_KEY").write_text("testing")
    server = runtime_server([], env={
        "KUBEMAAS_MODEL_URI": "s3://serving/v1/tiny.onnx", "KUBEMAAS_MODEL_NAME": "tiny",
        "KUBEMAAS_MODEL_SHA256": sha256(tiny_onnx), "KUBEMAAS_S3_ENDPOINT": s3_server,
        "KUBEMAAS_S3_CREDENTIALS_DIR": str(secret), "KUBEMAAS_CACHE_DIR": str(tmp_path / "c")})
    status, doc = server.post_json("/v2/models/tiny/infer", {"inputs": [
        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]})
    assert status == 200, doc


def test_ready_only_after_the_model_is_loaded(runtime_server: Any, model_http: ModelHTTPServer,
                                              tmp_path: Path) -> None:
    server = runtime_server(["--model-uri", f"{model_http.url}/slow/tiny.onnx",
                             "--cache-dir", str(tmp_path)], ready=False)
    time.sleep(0.3)
    assert server.get_json("/v2/health/live") == (200, {"live": True})
    assert server.request("GET", "/v2/health/ready")[0] == 503
    assert server.request("GET", "/v2/models/model/ready")[0] == 503
    status, headers, _ = server.request("POST", "/v2/models/model/infer", b"{}")
    assert status == 503 and "retry-after" in headers
    model_http.release.set()
    server.wait_ready(30)


@pytest.mark.parametrize(("uri", "extra", "message"), [
    ("{http}/missing.onnx", [], "HTTP 404 not found"),
    ("{http}/tiny.onnx", ["--model-sha256", "a" * 64], "checksum mismatch"),
    ("{http}/corrupt.onnx", [], "corrupt or unsupported ONNX model"),
    ("{http}/tiny.bin", [], "cannot tell the format"),
    ("{http}/tiny.onnx", ["--max-batch-size", "0"], "--max-batch-size / KUBEMAAS_MAX_BATCH_SIZE"),
])
def test_startup_failures_are_one_clear_line(model_http: ModelHTTPServer, tmp_path: Path,
                                             uri: str, extra: list[str], message: str) -> None:
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "kubemaas_runtime", "--host", "127.0.0.1", "--port", "0",
         "--model-uri", uri.format(http=model_http.url), "--cache-dir", str(tmp_path),
         "--log-format", "text", *extra],
        capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("KUBEMAAS_")})
    assert proc.returncode in (1, 2)
    errors = [line for line in proc.stderr.splitlines() if "ERROR" in line or "error:" in line]
    assert len(errors) == 1 and message in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_sigterm_during_a_slow_download_exits_at_once(runtime_server: Any,
                                                      model_http: ModelHTTPServer,
                                                      tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    server = runtime_server(["--model-uri", f"{model_http.url}/slow/tiny.onnx",
                             "--cache-dir", str(cache)], ready=False)
    time.sleep(0.3)
    start = time.monotonic()
    server.proc.send_signal(15)
    assert server.proc.wait(5) == 0
    assert time.monotonic() - start < 3
    assert list(cache.rglob("*.onnx")) == []  # no model file appeared from the broken download


def test_a_mounted_directory_with_one_model(runtime_server: Any, tiny_onnx: Path,
                                            tmp_path: Path) -> None:
    mount = tmp_path / "mnt" / "models"
    (mount / "1").mkdir(parents=True)
    (mount / "1" / "model.onnx").write_bytes(tiny_onnx.read_bytes())
    (mount / ".hidden.onnx").write_bytes(b"ignored")
    (mount / "README.txt").write_text("not a model")
    assert fetch_model(str(mount), str(tmp_path)) == mount / "1" / "model.onnx"
    server = runtime_server(["--model-uri", mount.as_uri(), "--name", "tiny"])
    assert server.get_json("/v2/models/tiny")[1]["platform"] == "onnxruntime_onnx"
    (mount / "other.pt2").write_bytes(b"x")
    with pytest.raises(StartupError, match=r"exactly one model file .* found 2: 1/model.onnx, "):
        fetch_model(str(mount), str(tmp_path))
    (mount / "empty").mkdir()
    with pytest.raises(StartupError, match="found 0: none"):
        fetch_model(str(mount / "empty"), str(tmp_path))
