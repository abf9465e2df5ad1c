"""PURE: ``spec.model.optimize`` — quantize and/or convert the model before it serves, with an
accuracy guard (crds/: the field descriptions state the defaults; docs/optimize.md).

model.py holds the field; errors are the API's ``SpecError``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from .fields import SpecError, json_name, obj, string

ONNX_QUANTIZE = ("int8-dynamic", "int8-static", "fp16")
# quantize options done on the model's own torch format (no ONNX): the formats each takes
TORCH_QUANTIZE = {"int8-weight-only": ("torch-export", "hf"),
                  "bf16": ("torchscript", "torch-export", "hf")}
QUANTIZE = (*ONNX_QUANTIZE, *TORCH_QUANTIZE)
CONVERT = ("onnx",)
TORCH_FORMATS = ("torchscript", "torch-export")
_PROBE_URI = re.compile(r"^(file:///.+|https?://[^/]+/.+|s3://[^/]+/.+)$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ProbeSpec:
    """A probe file (.npz, one array per model input) fetched like the model; the rows the
    optimized model is calibrated and measured on instead of generated ones."""

    uri: str = field(metadata=json_name("uri"))
    sha256: str | None = field(metadata=json_name("sha256"), default=None)


@dataclass(frozen=True)
class OptimizeSpec:
    quantize: str | None = field(metadata=json_name("quantize"), default=None)
    convert: str | None = field(metadata=json_name("convert"), default=None)
    max_abs_error: float | None = field(metadata=json_name("maxAbsError"), default=None)
    max_rel_error: float | None = field(metadata=json_name("maxRelError"), default=None)
    min_top1_agreement: float | None = field(metadata=json_name("minTop1Agreement"), default=None)
    min_token_agreement: float | None = field(metadata=json_name("minTokenAgreement"),
                                              default=None)
    probe_rows: int | None = field(metadata=json_name("probeRows"), default=None)
    probe: ProbeSpec | None = field(metadata=json_name("probe"), default=None)


def _number(raw: Any, path: str, low: float, high: float) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise SpecError(path, f"must be a number, got {raw!r}")
    if not low <= raw <= high:
        raise SpecError(path, f"must be between {low:g} and {high:g}, got {raw!r}")
    return float(raw)


def _choice(raw: Any, path: str, choices: tuple[str, ...]) -> str | None:
    if raw is None:
        return None
    if raw not in choices:
        raise SpecError(path, f"{raw!r} is not one of {', '.join(choices)}")
    return str(raw)


def parse_probe(raw: Any, model_uri: str) -> ProbeSpec | None:
    path = "spec.model.optimize.probe"
    if raw is None:
        return None
    raw = obj(raw, path)
    uri = string(raw.get("uri"), f"{path}.uri", required=True) or ""
    if not _PROBE_URI.match(uri):
        raise SpecError(f"{path}.uri", f"{uri!r} is not file:///PATH, http(s)://HOST/PATH or "
                        "s3://BUCKET/KEY")
    if uri.startswith("s3://") and not model_uri.startswith("s3://"):
        raise SpecError(f"{path}.uri", "an s3:// probe is fetched with the model's "
                        "credentials: the model must be on s3:// as well")
    sha = string(raw.get("sha256"), f"{path}.sha256")
    if sha is not None and not _SHA256.match(sha):
        raise SpecError(f"{path}.sha256", "must be 64 lower-case hex digits")
    return ProbeSpec(uri=uri, sha256=sha)


def parse_optimize(raw: Any, model_format: str, model_uri: str = "") -> OptimizeSpec | None:
    """The typed ``spec.model.optimize`` of a model of ``model_format``; refuses what cannot
    work (the CRD's CEL rules say the same)."""
    path = "spec.model.optimize"
    if raw is None:
        return None
    raw = obj(raw, path)
    quantize = _choice(raw.get("quantize"), f"{path}.quantize", QUANTIZE)
    convert = _choice(raw.get("convert"), f"{path}.convert", CONVERT)
    if quantize is None and convert is None:
        raise SpecError(path, "set quantize and/or convert")
    if convert == "onnx" and model_format not in TORCH_FORMATS:
        raise SpecError(f"{path}.convert", "onnx converts a torchscript or torch-export "
                                f"model, not {model_format}")
    if quantize in TORCH_QUANTIZE:
        takes = TORCH_QUANTIZE[quantize]
        if convert is not None or model_format not in takes:
            raise SpecError(f"{path}.quantize", f"{quantize} works on {', '.join(takes)} "
                            f"models without convert, not on {model_format}"
                            + (" with convert: onnx" if convert else ""))
    elif quantize is not None and model_format != "onnx" and convert != "onnx":
        raise SpecError(f"{path}.quantize", f"{quantize} works on ONNX models: a "
                                f"{model_format} model needs convert: onnx as well"
                                if model_format in TORCH_FORMATS else
                                f"{quantize} works on ONNX models, not {model_format}")
    rows = raw.get("probeRows")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int)
                             or not 1 <= rows <= 4096):
        raise SpecError(f"{path}.probeRows", f"must be an integer 1..4096, got {rows!r}")
    tensor_guard = [k for k in ("maxAbsError", "maxRelError", "minTop1Agreement", "probeRows")
                    if raw.get(k) is not None]
    if model_format == "hf" and tensor_guard:
        raise SpecError(f"{path}.{tensor_guard[0]}", "an hf model's guard is minTokenAgreement "
                        "(greedy continuations of probe prompts compared token by token)")
    if model_format != "hf" and raw.get("minTokenAgreement") is not None:
        raise SpecError(f"{path}.minTokenAgreement", f"is the guard of hf language models, not "
                        f"of {model_format} models")
    probe = parse_probe(raw.get("probe"), model_uri)
    if probe is not None and rows is not None:
        raise SpecError(f"{path}.probeRows", "set probe (a file with its own rows) or "
                        "probeRows (generated rows), not both")
    return OptimizeSpec(
        quantize=quantize, convert=convert,
        max_abs_error=_number(raw.get("maxAbsError"), f"{path}.maxAbsError", 0, math.inf),
        max_rel_error=_number(raw.get("maxRelError"), f"{path}.maxRelError", 0, math.inf),
        min_top1_agreement=_number(raw.get("minTop1Agreement"), f"{path}.minTop1Agreement",
                                   0, 1),
        min_token_agreement=_number(raw.get("minTokenAgreement"), f"{path}.minTokenAgreement",
                                    0, 1),
        probe_rows=rows, probe=probe)
