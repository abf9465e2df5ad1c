"""spec.autoscaling: signals, targets, zero replicas and their combinations (parse_* checks what
the CRD's CEL rules check, for clients that skip server-side validation)."""

from __future__ import annotations

from typing import Any

import pytest

from kubemaas_operator.api import SpecError, parse_spec


def _spec(autoscaling: dict[str, Any], cpu: str | None = "1", fmt: str = "onnx") -> Any:
    runtime: dict[str, Any] = {"image": "i"}
    if cpu is not None:
        runtime["resources"] = {"cpu": cpu}
    return parse_spec({"model": {"uri": "https://m/x.onnx", "format": fmt},
                       "runtime": runtime, "autoscaling": autoscaling})


def test_cpu_is_the_default_signal_and_keeps_target_cpu_utilization() -> None:
    a = _spec({"maxReplicas": 3, "targetCPUUtilization": 70}).autoscaling
    assert (a.signal, a.target, a.target_cpu_utilization, a.min_replicas) == ("cpu", 70, 70, 1)
    assert a.scale_down_stabilization_s == 300
    assert _spec({"maxReplicas": 3}).autoscaling.target == 80


def test_queue_signal_needs_no_cpu_request_and_may_reach_zero() -> None:
    a = _spec({"maxReplicas": 4, "minReplicas": 0, "signal": "queue", "target": 8,
               "idleSeconds": 60, "scaleDownStabilizationSeconds": 30}, cpu=None).autoscaling
    assert (a.signal, a.target, a.min_replicas, a.idle_s, a.to_zero) == ("queue", 8, 0, 60, True)
    assert a.scale_down_stabilization_s == 30
    assert _spec({"maxReplicas": 2, "minReplicas": 0, "signal": "concurrency",
                  "target": 2}).autoscaling.idle_s == 300


@pytest.mark.parametrize(("autoscaling", "cpu", "fmt", "says"), [
    ({"maxReplicas": 2, "signal": "queue"}, "1", "onnx", "is required with signal queue"),
    ({"maxReplicas": 2, "signal": "queue", "target": 4, "targetCPUUtilization": 50}, "1", "onnx",
     "only applies to signal cpu"),
    ({"maxReplicas": 2, "target": 50, "targetCPUUtilization": 60}, "1", "onnx", "disagree"),
    ({"maxReplicas": 2, "target": 150}, "1", "onnx", "percent"),
    ({"maxReplicas": 2, "signal": "kvCache", "target": 150}, "1", "hf", "percent"),
    ({"maxReplicas": 2, "signal": "kvCache", "target": 80}, "1", "onnx", "no KV cache"),
    ({"maxReplicas": 2, "minReplicas": 0}, "1", "onnx", "needs an inference signal"),
    ({"maxReplicas": 2}, None, "onnx", "needs a CPU request"),
    ({"maxReplicas": 2, "signal": "queue", "target": 1, "idleSeconds": 30}, "1", "onnx",
     "needs minReplicas 0"),
    ({"maxReplicas": 2, "signal": "latency", "target": 1}, "1", "onnx", "is not one of"),
    ({"maxReplicas": 2, "minReplicas": 3, "signal": "queue", "target": 1}, "1", "onnx",
     "exceeds maxReplicas"),
])
def test_combinations_that_make_no_sense_are_refused(autoscaling: dict[str, Any],
                                                     cpu: str | None, fmt: str,
                                                     says: str) -> None:
    with pytest.raises(SpecError, match=says):
        _spec(autoscaling, cpu=cpu, fmt=fmt)


def test_kv_cache_is_accepted_for_a_language_model() -> None:
    a = parse_spec({"model": {"uri": "pvc://m/llm", "format": "hf"}, "runtime": {"image": "i"},
                    "autoscaling": {"maxReplicas": 2, "signal": "kvCache",
                                    "target": 70}}).autoscaling
    assert (a.signal, a.target) == ("kvCache", 70)
