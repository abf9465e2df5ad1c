"""spec.model.optimize of hf language models: the API's rules (parse_optimize with format hf,
which the CRD's format enum gains with the hf serving work), the rendered guard, and the runtime's
pure parts (token agreement, the probe prompts file, the loader's marker, validate)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubemaas_operator.api import SpecError
from kubemaas_operator.api.optimize import parse_optimize
from kubemaas_runtime.errors import StartupError
from kubemaas_runtime.llm import quantized
from kubemaas_runtime.optimize import Options, llm_quant, validate
from kubemaas_runtime.optimize.measure import Guard


@pytest.mark.parametrize("quantize", ["int8-weight-only", "bf16"])
def test_hf_takes_weight_only_and_bf16_with_the_token_guard(quantize: str) -> None:
    opt = parse_optimize({"quantize": quantize, "minTokenAgreement": 0.8}, "hf", "s3://b/m/")
    assert opt is not None and (opt.quantize, opt.min_token_agreement) == (quantize, 0.8)


@pytest.mark.parametrize(("fmt", "raw", "path", "says"), [
    ("hf", {"quantize": "int8-dynamic"}, "spec.model.optimize.quantize", "ONNX models, not hf"),
    ("hf", {"quantize": "bf16", "maxRelError": 0.1}, "spec.model.optimize.maxRelError",
     "an hf model's guard is minTokenAgreement"),
    ("onnx", {"quantize": "fp16", "minTokenAgreement": 0.9},
     "spec.model.optimize.minTokenAgreement", "not of onnx models"),
    ("hf", {"quantize": "bf16", "minTokenAgreement": 2}, "spec.model.optimize.minTokenAgreement",
     "between 0 and 1"),
])
def test_hf_refusals(fmt: str, raw: dict[str, Any], path: str, says: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_optimize(raw, fmt, "s3://b/m")
    assert err.value.path == path and says in err.value.message


def test_token_agreement_is_position_by_position() -> None:
    assert llm_quant.agreement([[1, 2, 3, 4]], [[1, 2, 3, 4]]) == {
        "tokenAgreement": 1.0, "sequencesIdentical": 1.0}
    # a first difference at position 1: later positions agree only where they happen to
    got = llm_quant.agreement([[1, 2, 3, 4], [5, 6]], [[1, 9, 3, 8], [5, 6]])
    assert got == {"tokenAgreement": 0.666667, "sequencesIdentical": 0.5}  # 6 digits
    assert llm_quant.agreement([[1, 2]], [[1]])["tokenAgreement"] == 0.5  # a shorter answer
    assert llm_quant.check(None, {"tokens": {"tokenAgreement": 0.89}}) == [
        "token agreement 0.89 < 0.9"]  # the stated default
    assert llm_quant.check(0.5, {"tokens": {"tokenAgreement": 0.5}}) == []


def test_probe_prompts_file(tmp_path: Path) -> None:
    (tmp_path / "p.json").write_text(json.dumps(["a b", "c"]))
    assert llm_quant.prompts_from(tmp_path / "p.json") == ["a b", "c"]
    for bad in ("[]", '["a", ""]', '{"prompts": ["a"]}', "[1]", "not json"):
        (tmp_path / "p.json").write_text(bad)
        with pytest.raises(StartupError, match=r"probe file p\.json"):
            llm_quant.prompts_from(tmp_path / "p.json")


def test_marker_read_and_refused(tmp_path: Path) -> None:
    assert quantized.read_marker(tmp_path) is None
    quantized.write_marker(tmp_path, "bf16")
    assert quantized.read_marker(tmp_path) == "bf16"
    (tmp_path / quantized.MARKER).write_text('{"quantize": "int4"}')
    with pytest.raises(StartupError, match="'int4' is not one of int8-weight-only, bf16"):
        quantized.read_marker(tmp_path)


@pytest.mark.parametrize(("fmt", "opts", "says"), [
    ("hf", Options(quantize="fp16"), "an hf model takes --quantize int8-weight-only or bf16"),
    ("hf", Options(quantize="bf16", guard=Guard(max_rel_error=0.1)),
     "an hf model's guard is --min-token-agreement"),
    ("onnx", Options(quantize="fp16", guard=Guard(min_token_agreement=0.9)),
     "--min-token-agreement is the guard of hf models, not of onnx"),
    ("torchscript", Options(quantize="int8-weight-only"),
     "int8-weight-only works on torch-export models without --convert, not on torchscript"),
])
def test_runtime_validate(fmt: str, opts: Options, says: str) -> None:
    with pytest.raises(StartupError) as err:
        validate(fmt, opts)
    assert says in str(err.value)
