"""The operator metrics' pure parts and the work queue's depth and age."""

from __future__ import annotations

import asyncio
import json

from kubemaas_operator import metrics
from kubemaas_operator.config import Settings, SettingsError
from kubemaas_operator.workqueue import WorkQueue


def test_models_are_counted_by_phase_and_reason() -> None:
    packed = [json.dumps({"status": {"phase": "Ready", "reason": "Ready"}}),
              json.dumps({"status": {"phase": "Ready", "reason": "Ready"}}),
              json.dumps({"status": {"phase": "Failed", "reason": "InvalidSpec"}}),
              json.dumps({"metadata": {"name": "new"}}), "not json"]
    assert metrics.count_models(packed) == {("Ready", "Ready"): 2,
                                            ("Failed", "InvalidSpec"): 1, ("Pending", ""): 1}


def test_ended_rollouts_are_the_new_history_entries() -> None:
    old = {"number": 1, "hash": "a", "outcome": "Complete", "time": "t1"}
    new = {"number": 2, "hash": "b", "outcome": "RolledBack", "time": "t2"}
    previous = {"rollout": {"history": [old]}}
    assert metrics.ended_rollouts(previous, {"rollout": {"history": [old, new]}}) == [
        "RolledBack"]
    assert metrics.ended_rollouts(previous, previous) == []
    assert metrics.ended_rollouts({}, {}) == []


def test_the_queue_reports_depth_and_age() -> None:
    async def scenario() -> tuple[int, float, int, float, list[float]]:
        started = asyncio.Event()
        release = asyncio.Event()
        waits: list[float] = []

        async def worker(key: object) -> None:
            started.set()
            await release.wait()
            return None

        queue = WorkQueue(worker, concurrency=1, on_start=waits.append)
        queue.enqueue("a")
        queue.enqueue("b")
        queue.enqueue("b")  # coalesced
        await started.wait()  # "a" runs and holds the only slot; "b" waits
        depth, age = queue.depth(), queue.oldest_age()
        release.set()
        while queue.depth():
            await asyncio.sleep(0)
        await queue.close()
        return depth, age, queue.depth(), queue.oldest_age(), waits

    depth, age, depth_after, age_after, waits = asyncio.run(scenario())
    assert depth == 1 and age >= 0
    assert depth_after == 0 and age_after == 0.0
    assert len(waits) == 2 and all(w >= 0 for w in waits)


def test_settings_check_the_monitoring_namespace_and_metrics_port() -> None:
    s = Settings.from_env({"KUBEMAAS_OPERATOR_MONITORING_NAMESPACE": "monitoring",
                           "KUBEMAAS_OPERATOR_NAMESPACE": "x"})
    assert s.monitoring_namespace == "monitoring" and s.metrics_port == 8082
    for image in ("registry.local:5000/vllm/vllm-openai:v0.33.0", "vllm/vllm-openai",
                  "vllm/vllm-openai@sha256:" + "a" * 64):
        assert Settings.from_env({"KUBEMAAS_OPERATOR_VLLM_IMAGE": image,
                                  "KUBEMAAS_OPERATOR_NAMESPACE": "x"}).vllm_image == image
    assert Settings.from_env({"KUBEMAAS_OPERATOR_LOG_LEVEL": "debug",
                              "KUBEMAAS_OPERATOR_NAMESPACE": "x"}).log_level == "debug"
    for env in ({"KUBEMAAS_OPERATOR_MONITORING_NAMESPACE": "Not/A/Namespace"},
                {"KUBEMAAS_OPERATOR_METRICS_PORT": "70000"},
                # both on one port: kopf's health endpoint cannot bind and the operator exits
                {"KUBEMAAS_OPERATOR_METRICS_PORT": "8081"},
                {"KUBEMAAS_OPERATOR_HEALTH_PORT": "70000"},
                # an empty or unknown level was a ValueError traceback from logging at start
                {"KUBEMAAS_OPERATOR_LOG_LEVEL": ""}, {"KUBEMAAS_OPERATOR_LOG_LEVEL": "TRACE"},
                # an image the kubelet cannot pull (InvalidImageName) for every vllm model
                {"KUBEMAAS_OPERATOR_VLLM_IMAGE": "vllm/vllm-openai: v1"},
                {"KUBEMAAS_OPERATOR_VLLM_IMAGE": "VLLM/Openai:v1"}):
        try:
            Settings.from_env({**env, "KUBEMAAS_OPERATOR_NAMESPACE": "x"})
        except SettingsError as err:
            assert next(iter(env)) in str(err)
        else:
            raise AssertionError(f"{env} was accepted")


class _Response:
    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body

    def read(self) -> bytes:
        return self.body


class _Api:
    """Answers every call with `status` (a Status body when it is a refusal)."""

    def __init__(self, status: int = 200) -> None:
        self.status = status

    def param_serialize(self, method: str, path: str, **_: object) -> tuple[str, str]:
        return method, path

    def call_api(self, method: str, path: str, **_: object) -> _Response:
        if self.status >= 400:
            return _Response(self.status, json.dumps({
                "kind": "Status", "code": self.status, "reason": "Forbidden",
                "message": "denied request: during the freeze"}).encode())
        return _Response(self.status, b"{}")


def _writes(namespace: str) -> float:
    return metrics.REGISTRY.get_sample_value(
        "kubemaas_operator_api_writes_total", {"namespace": namespace}) or 0.0


def test_api_writes_are_counted_by_namespace_refused_ones_too_reads_not() -> None:
    from kubemaas_operator.k8s import ApiError, Cluster

    api = _Api()
    cluster = Cluster(api)  # type: ignore[arg-type]
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"namespace": "w-a", "name": "m"}}
    before = {ns: _writes(ns) for ns in ("w-a", "w-b", "")}
    cluster.apply(deployment)
    cluster.apply({**deployment, "metadata": {"namespace": "w-b", "name": "m"}})
    cluster.apply({"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelCache",
                   "metadata": {"name": "cluster-wide"}})  # no namespace in its path
    assert cluster.get_configmap("w-a", "templates") == {}  # a GET: not a write
    api.status = 403
    try:
        cluster.apply(deployment)
    except ApiError as err:
        assert err.status == 403
    else:
        raise AssertionError("a refused apply raised nothing")
    assert {ns: _writes(ns) - before[ns] for ns in before} == {"w-a": 2, "w-b": 1, "": 1}
    # the health probes' counters (/healthz apiWrites, apiWritesByNamespace) say the same
    assert cluster.writes == 4
    assert cluster.writes_by_namespace() == {"w-a": 2, "w-b": 1, "": 1}


def test_api_writes_and_resync_passes_are_served_and_parsed_back() -> None:
    """What GET /metrics serves, read back with prometheus-client's text parser as the cluster
    tests' Operator.counters() does: the "" namespace of cluster-scoped writes included."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    metrics.api_write("")
    metrics.api_write("w-c")
    metrics.RESYNC_PASSES.inc()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(
                   generate_latest(metrics.REGISTRY).decode())
               for s in family.samples}
    writes = "kubemaas_operator_api_writes_total"
    assert samples[(writes, (("namespace", ""),))] == _writes("") >= 1
    assert samples[(writes, (("namespace", "w-c"),))] == _writes("w-c") >= 1
    passes = samples[("kubemaas_operator_resync_passes_total", ())]
    assert passes == metrics.REGISTRY.get_sample_value(
        "kubemaas_operator_resync_passes_total") >= 1


def test_a_deleted_namespaces_write_counts_go_the_total_stays() -> None:
    """kubemaas_operator_api_writes_total kept a series for every namespace ever written to;
    Cluster.forget_namespace (the namespace's DELETED event) drops it, and the probe's count."""
    from kubemaas_operator.k8s import Cluster

    cluster = Cluster(_Api())  # type: ignore[arg-type]
    cluster.apply({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"namespace": "w-gone", "name": "m"}})
    cluster.apply({"apiVersion": "apps/v1", "kind": "Deployment",
                   "metadata": {"namespace": "w-kept", "name": "m"}})
    assert _writes("w-gone") >= 1
    cluster.forget_namespace("w-gone")
    assert metrics.REGISTRY.get_sample_value(
        "kubemaas_operator_api_writes_total", {"namespace": "w-gone"}) is None
    assert cluster.writes_by_namespace() == {"w-kept": 1} and cluster.writes == 2
    assert _writes("w-kept") >= 1
    cluster.forget_namespace("never-written")  # nothing to drop: no error
