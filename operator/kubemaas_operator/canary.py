"""PURE: one look at a canary rollout — how many replicas each Deployment gets, and the route.

Steps move replicas from the stable Deployment (old template) to the canary (new template); the
canary grows only into GPUs the stable one has given back or that are free, so the two never
hold more pods than desired + free. When no GPU is free and a canary pod asks for more GPUs than
a stable replica frees (gpu_ratio.py), the stable side gives up ceil(new / old) replicas per
canary pod (its `ratio`), within maxUnavailable. After the last step the stable Deployment takes
the new template and the canary shrinks as the stable's new replicas become Ready.
rollout.plan() calls canary_step() and keeps the revision bookkeeping (rollback, completion) to
itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from fractions import Fraction
from math import ceil, floor
from typing import Any, Literal

from .api import CanarySpec, CanaryStep
from .observed import PodInfo
from .rollout_strategy import WAIT_RECHECK_S
from .timestamps import format_time, parse_time

Target = Literal["desired", "stable", "hold"]
# How a canary's traffic splits: by the ready endpoints behind the model's one Service, or by the
# backendRefs weights of the model's HTTPRoute (Gateway API).
TrafficSplit = Literal["ReadyReplicas", "HTTPRoute"]
READY_REPLICAS: TrafficSplit = "ReadyReplicas"
HTTP_ROUTE: TrafficSplit = "HTTPRoute"


def step_replicas(desired: int, weight: int) -> int:
    """Canary replicas at a step of `weight` percent: rounded up, at least one."""
    return max(1, min(desired, -(-desired * weight // 100)))


def route_weight(steps: Sequence[CanaryStep], step: int, desired: int, can_ready: int,
                 stable_ready: int) -> int:
    """The canary's HTTPRoute weight at `step` (1-based; up to len(steps)).

    A step's weight goes to the route only once its canary replicas are Ready (as Argo Rollouts
    does): until then the route keeps the weight of the last step that was reached (0 before
    the first). A side with no Ready replica gets no traffic: a canary with none gets 0, a
    stable Deployment with none (a 100% step, or a single replica) leaves the canary 100.
    """
    weight = 0
    for s in steps[:max(0, step)]:
        if can_ready >= step_replicas(desired, s.weight):
            weight = s.weight
    if can_ready <= 0:
        return 0
    if stable_ready <= 0:
        return 100
    return weight


def ready_share(can_ready: int, stable_ready: int) -> int:
    """The canary's share of the ready replicas, in percent (the ReadyReplicas split)."""
    total = can_ready + stable_ready
    return round(100 * can_ready / total) if total else 0


@dataclass(frozen=True)
class CanaryLook:
    """What canary_step() decided."""
    target: Target
    main_replicas: int
    canary_replicas: int
    update: dict[str, Any]
    state: dict[str, Any]
    message: str
    requeue_after: float | None
    done: bool = False
    aborted: bool = False
    weight: int = 0  # the canary's HTTPRoute weight (HTTPRoute split)
    short: bool = False  # the next canary pod needs more GPUs than the stable side may give
    strategy: tuple[int, int] = (0, 1)  # the canary Deployment's (swap_strategy)


@dataclass(frozen=True)
class _Seen:
    """The inputs every phase of a canary reads."""
    canary: CanarySpec
    desired: int
    spare: int
    max_unavailable: int  # the rollout strategy's: how far the stable side may dip without GPUs
    desired_hash: str
    split: TrafficSplit
    main: list[PodInfo]
    can: list[PodInfo]
    main_ready: int
    main_ready_new: int
    can_ready: int
    per: Fraction = Fraction(1)  # stable replicas' GPUs in one canary pod (3 / 2: 1.5)
    units: int = 0  # stable-size replicas the GPUs held or free hold (gpu_ratio.py)
    kept: int = 0  # canary pods its Deployment keeps (a surge pod of an in-place swap is not)

    @property
    def ratio(self) -> int:
        """Stable replicas one canary pod needs the GPUs of (gpu_ratio.py), rounded up."""
        return ceil(self.per)

    @property
    def budget(self) -> int:
        return self.desired + self.spare

    @property
    def r(self) -> int:
        """The ratio that counts: 1 while free GPUs hold the canary."""
        return self.ratio if self.spare <= 0 else 1

    @property
    def p(self) -> Fraction:
        """`r` unrounded: what a canary pod takes of the room, in stable replicas."""
        return self.per if self.spare <= 0 else Fraction(1)

    @property
    def room_units(self) -> int:
        """What the two sides may hold, in stable replicas."""
        return self.budget if self.r == 1 else max(self.desired, self.units)

    @property
    def by(self) -> str:
        return "by HTTPRoute weights" if self.split == HTTP_ROUTE else "by ready replicas"

    def state(self, step: int, weight: int, can_n: int, main_n: int,
              traffic: int) -> dict[str, Any]:
        return {"hash": self.desired_hash, "step": step, "steps": len(self.canary.steps),
                "weight": weight, "replicas": self.desired, "canaryReplicas": can_n,
                "stableReplicas": main_n,
                "trafficPercent": traffic, "trafficSplit": self.split}


def canary_step(canary: CanarySpec, desired: int, spare: int, pods: Sequence[PodInfo],
                upd: dict[str, Any], previous: Any, desired_hash: str, max_unavailable: int,
                now: datetime, split: TrafficSplit = READY_REPLICAS,
                ratio: int | Fraction = 1, units: int = 0) -> CanaryLook:
    """One look at a canary rollout of `desired_hash` (see the module's docstring).

    `previous`: the canary state written last time (status.rollout.canary); `upd`: the update
    revision's record, returned with progressAt moved on when waiting is not a stall. `ratio`:
    stable replicas' GPUs per canary pod (gpu_ratio.GpuRatio.per: 3 GPUs for 2 is 3/2, rounded
    up only where whole stable replicas must go); `units`: stable-size replicas
    the model's GPUs and the free ones hold (at least the stable revision's replicas).
    """
    main = [p for p in pods if p.track != "canary"]
    can = [p for p in pods if p.track == "canary"]
    swapping = any(p.revision != desired_hash and not p.terminating for p in can)
    # The canary Deployment's replicas as last written: an in-place swap keeps them, so the
    # state of the revision it replaces tells them too (the first pass of a swap, or one
    # whose status write was lost); never the pods, which count its surge pod.
    asked = previous.get("canaryReplicas") if isinstance(previous, Mapping) and (
        swapping or previous.get("hash") == desired_hash) else None
    seen = _Seen(
        canary=canary, desired=desired, spare=spare, max_unavailable=max_unavailable,
        desired_hash=desired_hash, split=split, main=main, can=can,
        main_ready=sum(1 for p in main if p.ready and not p.terminating),
        main_ready_new=sum(1 for p in main if p.ready and not p.terminating
                           and p.revision == desired_hash),
        can_ready=sum(1 for p in can if p.ready and not p.terminating
                      and p.revision == desired_hash), per=max(Fraction(1), Fraction(ratio)),
        units=units, kept=min(len(can), int(asked)) if swapping and asked is not None
        else len(can))
    look = _look(seen, canary, upd, previous, desired_hash, now)
    return replace(look, strategy=swap_strategy(pods, desired_hash, desired, max_unavailable,
                                                seen.ratio))


def _look(seen: _Seen, canary: CanarySpec, upd: dict[str, Any], previous: Any,
          desired_hash: str, now: datetime) -> CanaryLook:
    """canary_step's look: an abort, a step, or the promotion."""
    if canary.abort:
        return _abort(seen, upd, now)
    prev = dict(previous) if isinstance(previous, Mapping) and previous.get(
        "hash") == desired_hash else {}
    step = int(prev.get("step") or 1)
    if canary.promote is not None and canary.promote == upd.get("number"):
        step = len(canary.steps) + 1
    if step <= len(canary.steps):
        look, upd = _at_step(seen, step, parse_time(prev.get("stepReadyAt")), upd, now)
        if look is not None:
            return look
    return _promoted(seen, upd)


def _slack(seen: _Seen) -> int:
    """How many replicas short the stable side may run while no GPU is free."""
    return slack(seen.desired, seen.spare, seen.max_unavailable, seen.ratio)


def slack(desired: int, spare: int, max_unavailable: int, ratio: int = 1) -> int:
    """How many replicas short the stable side may run while no GPU is free: one (or up to
    maxUnavailable, never every replica), or the `ratio` a canary pod needs where
    `max_unavailable` (the strategy's: with allowDowntime, up to every replica) allows it."""
    if spare > 0:
        return 0
    base = max(1, min(max_unavailable, max(1, desired - 1)))
    return ratio if base < ratio <= min(max_unavailable, desired) else base


def swap_strategy(pods: Sequence[PodInfo], desired_hash: str, desired: int,
                  max_unavailable: int, ratio: int = 1) -> tuple[int, int]:
    """The canary Deployment's (maxSurge, maxUnavailable). (0, 1) as a rule: never more canary
    pods than it was given GPUs for. While it replaces, in place, pods of a revision the spec
    left (a third revision of the same pod size mid-canary), one of its Ready pods may go only
    while the model's Ready replicas stand above the floor the rollout keeps (`desired` less
    the slack maxUnavailable gives, as the stable side counts it); at the floor (a stable
    replica just given up for the next canary pod, or not Ready) the new pod comes first
    (1, 0), into GPUs that are free, and the old one goes once it is Ready. A pod of the
    revision left that is not Ready serves nothing: it goes first, also at the floor (the
    Deployment controller keeps it while a surged pod is unavailable, and with no GPU free
    that pod would wait behind it until the revision's deadline)."""
    leaving = [p for p in pods
               if p.track == "canary" and p.revision != desired_hash and not p.terminating]
    if not leaving or any(not p.ready for p in leaving):
        return 0, 1
    ready = sum(1 for p in pods if p.ready and not p.terminating)
    return (0, 1) if ready > desired - slack(desired, 0, max_unavailable, ratio) else (1, 0)


def first_room(desired: int, spare: int, max_unavailable: int, ratio: int, units: int) -> int:
    """The stable replicas' worth of GPUs the first canary pod finds (given up within the slack,
    free, or held by stable replicas beyond `desired`: `units` is what the matching nodes hold
    in stable replicas); `ratio` or more: it fits."""
    if spare > 0 or ratio <= 1:
        return ratio
    return max(desired, units) - max(0, desired - slack(desired, spare, max_unavailable, ratio))


def give_back(desired: int, spare: int, canary_pods: int, back_ready: int,
              max_unavailable: int, ratio: int | Fraction = 1,
              units: int = 0) -> tuple[int, int]:
    """(stable, canary) replicas while a canary gives its replicas back (an abort, or the spec
    gone back to the current revision): the stable Deployment grows into the GPUs the canary
    gives back (`ratio` stable replicas per canary pod when no GPU is free), the canary
    (`canary_pods` pods) shrinks as the stable replicas of the revision gone back to
    (`back_ready` Ready) become Ready. Free room (`spare`) too small for the canary's larger
    pods beside every stable replica counts as none: the pods hold `ratio` stable replicas'
    GPUs each, and the canary goes within the slack first (else each side waits on the other).
    """
    per = max(Fraction(1), Fraction(ratio))
    if per == 1 or spare >= per * canary_pods:  # the stable side grows as the canary shrinks
        have = desired + spare if per == 1 else desired + canary_pods * per
    else:  # no room (or too little) for both: the canary goes within the slack first
        have, spare = max(desired + max(0, spare), units), 0
    main_n = max(0, min(desired, floor(have - per * canary_pods)))
    can_n = max(0, min(canary_pods, desired - back_ready
                       - slack(desired, spare, max_unavailable, ceil(per))))
    return main_n, can_n


def wind_down(pods: Sequence[PodInfo], desired: int, spare: int, back_hash: str,
              max_unavailable: int, back: str, ratio: int | Fraction = 1,
              units: int = 0) -> tuple[int, int, str] | None:
    """(stable, canary replicas, message) when the spec went back to the current revision
    (`back_hash`, named `back`) while a canary ran, else None: as an abort does, the canary
    gives its replicas back only as the stable Deployment's come back Ready (deleting it at once
    would take its Ready replicas away before the stable ones are back)."""
    can = [p for p in pods if p.track == "canary"]
    if not can or desired <= 0:
        return None
    back_ready = sum(1 for p in pods if p.track != "canary" and p.ready and not p.terminating
                     and p.revision == back_hash)
    main_n, can_n = give_back(desired, spare, len(can), back_ready, max_unavailable, ratio,
                              units)
    return main_n, can_n, (f"the spec went back to {back}: the canary gives its {len(can)} "
                           f"replica(s) back as the stable ones become Ready ({back_ready} of "
                           f"{desired} Ready)")


def dropped_canary(previous: Mapping[str, Any], desired_hash: str, desired: int,
                   spare: int) -> tuple[int, int]:
    """(desired, spare) while a canary the spec dropped (for autoscaling) is promoted, or
    (of a revision the spec left) gives its replicas back, up to the pass its record goes: the
    stable Deployment takes over the replicas the canary rollout had (status.rollout.canary
    .replicas; from a state written without it, the current revision's spec's), whatever the
    canary gave up so far, and `spare`, the room beyond the autoscaler's count, holds the
    difference. Otherwise both as they are."""
    was = previous.get("canary") or {}
    if not was:
        return desired, spare
    stable = previous.get("stableSpec")
    had = int(was.get("replicas") or (
        stable.get("replicas") if isinstance(stable, Mapping) else 0) or 0)
    return max(desired, had), max(0, spare - max(0, had - desired))


def _abort(seen: _Seen, upd: dict[str, Any], now: datetime) -> CanaryLook:
    """Back to the current revision: the stable Deployment grows into the GPUs the canary gives
    back, the canary shrinks as the stable replicas become Ready (-1 when full)."""
    old_ready = sum(1 for p in seen.main if p.ready and not p.terminating
                    and p.revision != seen.desired_hash)
    main_n, can_n = give_back(seen.desired, seen.spare, len(seen.can), old_ready,
                              seen.max_unavailable, seen.per, seen.units)
    # The route sends nothing to the canary from now on.
    traffic = 0 if seen.split == HTTP_ROUTE else ready_share(seen.can_ready, seen.main_ready)
    upd = {**upd, "progressAt": format_time(now)}  # an abort is not a stall
    return CanaryLook("stable", main_n, can_n, upd, seen.state(0, 0, can_n, main_n, traffic),
                      "canary aborted by spec.rollout.canary.abort: every replica runs the "
                      "current revision again; set abort to false to start the canary over",
                      None, done=not seen.can and can_n == 0, aborted=True, weight=0)


def _at_step(seen: _Seen, step: int, step_ready_at: datetime | None, upd: dict[str, Any],
             now: datetime) -> tuple[CanaryLook | None, dict[str, Any]]:
    """The canary at `step`: its replicas, and whether the step's gate (pause, promotion) lets
    it move on; and `upd` with its progress time. No look when the last step's gate just opened
    (the promotion phase follows)."""
    steps, desired = seen.canary.steps, seen.desired
    weight = steps[step - 1].weight
    want = step_replicas(desired, weight)
    # The stable Deployment gives replicas up only as canary replicas become Ready (at most
    # maxUnavailable short when no GPU is free), the canary grows into what is given up: `r`
    # stable replicas per canary pod when a canary pod needs more GPUs than a stable one frees
    # (counted in GPUs: a 3-GPU pod takes 1.5 stable replicas of 2 GPUs).
    p, have = seen.p, seen.room_units
    main_n = max(max(0, min(desired - want, floor(have - p * want))),
                 min(desired, desired - seen.can_ready - _slack(seen)))
    if any(c.revision != seen.desired_hash and not c.terminating for c in seen.can):
        # an in-place swap: the canary's pods hold their GPUs while they are replaced; the
        # stable side grows only beside them (else its pods take the GPUs the new one needs)
        main_n = min(main_n, max(0, floor(have - p * seen.kept)))
    can_n = min(want, max(seen.kept, floor((have - len(seen.main)) / p)))
    reached = seen.can_ready >= want and len(seen.main) <= main_n
    short = not reached and _short(seen, want, main_n, can_n)
    if short:  # waiting for room maxUnavailable does not give is not a stall
        upd = {**upd, "progressAt": format_time(now)}
    pause = steps[step - 1].pause_seconds
    gate = ""
    requeue: float | None = None
    moved_on = False
    if reached:
        step_ready_at = step_ready_at or now
        upd = {**upd, "progressAt": format_time(now)}  # waiting at a gate is not a stall
        waited = (now - step_ready_at).total_seconds()
        if seen.canary.paused:
            gate = "; paused (spec.rollout.canary.paused)"
        elif pause is None:
            gate = ("; waiting for promotion: set spec.rollout.canary.promote to "
                    f"{upd.get('number')}")
        elif waited >= pause:
            step, step_ready_at, moved_on = step + 1, None, True
            requeue = 0.05
            gate = f"; step {step - 1} done, moving on"
        else:
            gate = f"; next step in {pause - waited:.0f}s"
            requeue = max(0.1, pause - waited)
    shown = step - 1 if moved_on else step
    route = route_weight(steps, shown, desired, seen.can_ready, seen.main_ready)
    traffic = route if seen.split == HTTP_ROUTE else ready_share(seen.can_ready, seen.main_ready)
    message = (f"canary step {shown}/{len(steps)}: {weight}% = {want} of {desired} "
               f"replica(s) on the new revision ({seen.can_ready} Ready), traffic "
               f"{traffic}% {seen.by}{gate}") + (_short_note(seen) if short else "")
    if step > len(steps):
        return None, upd
    state = seen.state(step, weight, can_n, main_n, traffic)
    if step_ready_at is not None:
        state["stepReadyAt"] = format_time(step_ready_at)
    return CanaryLook("stable", main_n, can_n, upd, state, message,
                      WAIT_RECHECK_S if short else requeue, weight=route, short=short), upd


def _short(seen: _Seen, want: int, main_n: int, can_n: int) -> bool:
    """A canary of larger pods that cannot grow: every canary pod is Ready, the stable side is
    down to what maxUnavailable allows, and the GPUs given up do not hold one more canary pod."""
    return (seen.r > 1 and len(seen.can) < want and can_n <= len(seen.can)
            and seen.can_ready >= len(seen.can) and len(seen.main) <= main_n)


def _short_note(seen: _Seen) -> str:
    return (f"; the next canary pod needs the GPUs of {seen.r} stable replicas, and "
            f"spec.rollout.maxUnavailable ({seen.max_unavailable} with no free GPU) lets the "
            "stable Deployment give up no more while the canary's are Ready: raise it, or free "
            "GPUs on matching nodes; it waits (no rollback)")


def _promoted(seen: _Seen, upd: dict[str, Any]) -> CanaryLook:
    """After the last step: the stable Deployment takes the new template over."""
    slack = 0 if seen.spare > 0 else max(1, seen.max_unavailable)
    main_n = max(0, min(seen.desired, seen.budget - len(seen.can)))
    can_n = max(0, min(len(seen.can), seen.desired - seen.main_ready_new - slack))
    # The route follows the ready replicas now: the canary's share shrinks as the stable
    # Deployment's new replicas become Ready; replicas the canary is about to give up get none.
    traffic = (ready_share(min(seen.can_ready, can_n), seen.main_ready)
               if seen.split == HTTP_ROUTE else ready_share(seen.can_ready, seen.main_ready))
    steps = len(seen.canary.steps)
    message = (f"canary promoted: the stable Deployment takes revision {upd.get('number')} over "
               f"({seen.main_ready_new} of {seen.desired} Ready), the canary shrinks to {can_n}, "
               f"traffic {traffic}% to the canary {seen.by}")
    return CanaryLook("desired", main_n, can_n, upd, seen.state(steps + 1, 100, can_n, main_n,
                                                                traffic),
                      message, None, done=not seen.can and can_n == 0, weight=traffic)
