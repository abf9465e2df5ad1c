"""spec.model.optimize on torch models without ONNX, as real processes: a seeded torch MLP as
torch.export and TorchScript through int8-weight-only (torchao) and bf16, each served by a real
runtime in its own format with answers within the guard; a guard set too tight serves the
original; int8-weight-only of a TorchScript model is refused."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from .conftest import PY
from .test_optimize import optimize, serve_and_compare

pytestmark = pytest.mark.timeout(600)


@pytest.mark.parametrize(("name", "quantize", "smaller"), [
    ("mlp.pt2", "int8-weight-only", 0.6), ("mlp.pt2", "bf16", 0.6), ("mlp.pt", "bf16", 0.6)])
def test_torch_model_optimized_in_its_own_format(runtime_server: Any, torch_mlp: Path,
                                                 tmp_path: Path, name: str, quantize: str,
                                                 smaller: float) -> None:
    report = optimize(torch_mlp / name, tmp_path / "opt", "--quantize", quantize,
                      "--repeats", "1", "--max-batch-size", "4")
    assert report["serving"] == "optimized", report
    assert report["guard"] == {"maxRelError": 0.05, "minTop1Agreement": 0.99}  # the default
    assert report["errors"]["output__0"]["maxRelError"] <= 0.05
    assert report["sizeBytes"]["optimized"] < smaller * report["sizeBytes"]["original"]
    assert set(report["latencyMs"]["optimized"]) == {"batch1", "batch4"}
    served = [p.name for p in (tmp_path / "opt" / "serve").iterdir()]
    assert served == [f"model{Path(name).suffix}"]  # the model's own format, no ONNX
    x, want = np.load(torch_mlp / "input.npy"), np.load(torch_mlp / "expected.npy")
    got = serve_and_compare(runtime_server, tmp_path / "opt", "x", "output__0", x, want, report)
    assert not np.array_equal(got, want)  # it is the optimized model that answered


def test_torch_guard_too_tight_serves_the_original(torch_mlp: Path, tmp_path: Path) -> None:
    report = optimize(torch_mlp / "mlp.pt2", tmp_path / "opt", "--quantize", "bf16",
                      "--max-abs-error", "0", "--repeats", "1")
    assert report["serving"] == "original"
    assert report["reason"].startswith("accuracy guard failed: output__0: max abs error")
    served = tmp_path / "opt" / "serve" / "model.pt2"
    assert served.read_bytes() == (torch_mlp / "mlp.pt2").read_bytes()


def test_int8_weight_only_of_torchscript_is_refused(torch_mlp: Path, tmp_path: Path) -> None:
    proc = subprocess.run([PY, "-m", "kubemaas_runtime.optimize", "--model-uri",
                           str(torch_mlp / "mlp.pt"), "--out", str(tmp_path / "o"),
                           "--quantize", "int8-weight-only",
                           "--termination-message-path", str(tmp_path / "msg")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert ("--quantize int8-weight-only works on torch-export models without --convert, not "
            "on torchscript") in (tmp_path / "msg").read_text()
