"""compute_status: observed children and pods -> phase, conditions, reason (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kubemaas_operator.api import parse_spec
from kubemaas_operator.observed import (
    DeploymentInfo,
    PodInfo,
    create_failure,
    deployment_info,
    pod_info,
)
from kubemaas_operator.scheduling import Capacity
from kubemaas_operator.status import Failure, Observed, compute_status, failed_status

NOW = datetime(2026, 11, 23, 1, 0, 0, tzinfo=UTC)
SPEC = parse_spec({"model": {"uri": "s3://b/m.onnx", "format": "onnx"},
                   "runtime": {"image": "img"}, "replicas": 2})


def observed(**extra: Any) -> Observed:
    base: dict[str, Any] = dict(name="m", namespace="ns", generation=3, now=NOW,
                                desired_revision="rev1", url="http://m.ns.svc.cluster.local:8080",
                                selector="a=b")
    base.update(extra)
    return Observed(**base)


def complete(ready: int = 2, replicas: int = 2) -> DeploymentInfo:
    return DeploymentInfo(generation=4, observed_generation=4, spec_replicas=replicas,
                          revision="rev1", replicas=replicas, ready_replicas=ready,
                          updated_replicas=replicas, available_replicas=ready)


def cond(status: dict[str, Any], kind: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_ready() -> None:
    result = compute_status(SPEC, observed(deployment=complete()))
    st = result.status
    assert st["phase"] == "Ready" and st["reason"] == "Ready"
    assert st["replicaSummary"] == "2/2" and st["observedGeneration"] == 3
    assert st["currentRevision"] == "rev1" and st["updateRevision"] == "rev1"
    assert {c["type"]: c["status"] for c in st["conditions"]} == {
        "Ready": "True", "Scheduled": "True", "Available": "True", "RolloutComplete": "True"}
    assert result.changed
    assert [e.reason for e in result.events] == ["Ready"]


def test_unchanged_status_writes_nothing_and_keeps_transition_times() -> None:
    first = compute_status(SPEC, observed(deployment=complete())).status
    again = compute_status(SPEC, observed(deployment=complete(), previous=first,
                                          now=NOW + timedelta(minutes=5)))
    assert not again.changed and again.events == []
    assert again.status == first


def test_transition_time_moves_only_on_status_change() -> None:
    first = compute_status(SPEC, observed(deployment=complete())).status
    later = NOW + timedelta(minutes=1)
    degraded = compute_status(SPEC, observed(deployment=complete(ready=1), previous=first,
                                             now=later)).status
    assert cond(degraded, "Ready")["lastTransitionTime"] == "2026-11-23T01:01:00Z"
    assert cond(degraded, "Scheduled")["lastTransitionTime"] == "2026-11-23T01:00:00Z"


def test_waiting_for_deployment_is_pending() -> None:
    st = compute_status(SPEC, observed()).status
    assert st["phase"] == "Pending"
    assert cond(st, "Ready")["reason"] == "WaitingForDeployment"


def test_insufficient_gpu_reaches_reason_column() -> None:
    cap = Capacity(fits=False, wanted=2, room=1, reason="InsufficientGPU",
                   message="needs 2 replica(s) x 8 nvidia.com/gpu ...",
                   summary="InsufficientGPU: needs 2x8 gpu, 8 free on H100-80GB-HBM3")
    st = compute_status(SPEC, observed(deployment=complete(ready=0), capacity=cap)).status
    assert st["phase"] == "Pending"
    assert st["reason"] == "InsufficientGPU: needs 2x8 gpu, 8 free on H100-80GB-HBM3"
    assert cond(st, "Scheduled") | {"lastTransitionTime": None} == {
        "type": "Scheduled", "status": "False", "reason": "InsufficientGPU",
        "message": cap.message, "lastTransitionTime": None, "observedGeneration": 3}


def test_scheduler_message_reaches_status() -> None:
    msg = "0/7 nodes are available: 5 Insufficient nvidia.com/gpu, 2 node(s) had untolerated taint"
    pods = [PodInfo(name="m-1", unschedulable_message=msg)]
    st = compute_status(SPEC, observed(deployment=complete(ready=0), pods=pods)).status
    assert cond(st, "Ready")["reason"] == "Unschedulable"
    assert msg in cond(st, "Ready")["message"] and st["reason"].startswith("Unschedulable: 1 pod")


def test_crashloop_is_degraded_with_the_exit() -> None:
    raw = {"metadata": {"name": "m-1"}, "spec": {"nodeName": "cpu-0"},
           "status": {"phase": "Running", "containerStatuses": [{
               "name": "runtime", "ready": False, "restartCount": 3,
               "lastState": {"terminated": {"exitCode": 1, "reason": "Error",
                                            "message": "model server exited with status 1"}},
               "state": {"waiting": {"reason": "CrashLoopBackOff",
                                     "message": "back-off 40s restarting failed container"}}}]}}
    st = compute_status(SPEC, observed(deployment=complete(ready=1),
                                       pods=[pod_info(raw)])).status
    assert st["phase"] == "Degraded"
    ready = cond(st, "Ready")
    assert ready["reason"] == "CrashLoopBackOff"
    assert "Error (exit 1): model server exited with status 1" in ready["message"]
    assert [e.type for e in compute_status(SPEC, observed(
        deployment=complete(ready=1), pods=[pod_info(raw)])).events] == ["Warning"]


def test_image_pull_error() -> None:
    raw = {"metadata": {"name": "m-1"}, "spec": {"nodeName": "cpu-0"},
           "status": {"phase": "Pending", "containerStatuses": [{
               "name": "runtime", "ready": False,
               "state": {"waiting": {"reason": "ImagePullBackOff",
                                     "message": 'Back-off pulling image "nope:1"'}}}]}}
    st = compute_status(SPEC, observed(deployment=complete(ready=0),
                                       pods=[pod_info(raw)])).status
    assert cond(st, "Ready")["reason"] == "ImagePullBackOff"
    assert 'Back-off pulling image "nope:1"' in st["reason"]


def test_not_ready_only_after_grace() -> None:
    started = (NOW - timedelta(seconds=30)).isoformat().replace("+00:00", "Z")
    raw = {"metadata": {"name": "m-1"}, "spec": {"nodeName": "cpu-0"},
           "status": {"phase": "Running",
                      "conditions": [{"type": "Ready", "status": "False",
                                      "message": "containers with unready status: [runtime]"}],
                      "containerStatuses": [{"name": "runtime", "ready": False, "started": True,
                                             "state": {"running": {"startedAt": started}}}]}}
    pods = [pod_info(raw)]
    early = compute_status(SPEC, observed(deployment=complete(ready=0), pods=pods,
                                          not_ready_grace_s=60)).status
    assert cond(early, "Ready")["reason"] == "Loading" and early["phase"] == "Pending"
    late = compute_status(SPEC, observed(deployment=complete(ready=0), pods=pods,
                                         not_ready_grace_s=10)).status
    assert cond(late, "Ready")["reason"] == "NotReady" and late["phase"] == "Degraded"
    assert "/v2/health/ready" in cond(late, "Ready")["message"]


def test_rolling_out_is_progressing() -> None:
    dep = DeploymentInfo(generation=5, observed_generation=5, spec_replicas=2, revision="rev1",
                         replicas=3, ready_replicas=2, updated_replicas=1, available_replicas=2)
    st = compute_status(SPEC, observed(deployment=dep, desired_revision="rev2")).status
    assert st["phase"] == "Progressing"
    assert cond(st, "RolloutComplete")["reason"] == "RollingOut"
    assert st["updateRevision"] == "rev2"


def test_scaled_to_zero() -> None:
    spec = parse_spec({"model": {"uri": "s3://b/m.onnx", "format": "onnx"},
                       "runtime": {"image": "img"}, "replicas": 0})
    st = compute_status(spec, observed(deployment=complete(ready=0, replicas=0))).status
    assert st["phase"] == "Pending" and cond(st, "Ready")["reason"] == "ScaledToZero"


def test_autoscaler_decides_desired() -> None:
    spec = parse_spec({"model": {"uri": "s3://b/m.onnx", "format": "onnx"},
                       "runtime": {"image": "img", "resources": {"cpu": "1"}},
                       "autoscaling": {"minReplicas": 2, "maxReplicas": 8}})
    st = compute_status(spec, observed(deployment=complete(ready=5, replicas=5))).status
    assert st["desiredReplicas"] == 5 and st["phase"] == "Ready"


def test_failed_status() -> None:
    result = failed_status(Failure("TemplateNotFound", "template 'x' not found"), observed())
    st = result.status
    assert st["phase"] == "Failed"
    assert cond(st, "Ready") | {"lastTransitionTime": None} == {
        "type": "Ready", "status": "False", "reason": "TemplateNotFound",
        "message": "template 'x' not found", "lastTransitionTime": None,
        "observedGeneration": 3}
    assert result.events[0].type == "Warning"


def test_a_wait_while_replicas_serve_is_degraded_with_its_url() -> None:
    """The cache a serving model mounts is being deleted (CacheDeleting), or went back to
    Downloading: its pods still answer, so Degraded with its URL, not Pending without one."""
    url = "http://m.ns.svc.cluster.local:8080"
    waiting = Failure("CacheDeleting", "ModelCache c is being deleted", phase="Pending")
    st = failed_status(waiting, observed(url=None, deployment=complete(ready=1),
                                         previous={"url": url})).status
    assert (st["phase"], st["url"]) == ("Degraded", url), st
    assert cond(st, "Ready")["reason"] == "CacheDeleting"
    # its replicas answer: Available, not 'False, not attempted' (seen with a Refused child)
    assert (cond(st, "Available")["status"], cond(st, "Available")["message"]) == (
        "True", "1/2 replicas ready"), st
    idle = failed_status(waiting, observed(url=None, previous={"url": url})).status
    assert idle["phase"] == "Pending" and "url" not in idle
    # a spec to fix stays Failed, serving or not (test_operator's template case)
    wrong = Failure("TemplateNotFound", "template 'nope' not found")
    st = failed_status(wrong, observed(url=None, deployment=complete(ready=1))).status
    assert st["phase"] == "Failed"


def test_deployment_info_reads_failures() -> None:
    info = deployment_info({"metadata": {"generation": 2}, "spec": {"replicas": 1},
                            "status": {"observedGeneration": 2, "conditions": [
                                {"type": "ReplicaFailure", "status": "True",
                                 "message": 'pods "m-1" is forbidden: no PriorityClass "x"'}]}})
    assert "PriorityClass" in info.replica_failure
    st = compute_status(SPEC, observed(deployment=info)).status
    assert cond(st, "Ready")["reason"] == "FailedCreate"


def test_autoscaling_is_not_ready_below_min_replicas() -> None:
    # A new Deployment starts at the API server's default of 1 before the floor is applied:
    # desired is minReplicas, not what the Deployment says, and 1 ready replica is not Ready.
    spec = parse_spec({"model": {"uri": "s3://b/m.onnx", "format": "onnx"},
                       "runtime": {"image": "img", "resources": {"cpu": "1"}},
                       "autoscaling": {"minReplicas": 2, "maxReplicas": 8}})
    st = compute_status(spec, observed(deployment=complete(ready=1, replicas=1))).status
    assert st["desiredReplicas"] == 2 and st["replicaSummary"] == "1/2"
    assert st["phase"] == "Progressing" and cond(st, "Ready")["status"] == "False"


def test_ready_does_not_wait_for_the_settle_window() -> None:
    # Every pod Ready but not yet available (minReadySeconds): a model that is not rolling
    # anything out is Ready; the settle window guards rollouts, not the first start.
    dep = DeploymentInfo(generation=4, observed_generation=4, spec_replicas=2, revision="rev1",
                         replicas=2, ready_replicas=2, updated_replicas=2, available_replicas=0)
    st = compute_status(SPEC, observed(deployment=dep)).status
    assert st["phase"] == "Ready"
    # ... while old pods still run beside new ones it is rolling out.
    dep = DeploymentInfo(generation=4, observed_generation=4, spec_replicas=2, revision="rev1",
                         replicas=4, ready_replicas=4, updated_replicas=2, available_replicas=2)
    st = compute_status(SPEC, observed(deployment=dep)).status
    assert cond(st, "RolloutComplete")["reason"] == "RollingOut"


@pytest.mark.parametrize(("reason", "summary", "message"), [
    ("GPURequestTooLarge", "GPURequestTooLarge: needs 9 gpu per replica, the largest node has 8 "
     "(gpu-h100-1)", "one replica needs 9 nvidia.com/gpu on one node, but ..."),
    ("UnknownGPUProduct", "UnknownGPUProduct: no node offers NVIDIA-B200; nodes offer "
     "H100-80GB-HBM3", "no node offers NVIDIA-B200 (label nvidia.com/gpu.product); ..."),
])
def test_gpu_requests_that_can_never_fit_are_failed(reason: str, summary: str,
                                                    message: str) -> None:
    cap = Capacity(fits=False, wanted=2, room=0, reason=reason, message=message, summary=summary)
    pending = [PodInfo(name="m-1", unschedulable_message="0/7 nodes are available: ...")]
    st = compute_status(SPEC, observed(deployment=complete(ready=0), capacity=cap,
                                       pods=pending)).status
    assert st["phase"] == "Failed" and st["reason"] == summary
    assert cond(st, "Ready")["reason"] == reason and cond(st, "Ready")["message"] == message
    # "not now" stays Pending: waiting for capacity may help.
    cap = Capacity(fits=False, wanted=2, room=0, reason="InsufficientGPU", message="needs ...",
                   summary="InsufficientGPU: needs 2x1 gpu, 0 free on H100-80GB-HBM3")
    st = compute_status(SPEC, observed(deployment=complete(ready=0), capacity=cap)).status
    assert st["phase"] == "Pending"
    assert st["reason"] == "InsufficientGPU: needs 2x1 gpu, 0 free on H100-80GB-HBM3"


@pytest.mark.parametrize(("failure", "reason", "words"), [
    ('pods "m-7d9f-" is forbidden: no PriorityClass with name gold was found',
     "PriorityClassNotFound", "PriorityClass gold does not exist"),
    ('pods "m-7d9f-" is forbidden: error looking up service account ns/model-sa: '
     'serviceaccount "model-sa" not found', "ServiceAccountNotFound",
     "ServiceAccount model-sa (named by the pod template) does not exist"),
])
def test_missing_priority_class_or_service_account_is_failed(failure: str, reason: str,
                                                             words: str) -> None:
    dep = DeploymentInfo(generation=2, observed_generation=2, spec_replicas=2, revision="rev1",
                         replica_failure=failure)
    st = compute_status(SPEC, observed(deployment=dep)).status
    ready = cond(st, "Ready")
    assert st["phase"] == "Failed" and ready["reason"] == reason
    assert words in ready["message"] and failure in ready["message"]
    assert st["reason"].startswith(f"{reason}: {words}")
    assert create_failure("exceeded quota: compute-resources")[0] == "FailedCreate"
    # A replica that still serves (the PriorityClass was deleted later) makes it Degraded.
    dep = DeploymentInfo(generation=2, observed_generation=2, spec_replicas=2, revision="rev1",
                         replicas=1, ready_replicas=1, updated_replicas=1, available_replicas=1,
                         replica_failure=failure)
    st = compute_status(SPEC, observed(deployment=dep)).status
    assert st["phase"] == "Degraded" and cond(st, "Ready")["reason"] == reason


def test_status_names_the_model_cache() -> None:
    """status.modelCache (the Cache column): while the model waits for it and once it serves."""
    waiting = failed_status(Failure("CacheNotReady", "ModelCache w is Downloading", "Pending"),
                            observed(model_cache="w")).status
    assert waiting["modelCache"] == "w" and waiting["phase"] == "Pending"
    serving = compute_status(SPEC, observed(deployment=complete(), model_cache="w")).status
    assert serving["modelCache"] == "w" and serving["phase"] == "Ready"
    assert "modelCache" not in compute_status(SPEC, observed(deployment=complete())).status
