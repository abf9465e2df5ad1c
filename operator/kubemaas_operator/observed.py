"""PURE: the observed state the status and the rollout read, parsed from raw API objects: a
runtime pod (PodInfo: why it fails, waits or is not Ready, its stage), the model's Deployment
(DeploymentInfo) and what a ReplicaFailure message means (create_failure). Built from the
operator's indexes; no I/O."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import optimization_status, pod_life

FAILING_WAIT_REASONS = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName",
                        "CreateContainerConfigError", "CreateContainerError",
                        "CrashLoopBackOff", "RunContainerError")
# The ReplicaSet cannot create pods until something named in the spec (or the template) exists.
_NO_PRIORITY_CLASS = re.compile(r"no PriorityClass with name (\S+) was found")
_NO_SERVICE_ACCOUNT = re.compile(r"serviceaccount \"([^\"]+)\" not found")
# The namespace's ResourceQuota has no room for another pod (a surge pod, say).
_EXCEEDED_QUOTA = re.compile(r"exceeded quota: ([^,\s]+)")


def quota_refusal(message: str) -> tuple[str, str] | None:
    """(the ResourceQuota's name, the API server's words) when a ReplicaFailure message says a
    namespace quota refused the pod, else None."""
    found = _EXCEEDED_QUOTA.search(message)
    if not found:
        return None
    start = message.find("forbidden")  # without the pod's name: the words stay the same
    return found.group(1), message[start if start >= 0 else found.start():].strip()


def create_failure(message: str) -> tuple[str, str]:
    """The Deployment's ReplicaFailure message -> (reason, message saying what to fix).

    A PriorityClass or ServiceAccount that does not exist is PriorityClassNotFound or
    ServiceAccountNotFound (the pods cannot be created until it does); anything else (a quota,
    for example) stays FailedCreate with the API server's words."""
    found = _NO_PRIORITY_CLASS.search(message)
    if found:
        return "PriorityClassNotFound", (
            f"PriorityClass {found.group(1)} does not exist, so no pod can be created: create it "
            "(kubectl get priorityclass lists those that exist) or change "
            f"spec.scheduling.priorityClassName; the API server said: {message}")
    found = _NO_SERVICE_ACCOUNT.search(message)
    if found:
        return "ServiceAccountNotFound", (
            f"ServiceAccount {found.group(1)} (named by the pod template) does not exist in the "
            "model's namespace, so no pod can be created: create it, or pick a template "
            f"(spec.runtime.template) that names one that exists; the API server said: {message}")
    return "FailedCreate", message


@dataclass(frozen=True)
class PodInfo:
    name: str
    phase: str = "Pending"
    node: str = ""
    ready: bool = False
    terminating: bool = False
    revision: str = ""
    track: str = "main"  # main (the stable Deployment) or canary
    unschedulable_message: str = ""  # PodScheduled=False, reason Unschedulable
    waiting_reason: str = ""  # a failing container's waiting reason (see FAILING_WAIT_REASONS)
    waiting_message: str = ""
    last_terminated: str = ""  # "Error (exit 1): message" of the last crash
    running_since: str = ""  # when its containers started running (not ready)
    not_ready_message: str = ""
    optimization_report: str = ""  # the optimize init container's termination message
    stage: str = ""  # Downloading | Loading | "" (pod_life.py)
    out_of_gpu_memory: str = ""  # the termination message line that says so (pod_life.py)
    starting: bool = False  # its startup probe has not passed yet (pod_life.py)


@dataclass(frozen=True)
class DeploymentInfo:
    generation: int = 0
    observed_generation: int = 0
    spec_replicas: int | None = None
    revision: str = ""
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    available_replicas: int = 0
    progress_deadline_exceeded: str = ""
    replica_failure: str = ""


def _ts(obj: Mapping[str, Any], *keys: str) -> Any:
    cur: Any = obj
    for key in keys:
        if not isinstance(cur, Mapping):
            return None
        cur = cur.get(key)
    return cur


def pod_info(pod: Mapping[str, Any]) -> PodInfo:
    """Summarize a raw Pod for the status (what made it fail, or wait, or not be Ready)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    sched = conditions.get("PodScheduled") or {}
    unschedulable = ""
    if sched.get("status") == "False" and sched.get("reason") == "Unschedulable":
        unschedulable = sched.get("message") or "the scheduler found no node"
    ready_cond = conditions.get("Ready") or {}
    waiting_reason = waiting_message = last_terminated = running_since = ""
    statuses = [*(status.get("initContainerStatuses") or []),
                *(status.get("containerStatuses") or [])]
    for cs in statuses:
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in FAILING_WAIT_REASONS and not waiting_reason:
            waiting_reason = waiting["reason"]
            waiting_message = waiting.get("message") or ""
        term = _ts(cs, "lastState", "terminated") or _ts(cs, "state", "terminated")
        if term and not last_terminated and term.get("exitCode", 0) != 0:
            last_terminated = (f"{term.get('reason') or 'Error'} (exit {term.get('exitCode')})"
                               + (f": {term['message']}" if term.get("message") else ""))
        running = state.get("running") or {}
        if running and not cs.get("ready") and not running_since:
            running_since = running.get("startedAt") or ""
    annotations = meta.get("annotations") or {}
    return PodInfo(
        name=meta.get("name", ""), phase=status.get("phase") or "Pending",
        node=(pod.get("spec") or {}).get("nodeName") or "",
        ready=ready_cond.get("status") == "True",
        terminating=bool(meta.get("deletionTimestamp")),
        revision=(meta.get("labels") or {}).get("serving.kubemaas.io/revision")
        or annotations.get("serving.kubemaas.io/revision", ""),
        track=(meta.get("labels") or {}).get("serving.kubemaas.io/track") or "main",
        unschedulable_message=unschedulable, waiting_reason=waiting_reason,
        waiting_message=waiting_message, last_terminated=last_terminated,
        running_since=running_since,
        not_ready_message=ready_cond.get("message") or "",
        optimization_report=optimization_status.report_of_pod(pod),
        stage=pod_life.stage(pod), out_of_gpu_memory=pod_life.out_of_gpu_memory(pod),
        starting=pod_life.starting(pod))


def deployment_info(dep: Mapping[str, Any]) -> DeploymentInfo:
    meta = dep.get("metadata") or {}
    spec = dep.get("spec") or {}
    status = dep.get("status") or {}
    deadline = failure = ""
    for c in status.get("conditions") or []:
        if c.get("type") == "Progressing" and c.get("reason") == "ProgressDeadlineExceeded":
            deadline = c.get("message") or "the rollout made no progress"
        if c.get("type") == "ReplicaFailure" and c.get("status") == "True":
            failure = c.get("message") or c.get("reason") or "pods could not be created"
    return DeploymentInfo(
        generation=meta.get("generation") or 0,
        observed_generation=status.get("observedGeneration") or 0,
        spec_replicas=spec.get("replicas"),
        revision=(meta.get("annotations") or {}).get("serving.kubemaas.io/revision", ""),
        replicas=status.get("replicas") or 0, ready_replicas=status.get("readyReplicas") or 0,
        updated_replicas=status.get("updatedReplicas") or 0,
        available_replicas=status.get("availableReplicas") or 0,
        progress_deadline_exceeded=deadline, replica_failure=failure)


def spec_digest(dep: Mapping[str, Any]) -> str:
    """A digest of a Deployment's spec (what its status describes)."""
    text = json.dumps(dep.get("spec") or {}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def settled_deployment_info(dep: Mapping[str, Any],
                            settled: str | None) -> tuple[DeploymentInfo, str | None]:
    """The Deployment's info, and the digest of the spec its status is known to describe (to
    pass back as `settled` next time), or None when that is not known.

    A Deployment's generation moves when its annotations change, not only its spec (the API
    server's deployment strategy): someone annotating a settled Deployment made its status look
    stale until the controller caught up, and the model went Ready -> Progressing -> Ready (two
    status writes and two Events each time). When the spec is the one `settled` says the status
    described, the status still describes it: the generation gap is taken as closed."""
    info = deployment_info(dep)
    digest = spec_digest(dep)
    if info.observed_generation >= info.generation:
        return info, digest
    if settled == digest:
        return dataclasses.replace(info, observed_generation=info.generation), settled
    return info, None
