"""PURE: revisions, surge-or-replace, canary steps and rollback decisions.

A *revision* is a pod template: every spec change that alters the pods has a new hash (rendered
by render.py) and gets the next number. `plan()` looks at what the operator observed — the spec's
revision, the live Deployment's, the model's pods, how many more replicas the free GPUs of
matching nodes can hold — and the rollout state it wrote last time (`status.rollout`), and says:

- which pod template the Deployment should carry: the desired one, the last good one (a rollback,
  or a failed revision that must not be retried until the spec changes), or whatever it carries
  now (a rollout that waits);
- the Deployment's rolling-update strategy: *surge* (maxSurge = what fits on free GPUs,
  maxUnavailable 0: never below the desired ready count) when the free GPUs allow it, otherwise
  *replace* (maxSurge 0, maxUnavailable within spec.rollout.maxUnavailable: never more pods than
  GPUs), and for a single replica without a spare GPU *wait* unless downtime is allowed;
- with `spec.rollout.canary`, how many replicas the stable Deployment (old template) and the
  canary Deployment (new template) get at the current step, and when a step's pause is over;
- the new `status.rollout` (current, previous and update revisions, a short history of outcomes),
  and whether the model's Ready condition must say RolledBack, RolloutWaiting or CanaryAborted.

Everything here is a function of its inputs; reconcile.py does the I/O. State that must survive a
restart lives in the status (and in the Deployment itself), so a killed operator resumes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from .api import CanarySpec, CanaryStep, ModelDeploymentSpec
from .canary import READY_REPLICAS, TrafficSplit, canary_step, dropped_canary, wind_down
from .gpu_ratio import ONE, GpuRatio, canary_short, never_all, spare_in_gpus
from .observed import DeploymentInfo, PodInfo
from .rollout_checks import awaits_a_node, blocked, complete, failing
from .rollout_draft import Draft, Plan, entry, ref
from .rollout_room import old_left, plain, whole_surge
from .rollout_strategy import Strategy, canary_quota_note, pick_strategy, rollout_reason
from .status import RolloutView, plural
from .timestamps import format_time, parse_time

# A revision counts as complete once every replica has run it Ready for spec.rollout.settleSeconds
# (the rendered Deployment's minReadySeconds, so the Deployment controller removes old replicas
# only for new ones that stayed Ready that long): a runtime that crashes right after its first
# Ready is still rolled back, and the serving revision's pods are still there to roll back to.


def plan(spec: ModelDeploymentSpec, raw_spec: Mapping[str, Any], desired_hash: str,
         dep: DeploymentInfo | None, pods: Sequence[PodInfo], desired: int, spare: int,
         previous: Mapping[str, Any], now: datetime,
         traffic_split: TrafficSplit = READY_REPLICAS, never: str = "",
         quota_full: tuple[str, str] | None = None, gpu: GpuRatio = ONE,
         room: int | None = None) -> Plan:
    """Decide the Deployment's template and strategy, and the new status.rollout.

    `dep` is the stable (main) Deployment; canary pods are told apart by their track label.
    `traffic_split` says whether a canary's traffic follows an HTTPRoute's weights (then
    Plan.canary_weight is the weight to write) or the ready replicas behind one Service.
    `never`: why no node could ever hold a replica of the spec's revision (the capacity
    check's GPURequestTooLarge or UnknownGPUProduct message), or empty: such a revision is
    rolled back at once, before the serving revision gives up a replica for it. One of larger
    pods whose replicas could not all fit were every stable one gone waits, the serving
    revision untouched, until nodes or the quota hold it (gpu_ratio.never_all).
    `quota_full`: (a ResourceQuota's name, what is full): quota_room.no_room, read ahead.
    `gpu`: the GPUs of one canary-side pod and one stable-side pod (gpu_ratio.py).
    `room`: a plain rollout's surge room, at the revision's pod size with the model's own pods
    held (rollout_room.surge_room); None: not counted, `spare` stands for it.
    """
    upd = ref(previous.get("update"))
    live_hash = dep.revision if dep is not None else ""
    asked = desired  # the spec's, or the autoscaler's count
    if spec.rollout.canary is None:
        desired, spare = dropped_canary(previous, desired_hash, desired, spare)
    if live_hash != desired_hash:  # smaller pods: the stable ones hold more than counted
        spare = spare_in_gpus(gpu, desired, spare)
    d = Draft(
        strategy=_strategy(spec, desired_hash, dep, pods, desired, spare, previous, quota_full,
                           gpu, room),
        desired_hash=desired_hash, cur=ref(previous.get("current")),
        prev_good=ref(previous.get("previous")), upd=upd, failed=ref(previous.get("failed")),
        stable_spec=previous.get("stableSpec") if isinstance(previous.get("stableSpec"),
                                                             Mapping) else None,
        history=[dict(h) for h in previous.get("history") or [] if isinstance(h, Mapping)],
        gpu=gpu, pods=pods)
    if d.strategy.quota is not None:  # no room in the quota for one more pod: a canary moves
        spare = 0  # replicas within it, as on a cluster without a free GPU (canary.py)
    if d.failed is not None and d.failed["hash"] == desired_hash and d.cur is not None and (
            d.stable_spec is not None):
        _still_rolled_back(d, live_hash)
    elif d.cur is not None and desired_hash == d.cur["hash"]:
        _steady(d, raw_spec, live_hash, now)
        if spec.rollout.canary is None:  # a canary dropped for autoscaling keeps its record
            d.canary_state = previous.get("canary")  # while it gives back (dropped_canary)
        if not _give_canary_back(d, pods, desired, spare,
                                 allowed=spec.rollout.max_unavailable):
            d.canary_state = None
    else:
        _new_revision(d, spec, raw_spec, dep, pods, desired, spare, previous, now,
                      traffic_split, never)
    if (spec.rollout.canary is None and previous.get("canary") and d.canary_state is None
            and d.main_replicas is None and desired > asked):
        # a dropped canary's record goes: the stable Deployment gets the rollout's replicas,
        # the autoscaler's count from now on (not what the canary's give-back left it at)
        d.main_replicas = desired
    return _finish(d, desired)


def _strategy(spec: ModelDeploymentSpec, desired_hash: str, dep: DeploymentInfo | None,
              pods: Sequence[PodInfo], desired: int, spare: int, previous: Mapping[str, Any],
              quota_full: tuple[str, str] | None, gpu: GpuRatio, room: int | None) -> Strategy:
    """The rollout's strategy (rollout_strategy.pick_strategy): a plain rollout's surge room
    counted at its pod size (`room`, rollout_room.py) and its pool only while old pods serve;
    a plain surge that could not finish waits before it starts (whole_surge)."""
    upd = ref(previous.get("update"))
    live_hash = dep.revision if dep is not None else ""
    counted = room is not None and plain(spec, pods, previous)
    strategy = pick_strategy(spec, desired, room if counted and room is not None else spare,
                             pods, previous, upd is not None and upd["hash"] == desired_hash,
                             live_hash == desired_hash, dep, quota_full,
                             pool=spare if counted and old_left(pods, desired_hash) else None)
    return whole_surge(strategy, spec, desired, gpu, counted and live_hash != desired_hash)


def _still_rolled_back(d: Draft, live_hash: str) -> None:
    """A revision that was rolled back: keep the last good one until the spec changes."""
    assert d.failed is not None and d.cur is not None
    d.target = "stable"
    d.blocked_reason = "RolledBack"
    d.blocked_message = (f"revision {d.failed.get('number')} ({d.desired_hash}) was rolled back "
                         f"to revision {d.cur.get('number')} ({d.cur['hash']}): "
                         f"{d.failed.get('message', '')}; change the spec to try again")
    d.moving = live_hash != d.cur["hash"]
    d.status = d.state(d.strategy.name if d.moving else "None", "RolledBack", d.blocked_message)


def _steady(d: Draft, raw_spec: Mapping[str, Any], live_hash: str, now: datetime) -> None:
    """Steady state (or the spec went back to the good revision while another rolled out)."""
    assert d.cur is not None
    if d.upd is not None and d.upd["hash"] != d.desired_hash:
        d.history.append(entry(d.upd, "Superseded", f"the spec went back to revision "
                                f"{d.cur.get('number')}", now))
        d.upd = None
    d.failed = None
    d.stable_spec = dict(raw_spec)
    if live_hash and live_hash != d.desired_hash:
        d.moving = True
        d.view_reason, d.view_message = rollout_reason(d.strategy), d.strategy.message
        d.status = d.state(d.strategy.name, d.strategy.reason, d.strategy.message)
    else:
        d.status = d.state("None", "UpToDate", f"revision {d.cur.get('number')} "
                           f"({d.desired_hash}) is the current revision")


def _give_canary_back(d: Draft, pods: Sequence[PodInfo], desired: int, spare: int,
                      now: datetime | None = None, allowed: int = 0) -> bool:
    """The spec went back to the current revision while a canary ran (canary.wind_down), or
    (`now`: the update revision's progress time) moved on to a revision whose pods are of
    another size than the canary's that ran: its pods give their GPUs back first, as they
    cannot be replaced in place by pods of another size. `allowed`: spec.rollout
    .maxUnavailable, the slack where free GPUs (a surge strategy's 0) are too few for the
    canary's larger pods beside every stable replica (canary.give_back)."""
    assert d.cur is not None
    back = wind_down(pods, desired, spare, d.cur["hash"],
                     max(d.strategy.max_unavailable, allowed),
                     f"revision {d.cur.get('number')} ({d.desired_hash})",
                     d.gpu.per if now is None else d.gpu.was_per, d.units)
    if back is None:
        return False
    d.main_replicas, d.canary_replicas, d.view_message = back
    if now is not None and d.upd is not None:  # not a stall: its canary has not started
        d.target, d.upd = "stable", {**d.upd, "progressAt": format_time(now)}
        ready = d.view_message.rsplit("(", 1)[-1]
        d.view_message = (
            f"revision {d.upd['number']} ({d.desired_hash}) asks for {d.gpu.new} "
            f"{d.gpu.resource} per pod, the canary that ran for {d.gpu.was}: its "
            f"{plural(len([p for p in pods if p.track == 'canary']), 'pod')} give their GPUs "
            f"back to the stable Deployment first (revision {d.cur.get('number')}, {ready}, "
            f"then revision {d.upd['number']}'s canary starts")
    d.canary_moving = d.hold_canary = True
    d.view_reason = "CanaryRollout"
    d.status = d.state("Canary", "CanaryGivesBack", d.view_message)
    return True


def _dropped_and_superseded(d: Draft, previous: Mapping[str, Any], desired: int) -> None:
    """The spec dropped spec.rollout.canary (autoscaling switched on) and moved on to another
    revision in the same edit: the canary that ran gives its replicas back to the stable
    Deployment as a revert does, keeping its record (the replicas the rollout had, which
    dropped_canary reads), then the new revision rolls as any revision without a canary."""
    assert d.cur is not None and d.upd is not None
    was = previous.get("canary") or {}
    d.canary_state = dict(was)
    ready = sum(1 for p in d.pods if p.track != "canary" and p.ready and not p.terminating
                and p.revision == d.cur["hash"])
    d.view_message = (
        f"spec.rollout.canary was removed (a canary does not combine with spec.autoscaling) "
        f"while revision {was.get('hash', '?')}'s canary ran, and revision {d.upd['number']} "
        f"({d.desired_hash}) is asked for: the canary's "
        f"{plural(len([p for p in d.pods if p.track == 'canary']), 'pod')} give their replicas "
        f"back to the stable Deployment first (revision {d.cur.get('number')}, {ready} of "
        f"{desired} Ready), then revision {d.upd['number']} rolls")
    d.status = d.state("Canary", "CanaryGivesBack", d.view_message)


def _record(d: Draft, pods: Sequence[PodInfo], previous: Mapping[str, Any],
            now: datetime) -> int:
    """Start the record of a new revision (the one it supersedes goes to the history), move
    its progress on as its pods become Ready; the Ready pods of the revision."""
    if d.upd is None or d.upd["hash"] != d.desired_hash:
        if d.upd is not None:
            d.history.append(entry(d.upd, "Superseded", "the spec changed again before it "
                                    "completed", now))
        numbers = [int(r.get("number") or 0) for r in (
            d.cur, d.prev_good, d.upd, d.failed, *d.history) if r]
        number = max(numbers, default=0) + 1
        d.upd = {"number": number, "hash": d.desired_hash, "startedAt": format_time(now),
                 "progressAt": format_time(now), "ready": 0}
        d.failed = None
        d.notes.append(f"revision {number} ({d.desired_hash}) starts")
    ready = sum(1 for p in pods if not p.terminating and p.revision == d.desired_hash
                and p.ready)
    if ready > int(d.upd.get("ready") or 0):
        d.upd = {**d.upd, "ready": ready, "progressAt": format_time(now)}
    elif previous.get("strategy") == "Wait" and d.strategy.name != "Wait":
        # a rollout that waited for room (a GPU, the quota) counts its deadline from now
        d.upd = {**d.upd, "progressAt": format_time(now)}
    return ready


def _new_revision(d: Draft, spec: ModelDeploymentSpec, raw_spec: Mapping[str, Any],
                  dep: DeploymentInfo | None, pods: Sequence[PodInfo], desired: int,
                  spare: int, previous: Mapping[str, Any], now: datetime,
                  traffic_split: TrafficSplit, never: str) -> None:
    """A new revision (or the first one): start its record, then canary, wait or roll."""
    ready = _record(d, pods, previous, now)
    assert d.upd is not None
    live_hash = dep.revision if dep is not None else ""
    # Something else ran before: this is a rollout, not the first revision.
    rolling = dep is not None and bool(live_hash) and (
        d.cur is not None or live_hash != d.desired_hash
        or any(p.revision != d.desired_hash for p in pods if not p.terminating))
    applied = live_hash == d.desired_hash
    # larger pods than all the matching GPUs (or the quota) hold: it waits for more
    too_large = never_all(d.gpu, desired) if rolling and not applied and d.cur is not None \
        else ""
    canary = spec.rollout.canary
    started = (any(p.track == "canary" for p in pods)
               or (previous.get("canary") or {}).get("hash") == d.desired_hash)
    # spec.rollout.canary removed while this revision's canary ran (autoscaling switched on,
    # which a canary does not combine with): the canary is promoted, not deleted at once
    removed = canary is None and (previous.get("canary") or {}).get("hash") == d.desired_hash
    if removed:
        steps = max(1, int((previous.get("canary") or {}).get("steps") or 1))
        canary = CanarySpec(steps=(CanaryStep(weight=100),) * steps,
                            promote=int(d.upd["number"]))
    if (canary is not None and rolling and not applied and d.stable_spec is not None
            and d.gpu.was not in (0, d.gpu.new)
            and _give_canary_back(d, pods, desired, spare, now,
                                  spec.rollout.max_unavailable)):
        return  # a superseded canary of another pod size goes first
    if (canary is None and rolling and not applied and d.stable_spec is not None
            and previous.get("canary")
            and _give_canary_back(d, pods, desired, spare, now, spec.rollout.max_unavailable)):
        _dropped_and_superseded(d, previous, desired)
        return  # a canary the spec dropped and left (autoscaling, a new revision) goes first
    # a canary pod that needs the GPUs of more stable replicas than may go waits as well
    short = too_large or (canary_short(d.gpu, desired, spare, d.strategy.max_unavailable,
                                       d.units, spec.rollout)
                          if canary is not None and d.cur is not None and not started
                          and d.strategy.name != "Wait" else "")
    waits = rolling and not applied and (d.strategy.name == "Wait" or bool(short)) and not never
    # A canary needs replicas to move: at 0 (replicas 0, scaled to 0 mid-canary) it rolls as any
    # revision does (the template changes, no pod starts; a canary Deployment goes). One that
    # has not started waits as any rollout does when no GPU is free and no stable replica may go
    # (a single replica without allowDowntime, maxUnavailable 0).
    if (canary is not None and rolling and desired > 0 and d.cur is not None
            and d.stable_spec is not None and not (waits and not started)
            and not (applied and not started)):
        _canary(d, spec, canary, raw_spec, dep, pods, desired, spare, previous, now,
                traffic_split, never, applied, removed)
    elif waits:
        _wait(d, short, "InsufficientGPU" if too_large else "CanaryNeedsGPUs",
              gave_up=live_hash == (d.cur or {}).get("hash") and (
            (previous.get("canary") or {}).get("hash") not in (None, d.desired_hash)
            or previous.get("reason") == "CanaryGivesBack"))
    else:
        _roll(d, spec, raw_spec, dep, pods, desired, now, never, ready, rolling, applied)


def _wait(d: Draft, short: str, short_reason: str, gave_up: bool = False) -> None:
    """The Deployment keeps its template until there is room (`short`, for `short_reason`: a
    canary pod's GPUs, or the revision's in all).
    `gave_up`: a canary of a revision the spec left had the stable Deployment (still on the
    current revision) give replicas up; it is rendered again at the spec's replicas, not held
    short for a canary that is gone."""
    assert d.upd is not None
    why = short or d.strategy.message
    d.target = "stable" if gave_up and d.stable_spec is not None else "hold"
    d.blocked_reason, d.blocked_message = "RolloutWaiting", (
        f"revision {d.upd['number']} ({d.desired_hash}) waits: {why}")
    d.requeue = d.strategy.recheck_s
    d.status = d.state("Wait", short_reason if short else d.strategy.reason, why)


def _canary(d: Draft, spec: ModelDeploymentSpec, canary: CanarySpec,
            raw_spec: Mapping[str, Any], dep: DeploymentInfo | None, pods: Sequence[PodInfo],
            desired: int, spare: int, previous: Mapping[str, Any], now: datetime,
            traffic_split: TrafficSplit, never: str, applied: bool,
            removed: bool = False) -> None:
    """A canary rollout's step, then its rollback or completion. `removed`: the spec no longer
    has a canary while this revision's ran; it ends as a promotion."""
    assert d.upd is not None
    c = canary_step(canary, desired, spare, pods, dict(d.upd), previous.get("canary"),
                    d.desired_hash, d.strategy.max_unavailable, now, traffic_split,
                    d.gpu.per, d.units)
    if removed:
        c = replace(c, message="spec.rollout.canary was removed while the canary ran (a canary "
                    "does not combine with spec.autoscaling), so it is promoted: " + c.message)
    d.upd, d.canary_state = c.update, c.state
    if awaits_a_node(pods, d.desired_hash):  # waiting for room is not a stall
        d.upd = {**d.upd, "progressAt": format_time(now)}
    d.canary_weight = c.weight
    d.main_replicas, d.canary_replicas = c.main_replicas, c.canary_replicas
    if c.aborted and c.done:  # every replica is back: the canary Deployment goes
        d.canary_replicas = None
    d.canary_moving = True
    d.canary_strategy = c.strategy
    d.target = c.target
    d.requeue = c.requeue_after
    message = c.message + canary_quota_note(d.strategy, d.gpu.ratio)
    d.view_reason, d.view_message = "CanaryRollout", (
        f"revision {d.upd['number']} ({d.desired_hash}): {message}")
    if c.aborted:
        d.blocked_reason, d.blocked_message = "CanaryAborted", (
            f"revision {d.upd['number']} ({d.desired_hash}): {message}")
    d.status = d.state("Canary", "QuotaExceeded" if d.strategy.quota else (
        "CanaryNeedsGPUs" if c.short else "CanarySteps"), message)
    problem = failing(pods, d.desired_hash) or blocked(dep, d.desired_hash, never)
    deadline = spec.rollout.progress_deadline_seconds
    since = parse_time(d.upd.get("progressAt")) or now
    overdue = (now - since) > timedelta(seconds=deadline)
    if (problem is not None or overdue) and not c.aborted:
        d.roll_back(problem[1] if problem is not None else
                    f"no canary replica became Ready for over {deadline}s "
                    "(progressDeadlineSeconds)", now)
    elif c.done and not c.aborted and applied and complete(dep, pods, d.desired_hash, desired):
        d.complete("canary promoted when spec.rollout.canary was removed" if removed else
                   f"canary, {len(canary.steps)} step(s)", desired, raw_spec, now)


def _roll(d: Draft, spec: ModelDeploymentSpec, raw_spec: Mapping[str, Any],
          dep: DeploymentInfo | None, pods: Sequence[PodInfo], desired: int, now: datetime,
          never: str, ready: int, rolling: bool, applied: bool) -> None:
    """A surge or replace rollout (or the first revision): progress, rollback or completion."""
    assert d.upd is not None
    deadline = spec.rollout.progress_deadline_seconds
    problem = (failing(pods, d.desired_hash) if applied else None) or blocked(
        dep, d.desired_hash, never)
    can_roll_back = d.cur is not None and d.stable_spec is not None and rolling
    # At zero (KEDA idles it) nothing runs the revision yet: it is not complete, and waiting is
    # not a stall; it is judged (completed or rolled back) once the model scales up.
    idle = desired <= 0 and can_roll_back
    if idle and "idleSince" not in d.upd:  # written once, not on every pass while idle
        d.upd = {**d.upd, "idleSince": format_time(now)}
    elif not idle and "idleSince" in d.upd:  # woken: the deadline counts from now
        d.upd = {k: v for k, v in d.upd.items() if k != "idleSince"} | {
            "progressAt": format_time(now)}
    since = now if idle else parse_time(d.upd.get("progressAt")) or now
    # a surge that waits for room (Wait) is not stalled: it starts once the room is there
    overdue = applied and d.strategy.name != "Wait" and (
        now - since) > timedelta(seconds=deadline)
    settle = float(min(spec.rollout.settle_seconds, deadline))
    settled = (now - since).total_seconds() >= settle
    done = applied and complete(dep, pods, d.desired_hash, desired) and settled and not idle
    if not done and can_roll_back and (problem is not None or overdue):
        d.moving = True
        d.roll_back(problem[1] if problem is not None else
                    f"{ready} of {desired} replica(s) Ready and no progress for over "
                    f"{deadline}s (progressDeadlineSeconds)", now)
    elif done:
        d.complete(f"{d.strategy.name.lower() if rolling else 'first'} rollout", desired,
                   raw_spec, now)
    else:
        if rolling and d.strategy.name == "Wait":  # a surge applied, with no room for it
            d.moving = True
            d.blocked_reason, d.blocked_message = "RolloutWaiting", (
                f"revision {d.upd['number']} ({d.desired_hash}) waits: {d.strategy.message}")
            d.status = d.state("Wait", d.strategy.reason, d.strategy.message)
        elif rolling:
            d.moving = True
            d.view_reason, d.view_message = rollout_reason(d.strategy), (
                f"revision {d.upd['number']} ({d.desired_hash}): {d.strategy.message}; "
                f"{ready} of {desired} new replica(s) Ready"
                + ("; at 0 replicas: it completes, or is rolled back, once the model scales up"
                   if idle else ""))
            d.status = d.state(d.strategy.name, d.strategy.reason, d.strategy.message)
        else:
            d.status = d.state("None", "FirstRevision", f"revision {d.upd['number']} "
                               f"({d.desired_hash}) is the first: nothing to replace")
        if applied and complete(dep, pods, d.desired_hash, desired):
            d.requeue = max(0.2, settle - (now - since).total_seconds() + 0.2)
        elif applied and can_roll_back and not idle:
            d.requeue = max(0.5, deadline - (now - since).total_seconds() + 0.5)


def _finish(d: Draft, desired: int) -> Plan:
    """The Plan from the finished draft: the Deployment's strategy while it changes template."""
    view = RolloutView(status=d.status, blocked_reason=d.blocked_reason,
                       blocked_message=d.blocked_message, strategy_reason=d.view_reason,
                       strategy_message=d.view_message)
    chosen = None
    if d.moving:
        chosen = (d.strategy.max_surge, d.strategy.max_unavailable)
        if d.strategy.name == "Wait" and d.blocked_reason != "RolloutWaiting":
            chosen = (0, 1)  # going back must not wait
        elif d.strategy.name == "Wait":  # a surge waiting for room stays; a revision applied
            # before the count fell to one replica (the autoscaler) waits with one pod pending
            # beside it (maxSurge 0 too): maxUnavailable 1 took the only replica down
            chosen = (max(1, d.strategy.max_surge), 0)
    if d.canary_moving:  # the stable Deployment never surges beside a canary
        chosen = (0, max(1, min(d.strategy.max_unavailable or 1, max(1, desired - 1))))
    return Plan(target=d.target, strategy=d.strategy, status=d.status, view=view,
                stable_spec=d.stable_spec if d.target == "stable" else None,
                deployment_strategy=chosen, main_replicas=d.main_replicas,
                canary_replicas=d.canary_replicas, requeue_after=d.requeue,
                rolled_back=d.rolled_back, notes=d.notes, canary_weight=d.canary_weight,
                hold_canary_template=d.hold_canary, canary_strategy=d.canary_strategy)
