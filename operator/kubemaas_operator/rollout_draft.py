"""PURE: what rollout.plan() decides, as it decides it (`Draft`: the status.rollout records
and the Plan's fields, moved on by each branch of plan()), and the `Plan` it ends with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from .canary import Target
from .gpu_ratio import ONE, GpuRatio
from .observed import PodInfo
from .rollout_strategy import Strategy
from .status import RolloutView, plural
from .timestamps import format_time

HISTORY = 10
@dataclass(frozen=True)
class Plan:
    target: Target  # which pod template the Deployment gets
    strategy: Strategy
    status: dict[str, Any]  # the new status.rollout
    view: RolloutView  # what compute_status needs to know
    stable_spec: Mapping[str, Any] | None = None  # the raw spec to render for target "stable"
    # (maxSurge, maxUnavailable) for the Deployment while it changes template; None = keep the
    # live Deployment's (a strategy that follows free capacity must not rewrite steady models).
    deployment_strategy: tuple[int, int] | None = None
    main_replicas: int | None = None  # None: the spec's (a canary moves replicas between the two)
    canary_replicas: int | None = None  # the canary Deployment's; None: there is none
    requeue_after: float | None = None
    rolled_back: bool = False  # this reconcile decided a rollback
    notes: list[str] = field(default_factory=list)  # for the log
    # The canary's share of the HTTPRoute's weights (0..100; the stable Service gets the rest).
    # 0 whenever no canary serves: 100/0, stable only.
    canary_weight: int = 0
    # The canary Deployment keeps its pods' template, only its replicas change (canary_replicas):
    # the spec went back to the current revision while a canary ran, and it gives them back.
    hold_canary_template: bool = False
    # The canary Deployment's (maxSurge, maxUnavailable) (canary.swap_strategy).
    canary_strategy: tuple[int, int] = (0, 1)


def ref(obj: Any) -> dict[str, Any] | None:
    if not isinstance(obj, Mapping) or not obj.get("hash"):
        return None
    return dict(obj)


def entry(ref: Mapping[str, Any], outcome: str, message: str, now: datetime) -> dict[str, Any]:
    return {"number": int(ref.get("number") or 0), "hash": str(ref.get("hash") or ""),
            "outcome": outcome, "message": message, "time": format_time(now)}


@dataclass
class Draft:
    """What plan() is deciding, as it decides it: the status.rollout records and the Plan's
    fields. Each branch of plan() moves it on; plan() turns it into the Plan at the end."""
    strategy: Strategy
    desired_hash: str
    cur: dict[str, Any] | None
    prev_good: dict[str, Any] | None
    upd: dict[str, Any] | None
    failed: dict[str, Any] | None
    stable_spec: Mapping[str, Any] | None
    history: list[dict[str, Any]]
    gpu: GpuRatio = ONE  # GPUs of a canary-side pod and of a stable-side one
    pods: Sequence[PodInfo] = ()  # the model's pods
    target: Target = "desired"
    requeue: float | None = None
    moving: bool = False  # the Deployment is (to be) changing template: the strategy matters
    rolled_back: bool = False
    notes: list[str] = field(default_factory=list)
    main_replicas: int | None = None
    canary_replicas: int | None = None
    canary_state: dict[str, Any] | None = None
    canary_moving: bool = False
    hold_canary: bool = False
    canary_strategy: tuple[int, int] = (0, 1)
    canary_weight: int = 0
    view_reason: str = ""
    view_message: str = ""
    blocked_reason: str = ""
    blocked_message: str = ""
    status: dict[str, Any] = field(default_factory=dict)

    def state(self, strategy_name: str, reason: str, message: str) -> dict[str, Any]:
        """The status.rollout to write, from the records as they stand now."""
        out: dict[str, Any] = {"strategy": strategy_name, "reason": reason, "message": message,
                               "current": self.cur, "previous": self.prev_good,
                               "update": self.upd, "failed": self.failed,
                               "history": self.history[-HISTORY:] or None,
                               "stableSpec": self.stable_spec, "canary": self.canary_state}
        if reason == "QuotaExceeded" and self.strategy.quota is not None:
            out["quota"] = dict(zip(("name", "message"), self.strategy.quota, strict=True))
        return {k: v for k, v in out.items() if v is not None}

    @property
    def units(self) -> int:
        """Stable-size replicas a canary of larger pods moves within: what the matching nodes
        hold (gpu.held), or under a full quota the stable revision's and what the quota has
        left; at least the stable revision's replicas (its spec's)."""
        stable = int((self.stable_spec or {}).get("replicas") or 0)
        if self.strategy.quota is not None:
            return self.gpu.within_quota(stable, self.pods)
        return max(stable, self.gpu.held)

    def drop_canary(self) -> None:
        self.canary_state = None
        self.main_replicas = self.canary_replicas = None
        self.canary_weight = 0
        self.view_reason = self.view_message = ""

    def roll_back(self, why: str, now: datetime) -> None:
        """The update revision failed: back to the current one until the spec changes."""
        assert self.upd is not None and self.cur is not None
        self.failed = {"number": self.upd["number"], "hash": self.desired_hash, "message": why}
        self.history.append(entry(self.upd, "RolledBack", why, now))
        self.upd = None
        self.drop_canary()
        self.target = "stable"
        self.rolled_back = True
        self.blocked_reason = "RolledBack"
        self.blocked_message = (f"revision {self.failed['number']} ({self.desired_hash}) was "
                                f"rolled back to revision {self.cur.get('number')} "
                                f"({self.cur['hash']}): {why}; change the spec to try again")
        self.status = self.state(self.strategy.name, "RolledBack", self.blocked_message)
        self.notes.append(self.blocked_message)

    def complete(self, how: str, desired: int, raw_spec: Mapping[str, Any],
                 now: datetime) -> None:
        """The update revision is complete: it becomes the current one."""
        assert self.upd is not None
        self.history.append(entry(self.upd, "Complete",
                                   f"{plural(desired, 'replica')} Ready ({how})", now))
        if self.cur is not None and self.cur["hash"] != self.desired_hash:
            self.prev_good = self.cur
        self.cur = {"number": self.upd["number"], "hash": self.desired_hash}
        self.upd = None
        self.drop_canary()
        self.stable_spec = dict(raw_spec)
        self.status = self.state("None", "UpToDate", f"revision {self.cur['number']} "
                                 f"({self.desired_hash}) is the current revision")
        self.notes.append(f"revision {self.cur['number']} ({self.desired_hash}) complete"
                          + (" (canary)" if how.startswith("canary") else ""))
