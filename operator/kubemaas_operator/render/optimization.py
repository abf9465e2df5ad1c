"""PURE: the optimize step of ``spec.model.optimize``.

An init container from the runtime image itself (``python -m kubemaas_runtime.optimize``)
fetches the model with the runtime's URI, checksum, credentials and volumes, optimizes it once per
(model sha256, options) in the pod's cache volume, measures it against the original on probe
inputs and leaves ``<cache>/optimized/serve/`` holding the model to serve: the optimized ONNX file
when the accuracy guard held, else the original. The runtime container serves that directory
(its format is read from the file's name). The init container's report, one JSON line, is its
termination message, which the operator copies into ``status.optimization``.

The init container gets the runtime container's resources, GPUs included (an init container's
requests do not add to the pod's: the pod asks for the larger of the two), so the latency it
measures is on the device the model will serve on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..api import ModelDeploymentSpec

INIT_CONTAINER = "optimize"
OPTIMIZED_DIR = ".kubemaas-optimized"  # in a ModelCache's directory (runtime optimize/cached.py)


def optimized_dir(cache_dir: str) -> str:
    return f"{cache_dir}/optimized"


def served_uri(cache_dir: str) -> str:
    return f"file://{optimized_dir(cache_dir)}/serve"


def _options_env(spec: ModelDeploymentSpec) -> list[dict[str, str]]:
    opt = spec.model.optimize
    assert opt is not None
    pairs = [("KUBEMAAS_OPTIMIZE_QUANTIZE", opt.quantize),
             ("KUBEMAAS_OPTIMIZE_CONVERT", opt.convert),
             ("KUBEMAAS_OPTIMIZE_MAX_ABS_ERROR", opt.max_abs_error),
             ("KUBEMAAS_OPTIMIZE_MAX_REL_ERROR", opt.max_rel_error),
             ("KUBEMAAS_OPTIMIZE_MIN_TOP1_AGREEMENT", opt.min_top1_agreement),
             ("KUBEMAAS_OPTIMIZE_MIN_TOKEN_AGREEMENT", opt.min_token_agreement),
             ("KUBEMAAS_OPTIMIZE_PROBE_ROWS", opt.probe_rows),
             ("KUBEMAAS_OPTIMIZE_PROBE_URI", opt.probe.uri if opt.probe else None),
             ("KUBEMAAS_OPTIMIZE_PROBE_SHA256", opt.probe.sha256 if opt.probe else None)]
    if spec.runtime.batching is not None:
        pairs.append(("KUBEMAAS_MAX_BATCH_SIZE", spec.runtime.batching.max_batch_size))
    return [{"name": k, "value": f"{v:g}" if isinstance(v, float) else str(v)}
            for k, v in pairs if v is not None]


def options_env(spec: ModelDeploymentSpec) -> list[dict[str, str]]:
    """The optimize step's options (and the batch size it measures at) as environment."""
    return _options_env(spec)


def options_key(spec: ModelDeploymentSpec) -> str:
    """What decides an optimized model besides the model's files: the format and the options.
    A ModelCache optimizes once per key and copy (modelcache/optimize.py), in
    ``<cache>/.kubemaas-optimized/<key>/``."""
    doc = {"format": spec.model.format, "env": _options_env(spec)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:16]


def init_container(spec: ModelDeploymentSpec, model_uri: str, cache_dir: str,
                   credentials_dir: str | None, mounts: Sequence[Mapping[str, Any]],
                   resources: Mapping[str, Mapping[str, str]]) -> dict[str, Any] | None:
    """The optimize init container, or None when the spec asks for no optimization."""
    if spec.model.optimize is None:
        return None
    env = [{"name": "KUBEMAAS_MODEL_URI", "value": model_uri},
           {"name": "KUBEMAAS_MODEL_FORMAT", "value": spec.model.format},
           {"name": "KUBEMAAS_OPTIMIZE_DIR", "value": optimized_dir(cache_dir)},
           {"name": "KUBEMAAS_DEVICE", "value": "auto" if spec.gpu else "cpu"}]
    if spec.model.sha256:
        env.append({"name": "KUBEMAAS_MODEL_SHA256", "value": spec.model.sha256})
    if credentials_dir is not None:
        env.append({"name": "KUBEMAAS_S3_CREDENTIALS_DIR", "value": credentials_dir})
    env.extend(_options_env(spec))
    env.extend({"name": e.name, "value": e.value} for e in spec.runtime.env)
    container: dict[str, Any] = {
        "name": INIT_CONTAINER,
        "image": spec.runtime.image,
        "command": ["python", "-m", "kubemaas_runtime.optimize"],
        "env": env,
        "volumeMounts": [dict(m) for m in mounts],
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": {"runAsNonRoot": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                            "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if spec.runtime.image_pull_policy:
        container["imagePullPolicy"] = spec.runtime.image_pull_policy
    kept = {kind: dict(values) for kind, values in resources.items() if values}
    if kept:
        container["resources"] = kept
    return container
