"""PURE: what the operator observed -> the ModelDeployment's status, and the Events to post.

`compute_status` is a function of the spec, the observed children and pods, the capacity check
and the clock; it never accumulates. Ready aggregates Scheduled, Available and RolloutComplete;
the first reason that keeps the model from Ready becomes the Ready condition's reason, the phase
and the Reason column. lastTransitionTime moves only when a condition's status changes, and a
status equal to the previous one means nothing to write. The observations it reads (PodInfo,
DeploymentInfo) are parsed from the raw objects in observed.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import autoscaling_status, optimization_status, pod_life
from .api import ModelDeploymentSpec
from .observed import DeploymentInfo, PodInfo, create_failure, quota_refusal
from .scheduling import NEVER_FIT_REASONS, Capacity
from .timestamps import format_time, parse_time

_REASON_COLUMN_WIDTH = 120
# Reasons that nothing but a change (of the spec, or of what it names) will clear: phase Failed.
FAILED_REASONS = (*NEVER_FIT_REASONS, "PriorityClassNotFound", "ServiceAccountNotFound")


@dataclass(frozen=True)
class RolloutView:
    """What rollout.py decided, as far as the status is concerned."""

    status: Mapping[str, Any] = field(default_factory=dict)  # status.rollout
    blocked_reason: str = ""  # RolledBack | RolloutWaiting: the Ready condition says so
    blocked_message: str = ""
    strategy_reason: str = ""  # SurgeRollout | ReplaceRollout while a rollout runs
    strategy_message: str = ""


@dataclass(frozen=True)
class Observed:
    """Everything compute_status looks at besides the spec."""

    name: str
    namespace: str
    generation: int
    now: datetime
    previous: Mapping[str, Any] = field(default_factory=dict)  # the current .status
    desired_revision: str = ""
    deployment: DeploymentInfo | None = None
    pods: Sequence[PodInfo] = ()
    node_products: Mapping[str, str] = field(default_factory=dict)
    capacity: Capacity | None = None
    url: str | None = None
    selector: str | None = None
    not_ready_grace_s: float = 60.0
    rollout: RolloutView | None = None
    cache: pod_life.CacheProgress | None = None  # the model's ModelCache, when it names one
    autoscaling: Mapping[str, Any] | None = None  # status.autoscaling (render/autoscaler.py)
    # status.modelCache: the ModelCache the pods mount (named, or the one autoCache found)
    model_cache: str | None = None


@dataclass(frozen=True)
class Failure:
    """The spec cannot be served: phase Failed with a condition that says what to fix."""

    reason: str  # InvalidSpec, TemplateNotFound, TemplateError, Rejected
    message: str
    phase: str = "Failed"  # Pending: waiting, not wrong (CacheNotReady)
    retry_after: float | None = None  # a failure that passes: look again after this (seconds)


@dataclass(frozen=True)
class Event:
    type: str  # Normal | Warning
    reason: str
    message: str


@dataclass(frozen=True)
class StatusResult:
    status: dict[str, Any]
    events: list[Event]
    changed: bool


@dataclass
class _Cond:
    type: str
    status: str
    reason: str
    message: str




def plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _pod_problem(pods: Sequence[PodInfo], now: datetime,
                 grace: float) -> tuple[str, str] | None:
    """The most telling failure among the pods: (reason, message) or None."""
    live = [p for p in pods if not p.terminating]
    for p in live:
        if p.waiting_reason in ("ErrImagePull", "ImagePullBackOff", "InvalidImageName"):
            return p.waiting_reason, f"pod {p.name}: {p.waiting_message or p.waiting_reason}"
    for p in live:
        if p.waiting_reason in ("CreateContainerConfigError", "CreateContainerError",
                                "RunContainerError"):
            return p.waiting_reason, f"pod {p.name}: {p.waiting_message or p.waiting_reason}"
    oom = pod_life.oom_problem(live)  # a crash loop or a failed pod, told for what it is
    if oom is not None:
        return oom
    for p in live:
        if p.waiting_reason == "CrashLoopBackOff":
            last = f"; last exit: {p.last_terminated}" if p.last_terminated else ""
            return "CrashLoopBackOff", (f"pod {p.name}: the runtime keeps crashing "
                                        f"({p.waiting_message or 'back-off'}){last}")
    for p in live:
        if p.phase == "Failed":
            last = f": {p.last_terminated}" if p.last_terminated else ""
            return "ContainerFailed", f"pod {p.name} failed{last}"
    stuck = []
    for p in live:
        if p.phase == "Running" and not p.ready and p.running_since and not p.starting:
            since = parse_time(p.running_since)
            if since is not None and (now - since).total_seconds() >= grace:
                stuck.append(p)
    if stuck:
        p = stuck[0]
        detail = f" ({p.not_ready_message})" if p.not_ready_message else ""
        return "NotReady", (f"{plural(len(stuck), 'pod')} running for over {grace:.0f}s but "
                            f"not Ready: the readiness probe GET /v2/health/ready keeps failing; "
                            f"is the model loading or failing to load? e.g. pod {p.name}{detail}")
    return None


def _desired(spec: ModelDeploymentSpec, dep: DeploymentInfo | None) -> int:
    """The replicas the model must have Ready: the spec's, or with autoscaling what the
    autoscaler asks for but never fewer than minReplicas (the floor the model starts at)."""
    if spec.autoscaling is not None and dep is not None and dep.spec_replicas is not None:
        return max(spec.autoscaling.min_replicas, dep.spec_replicas)
    return spec.desired_replicas


def _wakes(autoscaling: Mapping[str, Any] | None) -> str:
    """What else wakes a model at zero: a request through KEDA's HTTP interceptor (render/wake.py),
    when the add-on is there."""
    wake = (autoscaling or {}).get("wakeOnRequest") or {}
    if not wake.get("available"):
        return ""
    return f" or on a request to {wake.get('interceptor')} with Host {wake.get('host')}"


def _replacing_under_quota(o: Observed) -> bool:
    """A replacement the namespace's ResourceQuota made (rollout_strategy, reason
    QuotaExceeded): the ReplicaSet's pod for a replaced one is refused until the quota
    controller has counted the old one gone, a moment later. Expected, and said by the
    rollout's message: not a failure to schedule (the model flipped to Degraded and back)."""
    ro = o.rollout.status if o.rollout is not None else {}
    return (ro.get("strategy") == "Replace" and ro.get("reason") == "QuotaExceeded"
            and o.deployment is not None
            and quota_refusal(o.deployment.replica_failure) is not None)


def _scheduled(o: Observed, live: list[PodInfo], desired: int) -> _Cond:
    dep = o.deployment
    unschedulable = [p for p in live if p.unschedulable_message]
    if o.capacity is not None and not o.capacity.fits:
        return _Cond("Scheduled", "False", o.capacity.reason, o.capacity.message)
    if unschedulable:
        return _Cond("Scheduled", "False", "Unschedulable",
                     f"{plural(len(unschedulable), 'pod')} cannot be scheduled: "
                     f"{unschedulable[0].unschedulable_message}")
    if dep is not None and dep.replica_failure and not _replacing_under_quota(o):
        return _Cond("Scheduled", "False", *create_failure(dep.replica_failure))
    if dep is None:
        return _Cond("Scheduled", "Unknown", "WaitingForDeployment",
                     "the runtime Deployment has not been observed yet")
    placed = len([p for p in live if p.node])
    return _Cond("Scheduled", "True", "Scheduled",
                 f"{placed} of {desired} replica(s) placed on nodes")


def _available(spec: ModelDeploymentSpec, o: Observed, desired: int,
               problem: tuple[str, str] | None) -> _Cond:
    dep = o.deployment
    ready = dep.ready_replicas if dep else 0
    if desired == 0 and spec.autoscaling is not None:
        return _Cond("Available", "False", "ScaledToZero",
                     f"idle at 0 replicas; scales out when its {spec.autoscaling.signal} "
                     f"signal rises{_wakes(o.autoscaling)} (autoscaling minReplicas 0)")
    if desired == 0:
        return _Cond("Available", "False", "ScaledToZero", "replicas is 0")
    if ready >= desired:
        return _Cond("Available", "True", "MinimumReplicasReady",
                     f"{ready}/{desired} replicas ready")
    if problem is not None:
        return _Cond("Available", "False", problem[0],
                     f"{ready}/{desired} replicas ready; {problem[1]}")
    life = pod_life.life_reason(o.pods, o.cache)
    if life is not None:
        return _Cond("Available", "False", life[0],
                     f"{ready}/{desired} replicas ready; {life[1]}")
    if dep is None:
        return _Cond("Available", "False", "WaitingForDeployment",
                     "the runtime Deployment has not been observed yet")
    return _Cond("Available", "False", "PodsNotReady",
                 f"{ready}/{desired} replicas ready; waiting for the runtime to load the "
                 "model and pass its readiness probe")


def _rollout_complete(o: Observed, desired: int) -> _Cond:
    dep = o.deployment
    if dep is None:
        return _Cond("RolloutComplete", "Unknown", "WaitingForDeployment",
                     "the runtime Deployment has not been observed yet")
    if dep.progress_deadline_exceeded:
        return _Cond("RolloutComplete", "False", "ProgressDeadlineExceeded",
                     dep.progress_deadline_exceeded)
    if o.rollout is not None and o.rollout.strategy_reason:
        return _Cond("RolloutComplete", "False", o.rollout.strategy_reason,
                     o.rollout.strategy_message)
    if (dep.observed_generation < dep.generation or dep.revision != o.desired_revision
            or dep.updated_replicas < desired or dep.replicas > dep.updated_replicas
            or dep.ready_replicas < desired):
        # Ready, not available: a new pod counts as available only after the settle window
        # (minReadySeconds), which guards the replicas a rollout removes; old pods are still
        # counted above until the Deployment controller let them go.
        progress = (f"{dep.updated_replicas}/{desired} replicas updated, "
                    f"{dep.available_replicas} available, "
                    f"{max(0, dep.replicas - dep.updated_replicas)} old")
        return _Cond("RolloutComplete", "False", "RollingOut",
                     f"revision {o.desired_revision}: {progress}")
    return _Cond("RolloutComplete", "True", "RolloutComplete",
                 f"revision {o.desired_revision} runs on {plural(desired, 'replica')}")


def _conditions(spec: ModelDeploymentSpec, o: Observed) -> tuple[list[_Cond], str, int]:
    desired = _desired(spec, o.deployment)
    live = [p for p in o.pods if not p.terminating]
    problem = _pod_problem(o.pods, o.now, o.not_ready_grace_s)
    return ([_scheduled(o, live, desired), _available(spec, o, desired, problem),
             _rollout_complete(o, desired)], ("problem" if problem else ""), desired)


def _merge(prev: Mapping[str, Any], cond: _Cond, now: datetime,
           generation: int) -> dict[str, Any]:
    prev_time = prev.get("lastTransitionTime") if prev.get("status") == cond.status else None
    return {"type": cond.type, "status": cond.status, "reason": cond.reason,
            "message": cond.message, "lastTransitionTime": prev_time or format_time(now),
            "observedGeneration": generation}


def _short(reason: str, message: str) -> str:
    """The one-line Reason column (a YAML error's message spans lines: joined)."""
    text = " ".join((f"{reason}: {message}" if message else reason).split())
    if len(text) > _REASON_COLUMN_WIDTH:
        text = text[: _REASON_COLUMN_WIDTH - 1] + "…"
    return text


ROLLING_REASONS = ("RollingOut", "SurgeRollout", "ReplaceRollout", "CanaryRollout")
# Replicas on their way: a rollout's own reason tells more while one runs.
ON_THE_WAY = ("PodsNotReady", pod_life.DOWNLOADING, pod_life.LOADING, pod_life.CREATING)
_NORMAL_REASONS = ("Ready", "WaitingForDeployment", *ON_THE_WAY, "ScaledToZero",
                   "Scheduled", "MinimumReplicasReady", "RolloutComplete", *ROLLING_REASONS)


def _events(prev: Mapping[str, Any], new: Mapping[str, Any]) -> list[Event]:
    """One Event per transition: the phase or Ready changed, or a new failure reason appeared."""
    def ready_of(status: Mapping[str, Any]) -> tuple[str, str]:
        for c in status.get("conditions") or []:
            if c.get("type") == "Ready":
                return c.get("status", ""), c.get("reason", "")
        return "", ""

    (before_status, before_reason), (after_status, after_reason) = ready_of(prev), ready_of(new)
    warning = after_reason not in _NORMAL_REASONS
    if (prev.get("phase") == new.get("phase") and before_status == after_status
            and (before_reason == after_reason or not warning)):
        return []
    ready = next(c for c in new["conditions"] if c["type"] == "Ready")
    return [Event("Warning" if warning else "Normal", ready["reason"],
                  f"{prev.get('phase') or 'New'} -> {new['phase']}: {ready['message']}")]


def _finish(o: Observed, status: dict[str, Any]) -> StatusResult:
    prev = dict(o.previous)
    changed = _comparable(prev) != _comparable(status)
    events = _events(prev, status) if changed else []
    if changed:
        events += [Event(*e) for e in optimization_status.events(prev.get("optimization"),
                                                                 status.get("optimization"))]
        events += [Event(*e) for e in autoscaling_status.events(prev.get("autoscaling"),
                                                                status.get("autoscaling"))]
    return StatusResult(status=status if changed else prev, events=events, changed=changed)


def _comparable(status: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if v is not None}


def failed_status(failure: Failure, o: Observed, gpu: str = "-") -> StatusResult:
    """phase Failed (or Pending for a wait such as CacheNotReady): the spec must change, or
    the wait end, before the operator can serve it; a wait is Degraded while replicas serve."""
    prev_conds = {c.get("type"): c for c in o.previous.get("conditions") or []}
    why = ("not attempted: the spec is invalid" if failure.phase == "Failed"
           else f"not attempted: {failure.reason} (see Ready)")
    dep = o.deployment
    # A wait (the cache is being deleted, or went back to Downloading) while replicas still
    # serve: Degraded, and the URL they answer on stays. A spec to fix stays Failed.
    serving = failure.phase == "Pending" and dep is not None and dep.ready_replicas > 0
    conds = [_Cond("Ready", "False", failure.reason, failure.message),
             _Cond("Scheduled", "Unknown", failure.reason, why),
             _Cond("Available", "True", "MinimumReplicasReady",
                   f"{dep.ready_replicas}/{dep.replicas} replicas ready") if serving and dep
             else _Cond("Available", "False", failure.reason, why),
             _Cond("RolloutComplete", "Unknown", failure.reason, why)]
    status: dict[str, Any] = {
        "phase": "Degraded" if serving else failure.phase, "observedGeneration": o.generation,
        "replicas": dep.replicas if dep else 0,
        "readyReplicas": dep.ready_replicas if dep else 0,
        "desiredReplicas": 0,
        "selector": o.selector, "url": o.url or (o.previous.get("url") if serving else None),
        "currentRevision": o.previous.get("currentRevision"),
        "updateRevision": o.previous.get("updateRevision"),
        "reason": _short(failure.reason, failure.message),
        "replicaSummary": f"{dep.ready_replicas if dep else 0}/-",
        "gpuSummary": gpu,
        "conditions": [_merge(prev_conds.get(c.type, {}), c, o.now, o.generation)
                       for c in conds],
        "rollout": o.previous.get("rollout"),
        "modelCache": o.model_cache,
    }
    return _finish(o, {k: v for k, v in status.items() if v is not None})


def _ready_and_phase(o: Observed, conds: list[_Cond], problem: bool, desired: int,
                     ready_n: int) -> tuple[_Cond, str]:
    """The Ready condition (the first condition that blocks, in words) and the phase."""
    scheduled, available, rollout = conds
    view = o.rollout
    if view is not None and view.blocked_reason:
        # The spec's revision is not what runs: rolled back, or waiting for room to roll out.
        ready = _Cond("Ready", "False", view.blocked_reason, view.blocked_message)
        if view.blocked_reason == "RolledBack" or problem:
            return ready, "Degraded"
        return ready, "Progressing" if ready_n > 0 else "Pending"
    if all(c.status == "True" for c in conds):
        return _Cond("Ready", "True", "Ready",
                     f"{ready_n}/{desired} replicas serve revision {o.desired_revision} at "
                     f"{o.url}"), "Ready"
    blocking = next(
        (c for c in (scheduled, available, rollout)
         if c.status == "False" and c.reason not in (*ROLLING_REASONS, *ON_THE_WAY)),
        None) or (rollout if rollout.reason in ROLLING_REASONS[1:] else None) or next(
        c for c in (scheduled, available, rollout) if c.status != "True")
    ready = _Cond("Ready", "False", blocking.reason, blocking.message)
    if scheduled.status == "False" and scheduled.reason in FAILED_REASONS:
        # Waiting will not help: the message says what to change. Replicas that still
        # serve (a pod lost later cannot be recreated) make it Degraded instead.
        return ready, "Degraded" if ready_n > 0 else "Failed"
    if desired == 0:
        return ready, "Pending"
    if problem or scheduled.status == "False" or rollout.reason == "ProgressDeadlineExceeded":
        return ready, "Degraded" if (problem or ready_n > 0) else "Pending"
    return ready, "Progressing" if ready_n > 0 else "Pending"


def compute_status(spec: ModelDeploymentSpec, o: Observed, gpu: str = "-") -> StatusResult:
    conds, problem, desired = _conditions(spec, o)
    rollout = conds[2]
    dep = o.deployment
    ready_n = dep.ready_replicas if dep else 0
    view = o.rollout
    ready, phase = _ready_and_phase(o, conds, bool(problem), desired, ready_n)

    prev_conds = {c.get("type"): c for c in o.previous.get("conditions") or []}
    current_revision = o.previous.get("currentRevision")
    if rollout.status == "True" and dep is not None:
        current_revision = dep.revision
    status: dict[str, Any] = {
        "phase": phase,
        "observedGeneration": o.generation,
        "replicas": dep.replicas if dep else 0,
        "readyReplicas": ready_n,
        "desiredReplicas": desired,
        "selector": o.selector,
        "url": o.url,
        "currentRevision": current_revision,
        "updateRevision": o.desired_revision or None,
        "reason": _short(ready.reason, "" if ready.status == "True" else (
            o.capacity.summary.removeprefix(f"{ready.reason}: ")
            if o.capacity and o.capacity.reason and ready.reason == o.capacity.reason
            else ready.message)),
        "replicaSummary": f"{ready_n}/{desired}",
        "gpuSummary": gpu,
        "conditions": [_merge(prev_conds.get(c.type, {}), c, o.now, o.generation)
                       for c in (ready, *conds)],
        "rollout": dict(view.status) if view is not None and view.status else
        o.previous.get("rollout"),
        "optimization": optimization_status.status_of(
            [(p.name, p.revision, p.optimization_report) for p in o.pods if not p.terminating],
            o.desired_revision) or o.previous.get("optimization")
        if spec.model.optimize is not None else None,
        "autoscaling": dict(o.autoscaling) if o.autoscaling else None,
        "modelCache": o.model_cache,
    }
    return _finish(o, {k: v for k, v in status.items() if v is not None})
