"""The kserve package's REST client (v2 JSON and binary, v1 predict) works unchanged.

kserve brings a large dependency set of its own, so it lives in a cached side virtualenv
(venvs.py) and the client runs there as a subprocess against the runtime on 127.0.0.1.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from .conftest import ort_run
from .venvs import KSERVE, ensure_venv


def test_kserve_rest_client(runtime_server: Any, tiny_onnx: Path, tmp_path: Path) -> None:
    python = ensure_venv("kserve", KSERVE)
    server = runtime_server(["--model-uri", str(tiny_onnx), "--name", "tiny",
                             "--max-batch-size", "4"])
    x = np.random.default_rng(5).standard_normal((2, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run([str(python), str(Path(__file__).with_name("kserve_client.py")),
                           server.base, "tiny", str(tmp_path / "x.npy")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want = ort_run(tiny_onnx, {"x": x})
    assert got["live"] and got["ready"] and got["model_ready"]
    for binary in (False, True):
        np.testing.assert_array_equal(np.array(got[f"y_binary_{binary}"], dtype=np.float32),
                                      want["y"])
        assert got[f"id_binary_{binary}"] == "k-1"
    predictions = got["v1"]["predictions"]
    assert [p["y"] for p in predictions] == want["y"].tolist()
