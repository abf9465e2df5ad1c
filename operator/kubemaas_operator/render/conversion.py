"""PURE: the conversion step of formats the runtime does not load itself.

``tf-savedmodel``: an init container from ``spec.runtime.converterImage`` (TensorFlow + tf2onnx;
runtime/Dockerfile.tfconvert) runs ``python -m kubemaas_runtime.tfconvert``. It fetches the
SavedModel (the same URI, credentials and volumes the runtime would use), checks its checksum,
converts it to ONNX once per checksum in the pod's cache volume and leaves
``<cache>/converted/model.onnx``, which the runtime container then serves with onnxruntime. The
runtime image never holds TensorFlow.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..api import ModelDeploymentSpec
from . import optimization

CONVERTED_FORMATS = {"tf-savedmodel": "onnx"}
INIT_CONTAINER = "tfconvert"


@dataclass(frozen=True)
class Served:
    """What the runtime container is told to serve."""

    uri: str
    format: str
    sha256: str | None  # None when the converter already checked the source's


def converted_dir(cache_dir: str) -> str:
    return f"{cache_dir}/converted"


def needs_conversion(spec: ModelDeploymentSpec) -> bool:
    return spec.model.format in CONVERTED_FORMATS


def served(spec: ModelDeploymentSpec, model_uri: str, cache_dir: str) -> Served:
    """The runtime's model URI, format and checksum: the source itself, the converted file, or
    the optimize step's directory (format from its file; the step checked the checksum)."""
    if spec.model.optimize is not None:
        return Served(optimization.served_uri(cache_dir), "", None)
    if not needs_conversion(spec):
        return Served(model_uri, spec.model.format, spec.model.sha256)
    return Served(f"file://{converted_dir(cache_dir)}/model.onnx",
                  CONVERTED_FORMATS[spec.model.format], None)


def init_containers(spec: ModelDeploymentSpec, model_uri: str, cache_dir: str,
                    credentials_dir: str | None, mounts: Sequence[Mapping[str, Any]],
                    resources: Mapping[str, Mapping[str, str]]) -> list[dict[str, Any]]:
    """The converter init container (none for formats the runtime loads itself). It gets the
    runtime's volume mounts, its CPU and memory (no GPU: the conversion runs on the CPU) and the
    user's literal environment (an S3 endpoint, a proxy). Then the optimize init container, when
    ``spec.model.optimize`` asks for it (render/optimization.py)."""
    optimize = optimization.init_container(spec, model_uri, cache_dir, credentials_dir, mounts,
                                           resources)
    if not needs_conversion(spec):
        return [optimize] if optimize else []
    env = [{"name": "KUBEMAAS_MODEL_URI", "value": model_uri},
           {"name": "KUBEMAAS_CONVERT_DIR", "value": converted_dir(cache_dir)}]
    if spec.model.sha256:
        env.append({"name": "KUBEMAAS_MODEL_SHA256", "value": spec.model.sha256})
    if spec.model.signature:
        env.append({"name": "KUBEMAAS_SIGNATURE", "value": spec.model.signature})
    if credentials_dir is not None:
        env.append({"name": "KUBEMAAS_S3_CREDENTIALS_DIR", "value": credentials_dir})
    env.extend({"name": e.name, "value": e.value} for e in spec.runtime.env)
    container: dict[str, Any] = {
        "name": INIT_CONTAINER,
        "image": spec.runtime.converter_image,
        "command": ["python", "-m", "kubemaas_runtime.tfconvert"],
        "env": env,
        "volumeMounts": [dict(m) for m in mounts],
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if spec.runtime.image_pull_policy:
        container["imagePullPolicy"] = spec.runtime.image_pull_policy
    cpu_memory = {kind: {k: v for k, v in values.items() if k in ("cpu", "memory")}
                  for kind, values in resources.items()}
    cpu_memory = {kind: values for kind, values in cpu_memory.items() if values}
    if cpu_memory:
        container["resources"] = cpu_memory
    return [container]
