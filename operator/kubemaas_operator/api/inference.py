"""PURE: `spec.serving.inferencePool` — the Gateway API Inference Extension's InferencePool the
operator renders for a language model (its endpoint picker), and `is_llm`, the one predicate
that says which models are language models."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .fields import DNS1123, SpecError, integer, json_name, obj, string

FailureMode = Literal["FailOpen", "FailClose"]
FAILURE_MODES: tuple[FailureMode, ...] = ("FailOpen", "FailClose")
LLM_FORMATS = ("hf",)


@dataclass(frozen=True)
class EndpointPicker:
    """The endpoint picker (a Service in the model's namespace) the InferencePool names:
    its endpointPickerRef."""

    name: str = field(metadata=json_name("name"))
    port: int = field(metadata=json_name("port"))
    failure_mode: FailureMode = field(metadata=json_name("failureMode"), default="FailClose")


@dataclass(frozen=True)
class InferencePoolSpec:
    endpoint_picker: EndpointPicker | None = field(metadata=json_name("endpointPicker"),
                                                   default=None)


def is_llm(model_format: str) -> bool:
    """A language model (OpenAI API, routed through an InferencePool when one is served)."""
    return model_format in LLM_FORMATS


def parse_endpoint_picker(raw: Any, path: str) -> EndpointPicker:
    ep = obj(raw, path)
    name = string(ep.get("name"), f"{path}.name", required=True) or ""
    if len(name) > 63 or not DNS1123.match(name) or name[0].isdigit():
        raise SpecError(f"{path}.name", f"{name!r} is not a Service name (a DNS-1035 label)")
    port = integer(ep.get("port"), f"{path}.port", 1, 65535)
    if port is None:
        raise SpecError(f"{path}.port", "is required (the endpoint picker Service's port)")
    mode = string(ep.get("failureMode"), f"{path}.failureMode") or "FailClose"
    if mode not in FAILURE_MODES:
        raise SpecError(f"{path}.failureMode", f"{mode!r} is not FailOpen or FailClose")
    return EndpointPicker(name=name, port=port, failure_mode=mode)


def parse_inference_pool(raw: Any) -> InferencePoolSpec | None:
    """`spec.serving.inferencePool` -> InferencePoolSpec (None when absent)."""
    if raw is None:
        return None
    path = "spec.serving.inferencePool"
    ip = obj(raw, path)
    picker = ip.get("endpointPicker")
    return InferencePoolSpec(endpoint_picker=None if picker is None else parse_endpoint_picker(
        picker, f"{path}.endpointPicker"))
