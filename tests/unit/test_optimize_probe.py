"""spec.model.optimize.probe: parsing and refusals, the rendered env, and the runtime's probe
file loader (a real .npz written here) with its refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kubemaas_operator.api import SpecError, parse_spec
from kubemaas_operator.render import CACHE_DIR, conversion
from kubemaas_runtime.backends.base import TensorSpec
from kubemaas_runtime.errors import StartupError
from kubemaas_runtime.optimize import probe

SHA = "a" * 64


def spec(uri: str = "s3://b/m", **optimize: Any) -> Any:
    return parse_spec({"model": {"uri": uri, "format": "onnx", "optimize": optimize},
                       "runtime": {"image": "img"}})


def test_probe_parsed_and_rendered() -> None:
    s = spec(quantize="int8-static", probe={"uri": "s3://b/probe.npz", "sha256": SHA})
    assert s.model.optimize.probe.uri == "s3://b/probe.npz"
    (init,) = conversion.init_containers(s, "s3://b/m", CACHE_DIR, "/creds", [], {})
    env = {e["name"]: e["value"] for e in init["env"]}
    assert env["KUBEMAAS_OPTIMIZE_PROBE_URI"] == "s3://b/probe.npz"
    assert env["KUBEMAAS_OPTIMIZE_PROBE_SHA256"] == SHA
    assert "KUBEMAAS_OPTIMIZE_PROBE_ROWS" not in env


@pytest.mark.parametrize(("uri", "probe_spec", "path", "says"), [
    ("s3://b/m", {"sha256": SHA}, "spec.model.optimize.probe.uri", "is required"),
    ("s3://b/m", {"uri": "pvc://c/p.npz"}, "spec.model.optimize.probe.uri", "is not file:///"),
    ("s3://b/m", {"uri": "http://h/p.npz", "sha256": "ABC"}, "spec.model.optimize.probe.sha256",
     "64 lower-case hex"),
    ("https://h/m.onnx", {"uri": "s3://b/p.npz"}, "spec.model.optimize.probe.uri",
     "the model must be on s3://"),
    ("s3://b/m", "p.npz", "spec.model.optimize.probe", "must be an object"),
])
def test_bad_probe_is_refused(uri: str, probe_spec: Any, path: str, says: str) -> None:
    with pytest.raises(SpecError) as err:
        spec(uri, quantize="fp16", probe=probe_spec)
    assert err.value.path == path and says in err.value.message


def test_probe_and_probe_rows_are_exclusive() -> None:
    with pytest.raises(SpecError) as err:
        spec(quantize="fp16", probe={"uri": "http://h/p.npz"}, probeRows=8)
    assert err.value.path == "spec.model.optimize.probeRows" and "not both" in err.value.message


SPECS = [TensorSpec("x", "FP32", (-1, 4)), TensorSpec("ids", "INT64", (-1, -1))]


def test_probe_file_loaded_and_cast(tmp_path: Path) -> None:
    np.savez(tmp_path / "p.npz", x=np.ones((3, 4), np.float64), ids=np.arange(15).reshape(3, 5))
    feeds = probe.load(tmp_path / "p.npz", SPECS)
    assert feeds["x"].dtype == np.float32 and feeds["x"].shape == (3, 4)
    assert feeds["ids"].dtype == np.int64 and feeds["ids"][2, 4] == 14


@pytest.mark.parametrize(("arrays", "says"), [
    ({"x": np.ones((3, 4), np.float32)}, "missing ['ids']"),
    ({"x": np.ones((3, 4)), "ids": np.ones((3, 2), np.int64), "y": np.ones(3)},
     "unexpected ['y']"),
    ({"x": np.ones((3, 5)), "ids": np.ones((3, 2), np.int64)}, "'x' has shape [3, 5]"),
    ({"x": np.ones((3, 4)), "ids": np.ones((3, 2), np.float32)}, "'ids' is float32"),
    ({"x": np.ones((3, 4)), "ids": np.ones((2, 2), np.int64)}, "same number of rows"),
    ({"x": np.ones((0, 4)), "ids": np.ones((0, 2), np.int64)}, "0 rows"),
])
def test_bad_probe_file_is_refused(tmp_path: Path, arrays: dict[str, np.ndarray],
                                   says: str) -> None:
    np.savez(tmp_path / "p.npz", **arrays)  # type: ignore[arg-type]
    with pytest.raises(StartupError) as err:
        probe.load(tmp_path / "p.npz", SPECS)
    assert says in str(err.value)


def test_not_an_npz_and_pickles_are_refused(tmp_path: Path) -> None:
    (tmp_path / "p.npz").write_text("x,ids\n1,2\n")
    with pytest.raises(StartupError, match=r"not a NumPy \.npz archive"):
        probe.load(tmp_path / "p.npz", SPECS)
    np.savez(tmp_path / "o.npz", x=np.array([object()] * 3), ids=np.ones((3, 1), np.int64))
    with pytest.raises(StartupError, match=r"not a NumPy \.npz archive"):
        probe.load(tmp_path / "o.npz", SPECS)
