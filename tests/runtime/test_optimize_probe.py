"""spec.model.optimize.probe, runtime side: a probe file (.npz) served over HTTP by a local file
server calibrates int8-static and is what the guard measures on; the optimized model is then
served by a real runtime. A probe file that does not fit the model: the original serves, and
the report says why."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from tests.cluster.test_keras_contract import file_server

from .conftest import PY, ort_run
from .test_optimize import make_mlp_onnx, optimize, serve_and_compare

# int8-static's error on this random MLP depends on the CPU's integer kernels: within 0.05 on the
# AVX-512 machines CI has run on, 0.10 (48 rows) and 0.135 (24) on an AVX2-only one, where the
# guard rightly served the original. These tests are about which rows the guard measures, so
# the bound fits both.
INT8_STATIC_GUARD = 0.15


def test_int8_static_calibrated_and_measured_on_the_probe_file(runtime_server: Any,
                                                               tmp_path: Path) -> None:
    store = tmp_path / "store"
    store.mkdir()
    make_mlp_onnx(store / "mlp.onnx")
    rows = np.random.default_rng(3).standard_normal((48, 32)).astype(np.float32)
    np.savez(store / "probe.npz", x=rows)
    digest = hashlib.sha256((store / "probe.npz").read_bytes()).hexdigest()
    with file_server(store) as base:
        report = optimize(store / "mlp.onnx", tmp_path / "opt", "--quantize", "int8-static",
                          "--probe-uri", f"{base}/probe.npz", "--probe-sha256", digest,
                          "--repeats", "1", "--max-rel-error", str(INT8_STATIC_GUARD))
        again = optimize(store / "mlp.onnx", tmp_path / "opt", "--quantize", "int8-static",
                         "--probe-uri", f"{base}/probe.npz", "--repeats", "1",
                         "--max-rel-error", str(INT8_STATIC_GUARD))
    assert report["probe"] == {"rows": 48, "file": "probe.npz", "sha256": digest}
    assert report["serving"] == "optimized", report
    assert report["errors"]["scores"]["maxRelError"] <= INT8_STATIC_GUARD
    assert again["cached"] is True  # same model, options and probe file: done once
    want = ort_run(store / "mlp.onnx", {"x": rows[:4]})["scores"]
    got = serve_and_compare(runtime_server, tmp_path / "opt", "x", "scores", rows[:4], want,
                            report)
    assert not np.array_equal(got, want)


def test_probe_file_that_does_not_fit_serves_the_original(tmp_path: Path) -> None:
    make_mlp_onnx(tmp_path / "mlp.onnx")
    np.savez(tmp_path / "probe.npz", input=np.ones((4, 32), np.float32))
    report = optimize(tmp_path / "mlp.onnx", tmp_path / "opt", "--quantize", "fp16",
                      "--probe-uri", f"file://{tmp_path}/probe.npz", "--repeats", "1")
    assert report["serving"] == "original"
    assert report["reason"] == ("optimization failed: probe file: arrays must be named after "
                                "the model's inputs ['x']; missing ['x'], unexpected ['input']")
    served = tmp_path / "opt" / "serve" / "model.onnx"
    assert served.read_bytes() == (tmp_path / "mlp.onnx").read_bytes()


def test_probe_file_with_another_checksum_is_refused(tmp_path: Path) -> None:
    make_mlp_onnx(tmp_path / "mlp.onnx")
    np.savez(tmp_path / "probe.npz", x=np.ones((4, 32), np.float32))
    proc = subprocess.run([PY, "-m", "kubemaas_runtime.optimize", "--model-uri",
                           str(tmp_path / "mlp.onnx"), "--out", str(tmp_path / "o"),
                           "--quantize", "fp16", "--probe-uri", str(tmp_path / "probe.npz"),
                           "--probe-sha256", "0" * 64,
                           "--termination-message-path", str(tmp_path / "msg")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "checksum mismatch" in (tmp_path / "msg").read_text()
