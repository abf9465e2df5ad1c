"""PURE: each inference engine's contract, as data — the image, command and arguments, how the
LLM settings reach it, its probes, its metrics path, how the model reaches it and the labels its
pods carry. render/llm.py turns a spec into the container through these; the Deployment template
(built in, or an administrator's) receives the result as `p.command`, `p.args`, `p.env`, the
probes and labels.

Engines:
- `kubemaas` for tensor models (formats onnx, torchscript, …): the kubemaas runtime over the Open
  Inference Protocol, as before.
- `kubemaas` for language models (format hf): the same runtime with KUBEMAAS_MODEL_FORMAT=hf
  (OpenAI API; docs/llm.md), the LLM settings as KUBEMAAS_* variables.
- `vllm`: vLLM's OpenAI server (`vllm serve DIR`), the LLM settings as its flags,
  `--tensor-parallel-size` = the replica's GPUs.

Pods of language models carry `llm-d.ai/engine-type`, the label by which llm-d's endpoint picker
chooses the metric names it scrapes. Both engines export vLLM's metric names (`vllm:
num_requests_waiting`, `vllm:kv_cache_usage_perc`, …; docs/llm.md), so both get `vllm`; the
engine itself is named by `serving.kubemaas.io/engine`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ENGINE_TYPE_LABEL = "llm-d.ai/engine-type"
ENGINE_LABEL = "serving.kubemaas.io/engine"
DEFAULT_VLLM_IMAGE = "vllm/vllm-openai:v0.33.0"
VLLM_UID = 1000  # the vLLM image runs as root by default; the pod runs it as this user
INT32_MAX = 2**31 - 1  # the largest value of a probe's integer fields


@dataclass(frozen=True)
class Probe:
    path: str
    period_s: int
    failure_threshold: int

    def to_k8s(self) -> dict[str, Any]:
        return {"httpGet": {"path": self.path, "port": "http"}, "periodSeconds": self.period_s,
                "failureThreshold": self.failure_threshold}


@dataclass(frozen=True)
class Engine:
    name: str
    command: tuple[str, ...]
    startup_path: str
    liveness_path: str
    readiness_path: str
    metrics_path: str = "/metrics"
    # The LLM settings (spec.runtime.llm) by their names here: as flags (vLLM) or as
    # environment variables (the kubemaas runtime).
    flags: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    engine_type: str | None = None  # llm-d.ai/engine-type
    model: str = ""  # how the model reaches it (for the docs and errors)
    run_as_user: int | None = None
    shm: bool = False  # a memory-backed /dev/shm (NCCL between tensor-parallel workers)


# The settings every LLM engine gets, by one name.
LLM_SETTINGS = ("max_model_len", "max_num_seqs", "dtype", "gpu_memory_utilization",
                "served_model_name", "tensor_parallel_size", "port")

TENSOR = Engine(
    name="kubemaas", command=("python", "-m", "kubemaas_runtime"),
    startup_path="/v2/health/live", liveness_path="/v2/health/live",
    readiness_path="/v2/health/ready",
    model="KUBEMAAS_MODEL_URI: the file itself (pvc:// mounted read-only, file://, http(s)://, "
          "s3:// fetched by the runtime)")

KUBEMAAS_LLM = Engine(
    name="kubemaas", command=("python", "-m", "kubemaas_runtime"),
    # /health is 503 while the model loads and 200 once it serves (and again 503 while it
    # drains); the listener is up at once, so liveness asks the process, not the model.
    startup_path="/health", liveness_path="/v2/health/live", readiness_path="/health",
    env={"max_model_len": "KUBEMAAS_MAX_MODEL_LEN", "max_num_seqs": "KUBEMAAS_MAX_NUM_SEQS",
         "dtype": "KUBEMAAS_DTYPE", "gpu_memory_utilization": "KUBEMAAS_GPU_MEMORY_UTILIZATION",
         "served_model_name": "KUBEMAAS_MODEL_NAME", "port": "KUBEMAAS_PORT"},
    engine_type="vllm",
    model="KUBEMAAS_MODEL_URI with KUBEMAAS_MODEL_FORMAT=hf: a directory (pvc:// mounted "
          "read-only, file://) or fetched by the runtime (http(s):// index, s3:// prefix)")

VLLM = Engine(
    name="vllm", command=("vllm", "serve"),
    # vLLM listens only once the model is loaded: the startup probe's budget covers the load.
    startup_path="/health", liveness_path="/health", readiness_path="/health",
    flags={"served_model_name": "--served-model-name",
           "tensor_parallel_size": "--tensor-parallel-size", "max_model_len": "--max-model-len",
           "max_num_seqs": "--max-num-seqs", "gpu_memory_utilization": "--gpu-memory-utilization",
           "dtype": "--dtype", "port": "--port"},
    engine_type="vllm", run_as_user=VLLM_UID, shm=True,
    model="the first argument: a local directory (pvc:// mounted read-only at /mnt/models, "
          "file:// in the image)")


def engine_for(name: str, model_format: str) -> Engine:
    if name == "vllm":
        return VLLM
    return KUBEMAAS_LLM if model_format == "hf" else TENSOR


def flag_args(engine: Engine, settings: Mapping[str, Any]) -> list[str]:
    """The engine's flags for the settings that have a value, in the engine's own order."""
    out: list[str] = []
    for name, flag in engine.flags.items():
        value = settings.get(name)
        if value is not None:
            out += [flag, _text(value)]
    return out


def env_vars(engine: Engine, settings: Mapping[str, Any]) -> dict[str, str]:
    return {var: _text(settings[name]) for name, var in engine.env.items()
            if settings.get(name) is not None}


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def probes(engine: Engine, startup_budget_s: int) -> dict[str, dict[str, Any]]:
    """startup, liveness, readiness probes; the startup probe allows `startup_budget_s`."""
    if engine is TENSOR:
        startup = Probe(engine.startup_path, 5, 120)
    else:
        # failureThreshold is an int32: a hostile shape (weightBytes near 2^62) would overflow
        # it and the API server would refuse the Deployment instead of the sizing speaking.
        startup = Probe(engine.startup_path, 10,
                        min(INT32_MAX, max(1, -(-startup_budget_s // 10))))
    return {"startup": startup.to_k8s(),
            "liveness": Probe(engine.liveness_path, 10, 3).to_k8s(),
            "readiness": Probe(engine.readiness_path, 5, 2 if engine is TENSOR else 3).to_k8s()}
