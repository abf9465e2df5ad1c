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
