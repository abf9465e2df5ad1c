"""Hugging Face model directories from every storage scheme: a local directory (the other LLM
tests), ``http(s)://`` with an index of files (checksums verified), and an ``s3://`` prefix
(moto's S3-compatible server); a half-fetched directory is never loaded; bad directories are one
clear startup error.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubemaas_runtime.errors import StartupError
from kubemaas_runtime.llm.loader import load_hf
from kubemaas_runtime.storage import S3Config
from kubemaas_runtime.storage_dir import COMPLETE, fetch_model_dir

from . import llm_reference as ref
from .conftest import start_llm_server, start_server
from .test_storage import s3_server  # noqa: F401 - a fixture
from .venvs import MOTO, ensure_venv


def write_index(model_dir: Path, with_sha: bool = True) -> None:
    files = sorted(p.name for p in model_dir.iterdir() if p.is_file() and p.name != "index.json"
                   and not p.name.startswith("."))
    doc = {"files": [{"path": f, "sha256": hashlib.sha256((model_dir / f).read_bytes())
                      .hexdigest()} if with_sha else f for f in files]}
    (model_dir / "index.json").write_text(json.dumps(doc))


@pytest.fixture
def http_root(tiny_llama: Path, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "www"
    shutil.copytree(tiny_llama, root / "tiny")
    write_index(root / "tiny")

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    finally:
        httpd.shutdown()
        httpd.server_close()


def same_files(a: Path, b: Path) -> None:
    for p in a.iterdir():
        if p.is_file() and p.name != "index.json":
            assert (b / p.name).read_bytes() == p.read_bytes(), p.name


def test_http_index_download_is_verified_and_cached(http_root: tuple[str, Path], tiny_llama: Path,
                                                    tmp_path: Path) -> None:
    base, root = http_root
    got = fetch_model_dir(f"{base}/tiny/", str(tmp_path / "cache"))
    same_files(tiny_llama, got)
    assert (got / COMPLETE).is_file()
    assert fetch_model_dir(f"{base}/tiny/index.json", str(tmp_path / "c2")).is_dir()
    # cached: the server's copy may go away
    (root / "tiny" / "config.json").unlink()
    assert fetch_model_dir(f"{base}/tiny/", str(tmp_path / "cache")) == got
    shutil.copy(tiny_llama / "config.json", root / "tiny" / "config.json")

    (root / "tiny" / "tokenizer.json").write_text("{}")  # the index's checksum no longer fits
    with pytest.raises(StartupError, match="checksum mismatch"):
        fetch_model_dir(f"{base}/tiny/", str(tmp_path / "c3"))
    assert not (tmp_path / "c3").exists() or not any((tmp_path / "c3").rglob(COMPLETE))
    with pytest.raises(StartupError, match="HTTP 404"):
        fetch_model_dir(f"{base}/missing/", str(tmp_path / "c4"))
    (root / "evil").mkdir()
    (root / "evil" / "index.json").write_text('["../tiny/config.json"]')
    with pytest.raises(StartupError, match="unsafe file path"):
        fetch_model_dir(f"{base}/evil/", str(tmp_path / "c5"))


def test_runtime_serves_from_an_http_index(http_root: tuple[str, Path], tiny_llama: Path,
                                           tmp_path: Path) -> None:
    base, _ = http_root
    server = start_llm_server(Path("unused"), "--model-uri", f"{base}/tiny/", "--cache-dir",
                              str(tmp_path / "cache"))
    try:
        status, doc = server.post_json("/v1/completions", {
            "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0,
            "return_token_ids": True})
        assert status == 200, doc
        want = ref.greedy_ids(tiny_llama, ref.prompt_ids(tiny_llama, "Once upon a time"), 8)
        assert doc["choices"][0]["token_ids"] == want[:len(doc["choices"][0]["token_ids"])]
    finally:
        assert server.stop() == 0


UPLOAD_DIR = """
import sys, pathlib, boto3
endpoint, bucket, prefix, path = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="testing", aws_secret_access_key="testing")
s3.create_bucket(Bucket=bucket)
for p in sorted(pathlib.Path(path).iterdir()):
    s3.upload_file(str(p), bucket, prefix + p.name)
"""


def test_s3_prefix(s3_server: str, tiny_llama: Path, tmp_path: Path) -> None:  # noqa: F811
    subprocess.run([str(ensure_venv("moto", MOTO)), "-c", UPLOAD_DIR, s3_server, "llms",
                    "team a/tiny/", str(tiny_llama)], check=True, timeout=120)
    cfg = S3Config(endpoint=s3_server, access_key="testing", secret_key="testing")
    got = fetch_model_dir("s3://llms/team a/tiny/", str(tmp_path / "cache"), s3=cfg)
    same_files(tiny_llama, got)
    assert load_hf(got, device="cpu").model_type == "llama"
    with pytest.raises(StartupError, match="no objects"):
        fetch_model_dir("s3://llms/nothing/", str(tmp_path / "c2"), s3=cfg)
    with pytest.raises(StartupError, match="HTTP 404"):
        fetch_model_dir("s3://no-such-bucket/x/", str(tmp_path / "c3"), s3=cfg)


def test_bad_model_directories_fail_with_one_line(tiny_llama: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_llama, broken)
    (broken / "model.safetensors").unlink()
    server = start_server(["--model-uri", str(broken), "--format", "hf"], ready=False)
    assert server.proc.wait(120) == 1
    server.stop()
    errors = [d["msg"] for d in server.logs() if d.get("level") == "error"]
    assert errors and "no *.safetensors" in errors[0], server.lines[-5:]
    with pytest.raises(StartupError, match="not served"):
        cfg = json.loads((tiny_llama / "config.json").read_text())
        odd = tmp_path / "odd"
        shutil.copytree(tiny_llama, odd)
        (odd / "config.json").write_text(json.dumps({**cfg, "model_type": "mamba"}))
        load_hf(odd)


def test_models_list_waits_for_the_model(tiny_llama: Path, tmp_path: Path) -> None:
    """While the weights are still arriving the server listens, but neither lists its model
    nor answers: /v1/models, /health and chat are 503 until the load ends, then 200."""
    root = tmp_path / "www"
    shutil.copytree(tiny_llama, root / "tiny")
    write_index(root / "tiny")
    release = threading.Event()

    class Gated(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.endswith(".safetensors"):
                release.wait(60)
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                            functools.partial(Gated, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    server = start_server(["--model-uri", f"http://127.0.0.1:{httpd.server_address[1]}/tiny/",
                           "--cache-dir", str(tmp_path / "cache"), "--format", "hf",
                           "--name", "tiny", "--kv-cache-memory", "16Mi", "--max-model-len",
                           "512", "--intra-op-threads", "1", "--log-level", "warning"],
                          ready=False)
    try:
        for path in ("/v1/models", "/v1/models/tiny", "/health"):
            status, _, body = server.request("GET", path)
            assert status == 503, (path, body)
        status, doc = server.get_json("/v1/models")
        assert "not ready" in doc["error"]["message"]
        release.set()
        server.wait_ready()
        status, doc = server.get_json("/v1/models")
        assert status == 200 and [m["id"] for m in doc["data"]] == ["tiny"]
    finally:
        release.set()
        assert server.stop() == 0
        httpd.shutdown()
        httpd.server_close()
