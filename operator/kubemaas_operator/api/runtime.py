"""PURE: `spec.runtime` (the server image, its arguments, environment, resources, batching) and
`spec.podMetadata` (labels and annotations on the runtime pods)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .fields import SpecError, array, integer, json_name, obj, quantity, str_map, string
from .llm import LLMSettings, parse_engine, parse_llm

DEFAULT_CONVERTER_IMAGE = "ghcr.io/kubemaas/tfconvert:0.1.0"
RESERVED_LABEL_PREFIXES = ("app.kubernetes.io/", "serving.kubemaas.io/")

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_TEMPLATE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


@dataclass(frozen=True)
class EnvVar:
    name: str = field(metadata=json_name("name"))
    value: str = field(metadata=json_name("value"), default="")


@dataclass(frozen=True)
class Resources:
    cpu: str | None = field(metadata=json_name("cpu"), default=None)
    memory: str | None = field(metadata=json_name("memory"), default=None)
    cpu_limit: str | None = field(metadata=json_name("cpuLimit"), default=None)


@dataclass(frozen=True)
class Batching:
    max_batch_size: int = field(metadata=json_name("maxBatchSize"), default=1)
    max_delay_ms: float = field(metadata=json_name("maxDelayMs"), default=0.0)


@dataclass(frozen=True)
class RuntimeSpec:
    # Required for the kubemaas engine; for vllm it defaults to the operator's vLLM image.
    image: str | None = field(metadata=json_name("image"), default=None)
    engine: str | None = field(metadata=json_name("engine"), default=None)  # None: by format
    llm: LLMSettings | None = field(metadata=json_name("llm"), default=None)
    image_pull_policy: str | None = field(metadata=json_name("imagePullPolicy"), default=None)
    converter_image: str = field(metadata=json_name("converterImage"),
                                 default=DEFAULT_CONVERTER_IMAGE)
    template: str = field(metadata=json_name("template"), default="default")
    args: tuple[str, ...] = field(metadata=json_name("args"), default=())
    env: tuple[EnvVar, ...] = field(metadata=json_name("env"), default=())
    resources: Resources = field(metadata=json_name("resources"), default_factory=Resources)
    batching: Batching | None = field(metadata=json_name("batching"), default=None)


@dataclass(frozen=True)
class PodMetadata:
    labels: Mapping[str, str] = field(metadata=json_name("labels"), default_factory=dict)
    annotations: Mapping[str, str] = field(metadata=json_name("annotations"),
                                           default_factory=dict)


def _env(raw: Any) -> tuple[EnvVar, ...]:
    env: list[EnvVar] = []
    for i, e in enumerate(array(raw, "spec.runtime.env")):
        path = f"spec.runtime.env[{i}]"
        e_obj = obj(e, path)
        name = string(e_obj.get("name"), f"{path}.name", required=True) or ""
        if not _ENV_NAME.match(name):
            raise SpecError(f"{path}.name", f"{name!r} is not a valid environment variable name")
        if name.startswith("KUBEMAAS_"):
            raise SpecError(f"{path}.name", f"{name} is rendered from the spec and cannot be set "
                            "here")
        env.append(EnvVar(name=name, value=string(e_obj.get("value"), f"{path}.value") or ""))
    return tuple(env)


def _resources(raw: Any) -> Resources:
    res = obj(raw, "spec.runtime.resources")
    return Resources(cpu=quantity(res.get("cpu"), "spec.runtime.resources.cpu"),
                     memory=quantity(res.get("memory"), "spec.runtime.resources.memory"),
                     cpu_limit=quantity(res.get("cpuLimit"), "spec.runtime.resources.cpuLimit"))


def _batching(raw: Any) -> Batching | None:
    if raw is None:
        return None
    b = obj(raw, "spec.runtime.batching")
    size = integer(b.get("maxBatchSize"), "spec.runtime.batching.maxBatchSize", 1, 4096)
    delay = b.get("maxDelayMs", 0)
    if isinstance(delay, bool) or not isinstance(delay, int | float) or not (
            0 <= delay <= 10000):
        raise SpecError("spec.runtime.batching.maxDelayMs",
                        f"must be a number from 0 to 10000, got {delay!r}")
    return Batching(max_batch_size=size or 1, max_delay_ms=float(delay))


def parse_runtime(raw: Any) -> RuntimeSpec:
    """`spec.runtime` -> RuntimeSpec, or SpecError naming the field."""
    r = obj(raw, "spec.runtime")
    image = string(r.get("image"), "spec.runtime.image")
    if image == "":
        raise SpecError("spec.runtime.image", "must not be empty")
    template = string(r.get("template"), "spec.runtime.template") or "default"
    if not _TEMPLATE.match(template):
        raise SpecError("spec.runtime.template", f"{template!r} is not a valid template name")
    pull = string(r.get("imagePullPolicy"), "spec.runtime.imagePullPolicy")
    if pull is not None and pull not in ("Always", "IfNotPresent", "Never"):
        raise SpecError("spec.runtime.imagePullPolicy", f"{pull!r} is not Always, IfNotPresent "
                        "or Never")
    args = tuple(string(a, f"spec.runtime.args[{i}]", required=False) or ""
                 for i, a in enumerate(array(r.get("args"), "spec.runtime.args")))
    env = _env(r.get("env"))
    resources = _resources(r.get("resources"))
    batching = _batching(r.get("batching"))
    converter = string(r.get("converterImage"), "spec.runtime.converterImage")
    return RuntimeSpec(image=image, image_pull_policy=pull, template=template, args=args,
                       env=env, resources=resources, batching=batching,
                       converter_image=converter or DEFAULT_CONVERTER_IMAGE,
                       engine=parse_engine(r.get("engine")), llm=parse_llm(r.get("llm")))


def parse_pod_metadata(raw: Any) -> PodMetadata:
    """`spec.podMetadata` -> PodMetadata; the operator's own label prefixes are refused."""
    pm = obj(raw, "spec.podMetadata")
    labels = str_map(pm.get("labels"), "spec.podMetadata.labels")
    for key in labels:
        if key.startswith(RESERVED_LABEL_PREFIXES):
            raise SpecError("spec.podMetadata.labels", f"{key} is reserved for the operator")
    return PodMetadata(labels=labels,
                       annotations=str_map(pm.get("annotations"), "spec.podMetadata.annotations"))
