"""spec.model.optimize on a ModelCache, runtime side: the cache is filled by the real downloader
(``python -m kubemaas_runtime.fetch`` from a local HTTP server), the optimize step runs once in
it (``--publish``, two option sets: one whose guard holds, one whose guard fails), then the
cache is bind-mounted read-only, as the model pods mount it, and the model pod's optimize step
(``--from-cache``) serves the cached result without optimizing: no work directory, links into
the read-only cache, the cached figures, a log line that says so; a real runtime serves it.
A result of another download of the model is not served (the pod optimizes itself)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubemaas_testbed.model_servers import FileServer

from .conftest import PY, ort_run, start_llm_server
from .fetch_helpers import run_fetch
from .test_optimize import _infer, make_mlp_onnx

pytestmark = pytest.mark.timeout(600)


def step(model_dir: Path, out: Path, *args: str, fmt: str = "onnx") -> tuple[dict[str, Any], str]:
    """The optimize step as a process: (its report, its stderr)."""
    msg = out.parent / f"{out.name}.{uuid.uuid4().hex}.termination-log"
    out.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([PY, "-m", "kubemaas_runtime.optimize", "--model-uri",
                           f"file://{model_dir}", "--format", fmt, "--out", str(out),
                           "--termination-message-path", str(msg), "--repeats", "1", *args],
                          capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    assert json.loads(msg.read_text()) == report
    return report, proc.stderr


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Any]:
    """Factory: a read-only bind mount of a directory (as a pod mounts the cache)."""
    mounted: list[Path] = []

    def mount(src: Path) -> Path:
        dest = tmp_path / f"ro-{len(mounted)}"
        dest.mkdir()
        for cmd in (["mount", "--bind", str(src), str(dest)],
                    ["mount", "-o", "remount,bind,ro", str(dest)]):
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                pytest.fail(f"this test bind-mounts the cache read-only and needs root "
                            f"(CAP_SYS_ADMIN): {done.stderr.strip()}")
        mounted.append(dest)
        return dest

    yield mount
    for dest in mounted:
        subprocess.run(["umount", str(dest)], check=True)


def fill_cache(tmp_path: Path, name: str, model: Path) -> Path:
    root = tmp_path / f"{name}-files"
    root.mkdir()
    shutil.copyfile(model, root / "mlp.onnx")
    cache = tmp_path / name
    with FileServer(root) as server:
        rc, report, fetch = run_fetch(["--source", f"{server.url}/mlp.onnx", "--dest",
                                       str(cache)])
    assert rc == 0 and report["phase"] == "Ready", fetch.stderr
    return cache


def test_a_read_only_cache_with_the_optimized_model_is_served_without_optimizing(
        runtime_server: Any, tmp_path: Path, read_only: Any) -> None:
    model = tmp_path / "mlp.onnx"
    make_mlp_onnx(model)
    cache = fill_cache(tmp_path, "cache", model)
    fp16, tight = cache / ".kubemaas-optimized" / "fp16", cache / ".kubemaas-optimized" / "tight"
    # the cache's optimize pods: once per option set
    made, _ = step(cache, fp16, "--quantize", "fp16", "--publish")
    assert made["serving"] == "optimized" and made["cached"] is False
    refused, _ = step(cache, tight, "--quantize", "int8-dynamic", "--max-abs-error", "0",
                      "--publish")
    assert refused["serving"] == "original"
    assert refused["reason"].startswith("accuracy guard failed")
    again, _ = step(cache, fp16, "--quantize", "fp16", "--publish")  # a re-created pod
    assert again["cached"] is True and again["errors"] == made["errors"]

    ro = read_only(cache)
    x = np.random.default_rng(3).standard_normal((4, 32)).astype(np.float32)
    want = ort_run(model, {"x": x})["scores"]
    for key, pub, optimized in (("fp16", made, True), ("tight", refused, False)):
        pod = tmp_path / f"pod-{key}" / "optimized"  # the pod's own emptyDir
        report, log = step(ro, pod, "--quantize", "fp16" if optimized else "int8-dynamic",
                           "--from-cache", str(ro / ".kubemaas-optimized" / key))
        assert "the model cache holds the optimized model for these options" in log, log
        assert "not optimizing" in log
        assert report["cached"] is True and report["optimizedIn"] == "modelCache"
        for field in ("serving", "reason", "errors", "sizeBytes", "latencyMs", "guard", "sha256"):
            assert report[field] == pub[field], field
        assert not (pod / "by-key").exists()  # nothing was optimized in the pod
        served = pod / "serve" / "model.onnx"
        assert served.is_symlink()
        assert str(served.resolve()).startswith(str(ro))  # read from the read-only cache
        server = runtime_server(["--model-uri", str(pod / "serve"), "--name", "m"])
        server.input_name = "x"
        got = _infer(server, "m", "scores", x)
        if optimized:
            assert not np.array_equal(got, want)  # the fp16 model answered, within its guard
            assert np.max(np.abs(got - want)) <= 0.05 * np.max(np.abs(want))
        else:
            np.testing.assert_array_equal(got, want)  # the guard failed: the original serves
        server.stop()


def test_a_result_of_another_download_is_not_served(tmp_path: Path, read_only: Any) -> None:
    model, other = tmp_path / "mlp.onnx", tmp_path / "other.onnx"
    make_mlp_onnx(model)
    cache = fill_cache(tmp_path, "cache", model)
    step(cache, cache / ".kubemaas-optimized" / "fp16", "--quantize", "fp16", "--publish")
    # the same directory after a download of another model (other weights)
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(model))
    w = m.graph.initializer[0]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 2, w.name))
    onnx.save(m, str(other))
    second = fill_cache(tmp_path, "second", other)
    shutil.copytree(cache / ".kubemaas-optimized", second / ".kubemaas-optimized")
    ro = read_only(second)
    pod = tmp_path / "pod" / "optimized"
    report, log = step(ro, pod, "--quantize", "fp16", "--from-cache",
                       str(ro / ".kubemaas-optimized" / "fp16"))
    assert "is of another download of the model" in log and "optimizing here" in log, log
    assert report["cached"] is False and "optimizedIn" not in report
    assert (pod / "by-key").is_dir()  # the pod optimized the model it has


def test_a_language_model_directory_from_a_read_only_cache(tiny_llama: Path, tmp_path: Path,
                                                           read_only: Any) -> None:
    """hf: the optimized directory (the original's files and the quantization marker) is
    linked file by file from the read-only cache, and a real runtime serves it."""
    root = tmp_path / "files" / "llm"
    shutil.copytree(tiny_llama, root)
    (root / "index.json").write_text(json.dumps(sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())))
    cache = tmp_path / "cache"
    with FileServer(root.parent) as server:
        rc, fetched, fetch = run_fetch(["--source", f"{server.url}/llm/", "--dest", str(cache)])
    assert rc == 0 and fetched["phase"] == "Ready", fetch.stderr
    key = cache / ".kubemaas-optimized" / "bf16"
    made, _ = step(cache, key, "--quantize", "bf16", "--min-token-agreement", "0.3",
                   "--publish", fmt="hf")
    assert made["serving"] == "optimized", made
    ro = read_only(cache)
    pod = tmp_path / "pod" / "optimized"
    report, log = step(ro, pod, "--quantize", "bf16", "--min-token-agreement", "0.3",
                       "--from-cache", str(ro / ".kubemaas-optimized" / "bf16"), fmt="hf")
    assert "not optimizing" in log and report["optimizedIn"] == "modelCache", log
    assert report["errors"] == made["errors"] and not (pod / "by-key").exists()
    serve = pod / "serve"
    assert json.loads((serve / "kubemaas-optimize.json").read_text()) == {"quantize": "bf16"}
    weights = serve / "model.safetensors"
    assert weights.is_symlink() and str(weights.resolve()).startswith(str(ro))
    assert not any(p.name.startswith(".kubemaas") for p in serve.rglob("*"))
    server = start_llm_server(serve)
    try:
        status, body = server.post_json("/v1/completions", {
            "model": "tiny", "prompt": "Once upon a time", "temperature": 0, "max_tokens": 4})
        assert status == 200, body
        assert body["choices"][0]["text"]
    finally:
        assert server.stop() == 0
