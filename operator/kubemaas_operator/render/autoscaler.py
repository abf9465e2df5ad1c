"""PURE: which engine scales a model with spec.autoscaling, and its manifest.

- signal cpu: a HorizontalPodAutoscaler on CPU utilization (Kubernetes' own; no KEDA needed).
- an inference signal (queue, concurrency, kvCache) where the API server serves KEDA's
  ScaledObject and the operator names a Prometheus: a ScaledObject NAME whose Prometheus trigger
  reads the runtime's gauges (vllm:num_requests_waiting, vllm:num_requests_running,
  vllm:kv_cache_usage_perc) of the model's pods. KEDA then makes and owns the HPA
  (keda-hpa-NAME) and may take the model to zero replicas and back.
- an inference signal without KEDA (or without a Prometheus to read it from): the CPU HPA as a
  fallback when the model has a CPU request (never below 1 replica: CPU cannot wake a model),
  else no autoscaler; status.autoscaling says which and why, with a Warning Event.

Neither the operator's Deployment nor its autoscaling floor ever carries `replicas` while an
engine owns them (floor.py); docs/autoscaling.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..api import Autoscaling, ModelDeploymentSpec
from ..autoscaling_status import FALLBACK_REASONS

SCALEDOBJECT_API_VERSION = "keda.sh/v1alpha1"
KEDA, HPA, NONE = "KEDA", "HorizontalPodAutoscaler", "None"
# How often KEDA asks Prometheus while the model is at zero (and checks the trigger's activity).
POLLING_INTERVAL_S = 15

# signal -> (PromQL over the model's pods, KEDA metric type). The queue and concurrency sums are
# divided by the target per replica (AverageValue: replicas = ceil(sum / target)); KV-cache use
# is an average in percent that the HPA compares with the target (Value: replicas = ceil(current
# x average / target)).
_QUERIES = {
    "queue": ("sum(vllm:num_requests_waiting{{{sel}}})", "AverageValue"),
    "concurrency": ("sum(vllm:num_requests_running{{{sel}}})", "AverageValue"),
    "kvCache": ("100 * avg(vllm:kv_cache_usage_perc{{{sel}}})", "Value"),
}

# A queue model that may go to zero: the queue reads 0 while every request already runs (light,
# steady traffic), which alone would count as idle and take the last replica away mid-request.
# A second trigger reads the running requests for activation only; its threshold per replica is
# so large that ceil(running / it) never asks for more than the one replica that serves.
BUSY_TRIGGER = "busy"
BUSY_QUERY = "sum(vllm:num_requests_running{{{sel}}})"
BUSY_THRESHOLD = 1000000


@dataclass(frozen=True)
class Choice:
    """The engine for a model's spec.autoscaling and why (status.autoscaling)."""

    engine: str  # KEDA, HorizontalPodAutoscaler or None
    signal: str  # what it scales on
    reason: str  # KEDA, CPU, KEDANotInstalled, PrometheusNotConfigured
    message: str
    min_replicas: int
    max_replicas: int
    target: int

    @property
    def fallback(self) -> bool:
        return self.reason in FALLBACK_REASONS

    def status(self) -> dict[str, Any]:
        return {"engine": self.engine, "signal": self.signal, "reason": self.reason,
                "message": self.message}


def choose(a: Autoscaling, cpu_request: bool, keda: bool, prometheus: str) -> Choice:
    """The engine for `a`: KEDA for an inference signal when it is served and a Prometheus is
    named, the CPU HPA for signal cpu or as the fallback, else none."""
    if a.signal == "cpu":
        return Choice(HPA, "cpu", "CPU", f"a HorizontalPodAutoscaler keeps the CPU utilization "
                      f"near {a.target}% of the request", a.min_replicas, a.max_replicas, a.target)
    if keda and prometheus:
        return Choice(KEDA, a.signal, KEDA, f"a KEDA ScaledObject keeps {_per_replica(a)} per "
                      f"replica, reading {prometheus}", a.min_replicas, a.max_replicas, a.target)
    if not keda:
        reason = "KEDANotInstalled"
        why = (f"spec.autoscaling.signal {a.signal} needs KEDA, but the API server does not serve "
               f"{SCALEDOBJECT_API_VERSION} ScaledObject (install KEDA)")
    else:
        reason = "PrometheusNotConfigured"
        why = (f"spec.autoscaling.signal {a.signal} is read from Prometheus, but the operator "
               "names none (set the chart value operator.prometheus)")
    floor = max(1, a.min_replicas)
    if cpu_request:
        return Choice(HPA, "cpu", reason, f"{why}; falling back to a HorizontalPodAutoscaler "
                      f"on CPU (80% of the request, {floor}..{a.max_replicas} replicas)", floor,
                      a.max_replicas, 80)
    return Choice(NONE, a.signal, reason, f"{why}; no CPU request to fall back on: the model "
                  f"stays at {floor} replica{'s' if floor != 1 else ''}", floor, a.max_replicas,
                  a.target)


def _per_replica(a: Autoscaling) -> str:
    unit = {"queue": "requests waiting", "concurrency": "requests running",
            "kvCache": "% KV-cache use"}[a.signal]
    return f"{a.target}{unit}" if a.signal == "kvCache" else f"{a.target} {unit}"


def choice_for(spec: ModelDeploymentSpec, keda: bool, prometheus: str) -> Choice | None:
    if spec.autoscaling is None:
        return None
    return choose(spec.autoscaling, spec.runtime.resources.cpu is not None, keda, prometheus)


def selector(name: str, namespace: str) -> str:
    """The model's runtime pods in Prometheus: the labels a ServiceMonitor of the model's
    Service gives its targets (the chart's ServiceMonitors)."""
    return f'namespace="{namespace}",service="{name}"'


def scaled_object(a: Autoscaling, name: str, namespace: str, labels: Mapping[str, str],
                  prometheus: str) -> dict[str, Any]:
    """KEDA's ScaledObject for the Deployment `name` (identity, owner and hash stamped by the
    caller)."""
    query, metric_type = _QUERIES[a.signal]
    sel = selector(name, namespace)
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
        "minReplicaCount": a.min_replicas,
        "maxReplicaCount": a.max_replicas,
        "pollingInterval": POLLING_INTERVAL_S,
        "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {
            "stabilizationWindowSeconds": a.scale_down_stabilization_s}}}},
        "triggers": [_trigger(a.signal.lower(), metric_type, prometheus, query.format(sel=sel),
                              a.target)],
    }
    if a.to_zero:
        # the last replica goes once every trigger was inactive (the signal 0) this long
        spec["cooldownPeriod"] = a.idle_s
        if a.signal == "queue":
            spec["triggers"].append(_trigger(BUSY_TRIGGER, "AverageValue", prometheus,
                                             BUSY_QUERY.format(sel=sel), BUSY_THRESHOLD))
    return {"apiVersion": SCALEDOBJECT_API_VERSION, "kind": "ScaledObject",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
            "spec": spec}


def _trigger(name: str, metric_type: str, prometheus: str, query: str,
             threshold: int) -> dict[str, Any]:
    """A Prometheus trigger: any value above 0 activates it (wakes a model at zero)."""
    return {"type": "prometheus", "name": name, "metricType": metric_type,
            "metadata": {"serverAddress": prometheus, "query": query,
                         "threshold": str(threshold), "activationThreshold": "0",
                         "ignoreNullValues": "true"}}


def horizontal_pod_autoscaler(c: Choice, a: Autoscaling, name: str, namespace: str,
                              labels: Mapping[str, str]) -> dict[str, Any]:
    """The CPU HPA (signal cpu, or the fallback) for the Deployment `name`."""
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
            "minReplicas": c.min_replicas,
            "maxReplicas": c.max_replicas,
            "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                "type": "Utilization", "averageUtilization": c.target}}}],
            "behavior": {"scaleDown": {
                "stabilizationWindowSeconds": a.scale_down_stabilization_s}},
        },
    }
