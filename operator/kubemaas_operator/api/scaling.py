"""PURE: how many replicas — `spec.replicas`, or `spec.autoscaling` (KEDA on an inference signal,
or a CPU-utilization HPA)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .fields import SpecError, integer, json_name, obj, string
from .runtime import Resources

# What the autoscaler scales on, per replica:
#   queue        requests waiting (vllm:num_requests_waiting: the batcher's queue, the LLM
#                engine's waiting requests)
#   concurrency  requests being computed (vllm:num_requests_running)
#   kvCache      KV-cache use in percent (vllm:kv_cache_usage_perc x 100; language models)
#   cpu          CPU utilization in percent of the CPU request (the HorizontalPodAutoscaler's)
SIGNALS = ("queue", "concurrency", "kvCache", "cpu")
# Model formats served by the language-model engine (the only ones with a KV cache).
LLM_FORMATS = frozenset({"hf"})
DEFAULT_CPU_TARGET = 80
DEFAULT_SCALE_DOWN_S = 300
DEFAULT_IDLE_S = 300


@dataclass(frozen=True)
class Autoscaling:
    max_replicas: int = field(metadata=json_name("maxReplicas"))
    min_replicas: int = field(metadata=json_name("minReplicas"), default=1)
    target_cpu_utilization: int = field(metadata=json_name("targetCPUUtilization"),
                                        default=DEFAULT_CPU_TARGET)
    signal: str = field(metadata=json_name("signal"), default="cpu")
    # per replica, in the signal's unit (requests, or percent for kvCache and cpu)
    target: int = field(metadata=json_name("target"), default=DEFAULT_CPU_TARGET)
    scale_down_stabilization_s: int = field(
        metadata=json_name("scaleDownStabilizationSeconds"), default=DEFAULT_SCALE_DOWN_S)
    idle_s: int = field(metadata=json_name("idleSeconds"), default=DEFAULT_IDLE_S)

    @property
    def to_zero(self) -> bool:
        return self.min_replicas == 0


def parse_replicas(raw: Any) -> int | None:
    return integer(raw, "spec.replicas", 0, 1000)


def _signal_and_target(a: Any, model_format: str) -> tuple[str, int, int]:
    """(signal, target per replica, targetCPUUtilization) with their combinations checked."""
    signal = string(a.get("signal"), "spec.autoscaling.signal") or "cpu"
    if signal not in SIGNALS:
        raise SpecError("spec.autoscaling.signal", f"{signal!r} is not one of "
                        f"{', '.join(SIGNALS)}")
    cpu = integer(a.get("targetCPUUtilization"), "spec.autoscaling.targetCPUUtilization", 1, 100)
    target = integer(a.get("target"), "spec.autoscaling.target", 1, 100000)
    if signal == "cpu":
        if cpu is not None and target is not None and cpu != target:
            raise SpecError("spec.autoscaling", "targetCPUUtilization and target disagree: "
                            "set only one of them")
        pct = target or cpu or DEFAULT_CPU_TARGET
        if pct > 100:
            raise SpecError("spec.autoscaling.target", "is a CPU utilization in percent "
                            "(1..100)")
        return signal, pct, pct
    if cpu is not None:
        raise SpecError("spec.autoscaling.targetCPUUtilization", f"only applies to signal cpu "
                        f"(this model scales on {signal}: set spec.autoscaling.target)")
    if target is None:
        raise SpecError("spec.autoscaling.target", f"is required with signal {signal} (the "
                        "value per replica the autoscaler aims for)")
    if signal == "kvCache":
        if target > 100:
            raise SpecError("spec.autoscaling.target", "is a KV-cache use in percent (1..100) "
                            "with signal kvCache")
        if model_format not in LLM_FORMATS:
            raise SpecError("spec.autoscaling.signal", f"kvCache is a language-model signal; "
                            f"a {model_format} model has no KV cache (use queue or concurrency)")
    return signal, target, DEFAULT_CPU_TARGET


def parse_autoscaling(raw: Any, replicas: int | None, resources: Resources,
                      model_format: str = "onnx") -> Autoscaling | None:
    """`spec.autoscaling` -> Autoscaling (None when absent); it excludes `spec.replicas`; signal
    cpu needs the CPU request it scales on; only an inference signal can reach zero replicas."""
    if raw is None:
        return None
    if replicas is not None:
        raise SpecError("spec.autoscaling", "set either spec.replicas or spec.autoscaling, "
                        "not both")
    a = obj(raw, "spec.autoscaling")
    hi = integer(a.get("maxReplicas"), "spec.autoscaling.maxReplicas", 1, 1000)
    if hi is None:
        raise SpecError("spec.autoscaling.maxReplicas", "is required")
    lo = integer(a.get("minReplicas"), "spec.autoscaling.minReplicas", 0, 1000)
    lo = 1 if lo is None else lo
    if lo > hi:
        raise SpecError("spec.autoscaling", f"minReplicas ({lo}) exceeds maxReplicas ({hi})")
    signal, target, cpu = _signal_and_target(a, model_format)
    if signal == "cpu" and resources.cpu is None:
        raise SpecError("spec.autoscaling", "scales on CPU utilization, which needs a CPU "
                        "request: set spec.runtime.resources.cpu (or scale on queue, "
                        "concurrency or kvCache)")
    if lo == 0 and signal == "cpu":
        raise SpecError("spec.autoscaling.minReplicas", "0 needs an inference signal (queue, "
                        "concurrency or kvCache): CPU utilization cannot wake a model that has "
                        "no pods")
    down = integer(a.get("scaleDownStabilizationSeconds"),
                   "spec.autoscaling.scaleDownStabilizationSeconds", 0, 3600)
    idle = integer(a.get("idleSeconds"), "spec.autoscaling.idleSeconds", 0, 86400)
    if idle is not None and lo != 0:
        raise SpecError("spec.autoscaling.idleSeconds", "is the idle time before going to zero "
                        "replicas: it needs minReplicas 0")
    return Autoscaling(max_replicas=hi, min_replicas=lo, target_cpu_utilization=cpu,
                       signal=signal, target=target,
                       scale_down_stabilization_s=DEFAULT_SCALE_DOWN_S if down is None else down,
                       idle_s=DEFAULT_IDLE_S if idle is None else idle)
