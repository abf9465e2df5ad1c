"""PURE: the whole `spec` of a ModelDeployment: `ModelDeploymentSpec` and `parse_spec`, which
hands each part to its own module (model, runtime, placement, scaling, serving, rollout)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .fields import json_name, obj
from .llm import check_engine, check_serving, default_engine
from .model import ModelSource, parse_model
from .placement import GPUSpec, Scheduling, parse_gpu, parse_scheduling
from .rollout import RolloutSpec, parse_rollout
from .runtime import PodMetadata, RuntimeSpec, parse_pod_metadata, parse_runtime
from .scaling import Autoscaling, parse_autoscaling, parse_replicas
from .serving import Serving, parse_serving

GROUP = "serving.kubemaas.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


@dataclass(frozen=True)
class ModelDeploymentSpec:
    model: ModelSource = field(metadata=json_name("model"))
    runtime: RuntimeSpec = field(metadata=json_name("runtime"))
    pod_metadata: PodMetadata = field(metadata=json_name("podMetadata"),
                                      default_factory=PodMetadata)
    gpu: GPUSpec | None = field(metadata=json_name("gpu"), default=None)
    replicas: int | None = field(metadata=json_name("replicas"), default=None)
    autoscaling: Autoscaling | None = field(metadata=json_name("autoscaling"), default=None)
    scheduling: Scheduling = field(metadata=json_name("scheduling"), default_factory=Scheduling)
    serving: Serving = field(metadata=json_name("serving"), default_factory=Serving)
    rollout: RolloutSpec = field(metadata=json_name("rollout"), default_factory=RolloutSpec)

    @property
    def engine(self) -> str:
        """spec.runtime.engine, or its default: vllm for format hf on whole GPUs, else kubemaas."""
        return self.runtime.engine or default_engine(self.model.format, self.gpu)

    @property
    def desired_replicas(self) -> int:
        """Replicas to ask for when nobody else decides (the autoscaler's floor otherwise)."""
        if self.autoscaling is not None:
            return self.autoscaling.min_replicas
        return 1 if self.replicas is None else self.replicas


def parse_spec(raw: Mapping[str, Any]) -> ModelDeploymentSpec:
    """Validate and type a ModelDeployment's spec; raise SpecError saying what to fix.

    The parts are checked in a fixed order (model, runtime, podMetadata, gpu, replicas,
    autoscaling, scheduling, serving, rollout): of several mistakes, the first in it is named."""
    spec = obj(raw, "spec")
    model = parse_model(spec.get("model"))
    runtime = parse_runtime(spec.get("runtime"))
    pod_metadata = parse_pod_metadata(spec.get("podMetadata"))
    gpu = parse_gpu(spec.get("gpu"))
    check_engine(model, runtime, gpu)
    replicas = parse_replicas(spec.get("replicas"))
    autoscaling = parse_autoscaling(spec.get("autoscaling"), replicas, runtime.resources,
                                    model.format)
    scheduling = parse_scheduling(spec.get("scheduling"))
    serving = parse_serving(spec.get("serving"))
    check_serving(runtime.engine or default_engine(model.format, gpu), serving)
    rollout = parse_rollout(spec.get("rollout"), autoscaling)
    return ModelDeploymentSpec(model=model, runtime=runtime, pod_metadata=pod_metadata, gpu=gpu,
                               replicas=replicas, autoscaling=autoscaling, scheduling=scheduling,
                               serving=serving, rollout=rollout)


def valid_name(name: str) -> bool:
    """Whether a ModelDeployment name can name its Service (DNS-1035 label)."""
    return bool(_DNS1035.match(name)) and len(name) <= 63
