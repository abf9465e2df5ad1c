"""spec.model.optimize on the tiny language model (format hf), as real processes: int8
weight-only and bf16, guarded by the token agreement of greedy continuations; the optimized
directory served by a real runtime (--format hf) whose greedy answers keep the guard against the
original's, also served; a guard set too tight serves the original; a probe file of prompts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from kubemaas_runtime.optimize.llm_quant import DEFAULT_PROMPTS, agreement

from .conftest import PY, Server, start_llm_server
from .test_optimize import optimize

pytestmark = pytest.mark.timeout(900)
MARKER = "kubemaas-optimize.json"


def continuations(server: Server, prompts: list[str], tokens: int) -> list[list[int]]:
    outs = []
    for prompt in prompts:  # one at a time, like the optimize step's batch-1 reference
        status, body = server.post_json("/v1/completions", {
            "model": "tiny", "prompt": prompt, "temperature": 0, "max_tokens": tokens,
            "ignore_eos": True, "return_token_ids": True})
        assert status == 200, body
        outs.append(list(body["choices"][0]["token_ids"]))
    return outs


@pytest.mark.parametrize("quantize", ["int8-weight-only", "bf16"])
def test_tiny_llm_quantized_serves_within_the_token_guard(tiny_llama: Path, tmp_path: Path,
                                                          quantize: str) -> None:
    # random weights give near-flat logits, so tiny changes flip greedy choices: ~0.7 of the
    # tokens agree here (a trained model's peaked logits agree far more); the guard is set so
    report = optimize(tiny_llama, tmp_path / "opt", "--format", "hf", "--quantize", quantize,
                      "--min-token-agreement", "0.5")
    assert report["serving"] == "optimized", report
    assert report["guard"] == {"minTokenAgreement": 0.5}
    assert report["probe"] == {"prompts": len(DEFAULT_PROMPTS)}
    assert report["errors"]["tokens"]["tokenAgreement"] >= 0.5
    assert report["sizeOf"] == "weights in memory"
    assert report["sizeBytes"]["optimized"] < 0.55 * report["sizeBytes"]["original"]
    assert set(report["latencyMs"]["optimized"]) == {"batch1", f"batch{len(DEFAULT_PROMPTS)}"}
    serve = tmp_path / "opt" / "serve"
    assert json.loads((serve / MARKER).read_text()) == {"quantize": quantize}
    prompts = list(DEFAULT_PROMPTS)
    optimized = start_llm_server(serve)
    try:
        got = continuations(optimized, prompts, report["tokens"])
    finally:
        assert optimized.stop() == 0
    original = start_llm_server(tiny_llama)
    try:
        want = continuations(original, prompts, report["tokens"])
    finally:
        assert original.stop() == 0
    served = agreement(want, got)
    assert served["tokenAgreement"] >= 0.5, served
    assert served["sequencesIdentical"] < 1.0  # the optimized model answered


def test_tiny_llm_guard_too_tight_serves_the_original(tiny_llama: Path, tmp_path: Path) -> None:
    (tmp_path / "prompts.json").write_text(json.dumps(["Once upon a time", "The sky is",
                                                       "def main():"]))
    report = optimize(tiny_llama, tmp_path / "opt", "--format", "hf", "--quantize",
                      "int8-weight-only", "--min-token-agreement", "1",
                      "--probe-uri", str(tmp_path / "prompts.json"))
    assert report["probe"] == {"prompts": 3, "file": "prompts.json"}
    assert report["serving"] == "original"
    assert report["reason"].startswith("accuracy guard failed: token agreement ")
    serve = tmp_path / "opt" / "serve"
    assert not (serve / MARKER).exists()
    assert (serve / "model.safetensors").read_bytes() == (
        tiny_llama / "model.safetensors").read_bytes()


def test_tiny_llm_bad_probe_file_and_tensor_guard(tiny_llama: Path, tmp_path: Path) -> None:
    (tmp_path / "prompts.json").write_text(json.dumps({"prompts": ["a"]}))
    report = optimize(tiny_llama, tmp_path / "opt", "--format", "hf", "--quantize", "bf16",
                      "--probe-uri", str(tmp_path / "prompts.json"))
    assert report["serving"] == "original"
    assert "an hf model's probe file is a JSON list of 1..256 non-empty prompt strings" in (
        report["reason"])
    proc = subprocess.run([PY, "-m", "kubemaas_runtime.optimize", "--model-uri", str(tiny_llama),
                           "--format", "hf", "--out", str(tmp_path / "o"), "--quantize", "bf16",
                           "--max-rel-error", "0.1",
                           "--termination-message-path", str(tmp_path / "msg")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "an hf model's guard is --min-token-agreement" in (tmp_path / "msg").read_text()
