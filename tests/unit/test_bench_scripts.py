"""Rot in the benchmarks (bench/): a GPU benchmark refuses to measure the CPU instead."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_ort_shape_change_refuses_to_time_the_cpu(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Without onnxruntime's CUDA provider a session falls back to the CPU with a warning: the
    script printed the CPU's figures under its CUDA configurations' names."""
    sys.path.insert(0, str(ROOT / "bench" / "runtime"))
    import ort_shape_change

    def no_model(*args: object) -> None:
        raise AssertionError("the model was built: the script went on to measure")

    monkeypatch.setattr(ort_shape_change.ort, "get_available_providers",  # type: ignore[attr-defined]
                        lambda: ["CPUExecutionProvider"])
    monkeypatch.setattr(ort_shape_change.bench_models,  # type: ignore[attr-defined]
                        "ensure_model", no_model)
    monkeypatch.setattr(sys, "argv", ["ort_shape_change.py"])
    assert ort_shape_change.main() == 2
    assert "CUDAExecutionProvider" in capsys.readouterr().err
    monkeypatch.setattr(sys, "argv", ["ort_shape_change.py", "--help"])
    assert ort_shape_change.main() == 0  # it used to run the benchmark
    assert "CUDA provider" in capsys.readouterr().out
