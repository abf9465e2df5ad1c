"""PURE: ``spec.model.optimize`` — quantize and/or convert the model before it serves, with an
accuracy guard (crds/: the field descriptions state the defaults; docs/optimize.md).

Kept out of api.py (already long); api.py holds the field and turns ``OptimizeSpecError`` into
its ``SpecError``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

QUANTIZE = ("int8-dynamic", "int8-static", "fp16")
CONVERT = ("onnx",)
TORCH_FORMATS = ("torchscript", "torch-export")


class OptimizeSpecError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _m(name: str) -> dict[str, str]:
    return {"json": name}


@dataclass(frozen=True)
class OptimizeSpec:
    quantize: str | None = field(metadata=_m("quantize"), default=None)
    convert: str | None = field(metadata=_m("convert"), default=None)
    max_abs_error: float | None = field(metadata=_m("maxAbsError"), default=None)
    max_rel_error: float | None = field(metadata=_m("maxRelError"), default=None)
    min_top1_agreement: float | None = field(metadata=_m("minTop1Agreement"), default=None)
    probe_rows: int | None = field(metadata=_m("probeRows"), default=None)


def _number(raw: Any, path: str, low: float, high: float) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not math.isfinite(raw):
        raise OptimizeSpecError(path, f"must be a number, got {raw!r}")
    if not low <= raw <= high:
        raise OptimizeSpecError(path, f"must be between {low:g} and {high:g}, got {raw!r}")
    return float(raw)


def _choice(raw: Any, path: str, choices: tuple[str, ...]) -> str | None:
    if raw is None:
        return None
    if raw not in choices:
        raise OptimizeSpecError(path, f"{raw!r} is not one of {', '.join(choices)}")
    return str(raw)


def parse_optimize(raw: Any, model_format: str) -> OptimizeSpec | None:
    """The typed ``spec.model.optimize`` of a model of ``model_format``; refuses what cannot
    work (the CRD's CEL rules say the same)."""
    path = "spec.model.optimize"
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        raise OptimizeSpecError(path, f"must be an object, got {type(raw).__name__}")
    quantize = _choice(raw.get("quantize"), f"{path}.quantize", QUANTIZE)
    convert = _choice(raw.get("convert"), f"{path}.convert", CONVERT)
    if quantize is None and convert is None:
        raise OptimizeSpecError(path, "set quantize and/or convert")
    if convert == "onnx" and model_format not in TORCH_FORMATS:
        raise OptimizeSpecError(f"{path}.convert", "onnx converts a torchscript or torch-export "
                                f"model, not {model_format}")
    if quantize is not None and model_format != "onnx" and convert != "onnx":
        raise OptimizeSpecError(f"{path}.quantize", f"{quantize} works on ONNX models: a "
                                f"{model_format} model needs convert: onnx as well"
                                if model_format in TORCH_FORMATS else
                                f"{quantize} works on ONNX models, not {model_format}")
    rows = raw.get("probeRows")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int)
                             or not 1 <= rows <= 4096):
        raise OptimizeSpecError(f"{path}.probeRows", f"must be an integer 1..4096, got {rows!r}")
    return OptimizeSpec(
        quantize=quantize, convert=convert,
        max_abs_error=_number(raw.get("maxAbsError"), f"{path}.maxAbsError", 0, math.inf),
        max_rel_error=_number(raw.get("maxRelError"), f"{path}.maxRelError", 0, math.inf),
        min_top1_agreement=_number(raw.get("minTop1Agreement"), f"{path}.minTop1Agreement",
                                   0, 1),
        probe_rows=rows)
