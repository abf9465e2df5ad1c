"""The autoscaling engine's decisions (render/autoscaler.py): KEDA for an inference signal, the
CPU HPA for cpu or as the fallback, none when nothing fits; and their manifests and Events."""

from __future__ import annotations

from typing import Any

from kubemaas_operator.api import parse_spec
from kubemaas_operator.autoscaling_status import events
from kubemaas_operator.floor import autoscaler_observed, raise_to_floor
from kubemaas_operator.render import RenderContext, render
from kubemaas_operator.render.autoscaler import choose, scaled_object

PROM = "http://prometheus.monitoring:9090"


def _spec(autoscaling: dict[str, Any], cpu: bool = True) -> Any:
    runtime: dict[str, Any] = {"image": "i"}
    if cpu:
        runtime["resources"] = {"cpu": "1"}
    return parse_spec({"model": {"uri": "https://m/x.onnx", "format": "onnx"},
                       "runtime": runtime, "autoscaling": autoscaling})


def _kinds(spec: Any, **ctx: Any) -> dict[str, dict[str, Any]]:
    out = render(spec, RenderContext(name="m", namespace="ns", uid="u", **ctx))
    return {c["kind"]: c for c in out.children}


QUEUE = {"signal": "queue", "target": 4, "minReplicas": 0, "maxReplicas": 5, "idleSeconds": 120,
         "scaleDownStabilizationSeconds": 45}


def test_queue_with_keda_renders_a_scaledobject_and_no_hpa() -> None:
    spec = _spec(QUEUE)
    kinds = _kinds(spec, keda=True, prometheus=PROM)
    assert "HorizontalPodAutoscaler" not in kinds
    so = kinds["ScaledObject"]["spec"]
    assert so["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "m"}
    assert (so["minReplicaCount"], so["maxReplicaCount"], so["cooldownPeriod"]) == (0, 5, 120)
    assert so["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]["scaleDown"] == {
        "stabilizationWindowSeconds": 45}
    trigger = so["triggers"][0]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["query"] == (
        'sum(vllm:num_requests_waiting{namespace="ns",service="m"})')
    assert trigger["metadata"]["threshold"] == "4"
    assert trigger["metadata"]["serverAddress"] == PROM
    # the Deployment never carries replicas: KEDA's HPA owns them
    assert "replicas" not in kinds["Deployment"]["spec"]
    assert kinds["ScaledObject"]["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"


def test_signals_map_to_the_runtime_gauges() -> None:
    conc = _spec({**QUEUE, "signal": "concurrency"}).autoscaling
    trig = scaled_object(conc, "m", "ns", {}, PROM)["spec"]["triggers"][0]
    assert trig["metadata"]["query"].startswith("sum(vllm:num_requests_running{")
    one = _spec({"signal": "queue", "target": 2, "maxReplicas": 3}).autoscaling
    assert "cooldownPeriod" not in scaled_object(one, "m", "ns", {}, PROM)["spec"]


def test_a_queue_model_that_may_go_to_zero_is_not_idle_while_requests_run() -> None:
    """The queue reads 0 while every request is already inside the running batch: a model
    serving steady light traffic must not count as idle and lose its last replica mid-request.
    A second trigger reads the running requests for activation only (its threshold never asks
    for a replica beyond the one that serves)."""
    so = scaled_object(_spec(QUEUE).autoscaling, "m", "ns", {}, PROM)["spec"]
    assert [t["name"] for t in so["triggers"]] == ["queue", "busy"]
    busy = so["triggers"][1]
    assert busy["type"] == "prometheus" and busy["metricType"] == "AverageValue"
    assert busy["metadata"]["query"] == (
        'sum(vllm:num_requests_running{namespace="ns",service="m"})')
    assert busy["metadata"]["activationThreshold"] == "0"
    assert int(busy["metadata"]["threshold"]) >= 100000  # ceil(running / it) is 1 at most
    assert busy["metadata"]["ignoreNullValues"] == "true"
    # a model that never goes to zero, or whose signal counts the running requests: one trigger
    one = _spec({**QUEUE, "minReplicas": 1, "idleSeconds": None}).autoscaling
    assert len(scaled_object(one, "m", "ns", {}, PROM)["spec"]["triggers"]) == 1
    conc = _spec({**QUEUE, "signal": "concurrency"}).autoscaling
    assert len(scaled_object(conc, "m", "ns", {}, PROM)["spec"]["triggers"]) == 1


def test_kv_cache_is_an_average_percentage_compared_per_replica() -> None:
    spec = parse_spec({"model": {"uri": "pvc://m/llm", "format": "hf"}, "runtime": {"image": "i"},
                       "autoscaling": {"maxReplicas": 3, "signal": "kvCache", "target": 70}})
    trig = _kinds(spec, keda=True, prometheus=PROM)["ScaledObject"]["spec"]["triggers"][0]
    assert trig["metricType"] == "Value" and trig["metadata"]["threshold"] == "70"
    assert trig["metadata"]["query"] == (
        '100 * avg(vllm:kv_cache_usage_perc{namespace="ns",service="m"})')


def test_without_keda_an_inference_signal_falls_back_to_cpu_never_below_one() -> None:
    spec = _spec(QUEUE)
    c = choose(spec.autoscaling, cpu_request=True, keda=False, prometheus=PROM)
    assert (c.engine, c.reason, c.signal, c.min_replicas, c.target) == (
        "HorizontalPodAutoscaler", "KEDANotInstalled", "cpu", 1, 80)
    assert c.fallback and "does not serve keda.sh/v1alpha1 ScaledObject" in c.message
    kinds = _kinds(spec)
    assert "ScaledObject" not in kinds
    assert kinds["HorizontalPodAutoscaler"]["spec"]["minReplicas"] == 1
    # the floor follows the engine: a Deployment KEDA left at 0 is raised to 1
    assert raise_to_floor(spec, 0, c) == 1 and raise_to_floor(spec, 0) is None


def test_keda_without_prometheus_falls_back_and_says_what_to_set() -> None:
    c = choose(_spec(QUEUE).autoscaling, cpu_request=True, keda=True, prometheus="")
    assert c.reason == "PrometheusNotConfigured" and "operator.prometheus" in c.message


def test_no_cpu_request_means_no_autoscaler_and_the_status_says_so() -> None:
    spec = _spec(QUEUE, cpu=False)
    out = render(spec, RenderContext(name="m", namespace="ns", uid="u"))
    assert {c["kind"] for c in out.children} & {"HorizontalPodAutoscaler", "ScaledObject"} == set()
    assert out.autoscaler is not None and out.autoscaler.engine == "None"
    assert "stays at 1 replica" in out.autoscaler.message


def test_cpu_signal_is_a_plain_hpa_with_or_without_keda() -> None:
    spec = _spec({"maxReplicas": 4, "targetCPUUtilization": 60})
    for keda in (False, True):
        kinds = _kinds(spec, keda=keda, prometheus=PROM)
        hpa = kinds["HorizontalPodAutoscaler"]["spec"]
        assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 60
        assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300
        assert "ScaledObject" not in kinds


def test_events_warn_on_a_fallback_once() -> None:
    fallback = choose(_spec(QUEUE).autoscaling, True, False, PROM).status()
    keda = choose(_spec(QUEUE).autoscaling, True, True, PROM).status()
    (ev,) = events(None, fallback)
    assert ev[0] == "Warning" and ev[1] == "KEDANotInstalled"
    assert events(fallback, fallback) == []
    (back,) = events(fallback, keda)
    assert back[0] == "Normal" and "KEDA" in back[2]


def test_either_autoscaler_kind_owns_the_replicas() -> None:
    assert autoscaler_observed({"ScaledObject": {}}) and autoscaler_observed(
        {"HorizontalPodAutoscaler": {}})
    assert not autoscaler_observed({"Deployment": {}})


def test_a_model_keda_took_to_zero_says_scaled_to_zero_with_its_engine() -> None:
    from datetime import UTC, datetime

    from kubemaas_operator.observed import DeploymentInfo
    from kubemaas_operator.status import Observed, compute_status

    spec = _spec(QUEUE)
    engine = choose(spec.autoscaling, True, True, PROM)
    zero = DeploymentInfo(generation=2, observed_generation=2, spec_replicas=0, revision="r",
                          replicas=0, ready_replicas=0, updated_replicas=0,
                          available_replicas=0)
    result = compute_status(spec, Observed(
        name="m", namespace="ns", generation=1, now=datetime(2026, 11, 30, tzinfo=UTC),
        desired_revision="r", deployment=zero, autoscaling=engine.status()))
    st = result.status
    assert st["reason"].startswith("ScaledToZero") and st["replicaSummary"] == "0/0"
    assert "scales out when its queue signal rises" in st["reason"]
    assert st["autoscaling"] == {"engine": "KEDA", "signal": "queue", "reason": "KEDA",
                                 "message": engine.message}
    assert ("Normal", "Autoscaling") in [(e.type, e.reason) for e in result.events]
