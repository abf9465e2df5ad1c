"""PURE: the typed model of a ModelDeployment's status (what status.py computes and writes):
phase, replica and GPU summaries, conditions, and the rollout's revisions and canary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .fields import json_name

PHASES = ("Pending", "Progressing", "Ready", "Degraded", "Failed")
CONDITION_TYPES = ("Ready", "Scheduled", "Available", "RolloutComplete")


@dataclass(frozen=True)
class Condition:
    type: str = field(metadata=json_name("type"))
    status: Literal["True", "False", "Unknown"] = field(metadata=json_name("status"))
    reason: str = field(metadata=json_name("reason"), default="")
    message: str = field(metadata=json_name("message"), default="")
    last_transition_time: str | None = field(metadata=json_name("lastTransitionTime"), default=None)
    observed_generation: int | None = field(metadata=json_name("observedGeneration"), default=None)


@dataclass(frozen=True)
class RevisionRef:
    number: int = field(metadata=json_name("number"), default=0)
    hash: str = field(metadata=json_name("hash"), default="")


@dataclass(frozen=True)
class UpdateRevision:
    number: int = field(metadata=json_name("number"), default=0)
    hash: str = field(metadata=json_name("hash"), default="")
    started_at: str | None = field(metadata=json_name("startedAt"), default=None)
    progress_at: str | None = field(metadata=json_name("progressAt"), default=None)
    ready: int = field(metadata=json_name("ready"), default=0)
    idle_since: str | None = field(metadata=json_name("idleSince"), default=None)


@dataclass(frozen=True)
class FailedRevision:
    number: int = field(metadata=json_name("number"), default=0)
    hash: str = field(metadata=json_name("hash"), default="")
    message: str = field(metadata=json_name("message"), default="")


@dataclass(frozen=True)
class RevisionHistoryEntry:
    number: int = field(metadata=json_name("number"), default=0)
    hash: str = field(metadata=json_name("hash"), default="")
    outcome: str = field(metadata=json_name("outcome"), default="")
    message: str = field(metadata=json_name("message"), default="")
    time: str | None = field(metadata=json_name("time"), default=None)


@dataclass(frozen=True)
class CanaryStatus:
    hash: str = field(metadata=json_name("hash"), default="")
    step: int = field(metadata=json_name("step"), default=0)
    steps: int = field(metadata=json_name("steps"), default=0)
    weight: int = field(metadata=json_name("weight"), default=0)
    step_ready_at: str | None = field(metadata=json_name("stepReadyAt"), default=None)
    replicas: int = field(metadata=json_name("replicas"), default=0)
    canary_replicas: int = field(metadata=json_name("canaryReplicas"), default=0)
    stable_replicas: int = field(metadata=json_name("stableReplicas"), default=0)
    traffic_percent: int = field(metadata=json_name("trafficPercent"), default=0)
    traffic_split: str = field(metadata=json_name("trafficSplit"), default="ReadyReplicas")


@dataclass(frozen=True)
class QuotaRefusal:
    name: str = field(metadata=json_name("name"), default="")
    message: str = field(metadata=json_name("message"), default="")


@dataclass(frozen=True)
class RolloutStatus:
    strategy: str = field(metadata=json_name("strategy"), default="")
    reason: str = field(metadata=json_name("reason"), default="")
    message: str = field(metadata=json_name("message"), default="")
    current: RevisionRef | None = field(metadata=json_name("current"), default=None)
    previous: RevisionRef | None = field(metadata=json_name("previous"), default=None)
    update: UpdateRevision | None = field(metadata=json_name("update"), default=None)
    failed: FailedRevision | None = field(metadata=json_name("failed"), default=None)
    history: tuple[RevisionHistoryEntry, ...] = field(metadata=json_name("history"), default=())
    stable_spec: Mapping[str, Any] | None = field(metadata=json_name("stableSpec"), default=None)
    canary: CanaryStatus | None = field(metadata=json_name("canary"), default=None)
    quota: QuotaRefusal | None = field(metadata=json_name("quota"), default=None)


@dataclass(frozen=True)
class WakeOnRequestStatus:
    available: bool = field(metadata=json_name("available"), default=False)
    reason: str | None = field(metadata=json_name("reason"), default=None)
    message: str | None = field(metadata=json_name("message"), default=None)
    interceptor: str | None = field(metadata=json_name("interceptor"), default=None)
    host: str | None = field(metadata=json_name("host"), default=None)


@dataclass(frozen=True)
class AutoscalingStatus:
    engine: str = field(metadata=json_name("engine"), default="None")
    signal: str | None = field(metadata=json_name("signal"), default=None)
    reason: str | None = field(metadata=json_name("reason"), default=None)
    message: str | None = field(metadata=json_name("message"), default=None)
    wake_on_request: WakeOnRequestStatus | None = field(metadata=json_name("wakeOnRequest"),
                                                        default=None)


@dataclass(frozen=True)
class ModelDeploymentStatus:
    phase: str = field(metadata=json_name("phase"), default="Pending")
    observed_generation: int | None = field(metadata=json_name("observedGeneration"), default=None)
    replicas: int = field(metadata=json_name("replicas"), default=0)
    ready_replicas: int = field(metadata=json_name("readyReplicas"), default=0)
    desired_replicas: int = field(metadata=json_name("desiredReplicas"), default=0)
    selector: str | None = field(metadata=json_name("selector"), default=None)
    url: str | None = field(metadata=json_name("url"), default=None)
    current_revision: str | None = field(metadata=json_name("currentRevision"), default=None)
    update_revision: str | None = field(metadata=json_name("updateRevision"), default=None)
    reason: str = field(metadata=json_name("reason"), default="")
    replica_summary: str = field(metadata=json_name("replicaSummary"), default="")
    gpu_summary: str = field(metadata=json_name("gpuSummary"), default="")
    conditions: tuple[Condition, ...] = field(metadata=json_name("conditions"), default=())
    rollout: RolloutStatus | None = field(metadata=json_name("rollout"), default=None)
    optimization: Mapping[str, Any] | None = field(metadata=json_name("optimization"), default=None)
    autoscaling: AutoscalingStatus | None = field(metadata=json_name("autoscaling"), default=None)
    model_cache: str | None = field(metadata=json_name("modelCache"), default=None)
