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
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from .api import CanarySpec, CanaryStep, ModelDeploymentSpec
from .pod_life import oom_problem
from .status import FAILING_WAIT_REASONS, DeploymentInfo, PodInfo, RolloutView, create_failure
from .timestamps import format_time, parse_time

HISTORY = 10
# A revision counts as complete once every replica has run it Ready for spec.rollout.settleSeconds
# (the rendered Deployment's minReadySeconds, so the Deployment controller removes old replicas
# only for new ones that stayed Ready that long): a runtime that crashes right after its first
# Ready is still rolled back, and the serving revision's pods are still there to roll back to.
Target = Literal["desired", "stable", "hold"]
# How a canary's traffic splits: by the ready endpoints behind the model's one Service, or by the
# backendRefs weights of the model's HTTPRoute (Gateway API).
TrafficSplit = Literal["ReadyReplicas", "HTTPRoute"]
READY_REPLICAS: TrafficSplit = "ReadyReplicas"
HTTP_ROUTE: TrafficSplit = "HTTPRoute"


@dataclass(frozen=True)
class Strategy:
    name: Literal["Surge", "Replace", "Wait"]
    max_surge: int
    max_unavailable: int
    reason: str
    message: str


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




def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def choose_strategy(spec: ModelDeploymentSpec, desired: int, spare: int) -> Strategy:
    """Surge if the free GPUs of matching nodes hold extra replicas, else replace, else wait.

    `spare`: how many replicas beyond `desired` fit in the free capacity right now (this model's
    own pods counted as free: they are the ones being replaced).
    """
    ro = spec.rollout
    unit = (f"{spec.gpu.count} {spec.gpu.resource}" if spec.gpu is not None else "a replica")
    if ro.max_surge > 0 and spare > 0:
        surge = min(ro.max_surge, spare)
        why = (f"free GPUs on matching nodes hold {_plural(spare, 'more replica')} of "
               f"{unit}" if spec.gpu is not None else "a CPU model: the scheduler places extras")
        return Strategy("Surge", surge, 0, "FreeGPUs",
                        f"surge: {_plural(surge, 'extra replica')} at a time beside the "
                        f"{desired} serving ({why}); ready replicas never drop below {desired}")
    why = ("no free GPU on matching nodes for an extra replica of " + unit
           if ro.max_surge > 0 else "rollout.maxSurge is 0")
    limit = desired if ro.allow_downtime else desired - 1
    unavailable = max(0, min(ro.max_unavailable, limit))
    if unavailable >= 1:
        floor = desired - unavailable
        return Strategy("Replace", 0, unavailable, "NoFreeGPU",
                        f"replace: {why}; replacing {_plural(unavailable, 'replica')} at a time "
                        f"in place (at least {floor} of {desired} stay ready, never more pods "
                        "than GPUs)")
    if desired <= 1 and not ro.allow_downtime:
        hint = ("set spec.rollout.allowDowntime: true to replace the only replica (downtime), "
                "or free a GPU for a surge")
    else:
        hint = "raise spec.rollout.maxUnavailable, or free a GPU for a surge"
    blocker = ("replacing the only replica would leave none serving" if desired <= 1
               else "rollout.maxUnavailable is 0")
    return Strategy("Wait", 0, 0, "NoFreeGPU", f"waiting: {why}, and {blocker}; {hint}")


def sticky_strategy(spec: ModelDeploymentSpec, desired: int, spare: int,
                    pods: Sequence[PodInfo], chosen: Any) -> Strategy:
    """The strategy for this reconcile; a rollout keeps the one it started with.

    Free capacity moves while models roll (a replacing model's old pod gives its GPU back for a
    moment): re-deciding at every look would flip Deployments between surge and replace. A
    replacement stays a replacement; a surge stays a surge unless one of the model's pods cannot
    be scheduled (someone took the free GPUs), and then it becomes a replacement.
    """
    fresh = choose_strategy(spec, desired, spare)
    if chosen == "Replace" and fresh.name == "Surge":
        return choose_strategy(spec, desired, 0)
    if chosen == "Surge" and fresh.name != "Surge" and spec.rollout.max_surge > 0 and not any(
            p.unschedulable_message for p in pods if not p.terminating):
        return choose_strategy(spec, desired, 1)
    return fresh


def _rollout_reason(strategy: Strategy) -> str:
    """The RolloutComplete reason while the Deployment changes template."""
    return "SurgeRollout" if strategy.name == "Surge" else "ReplaceRollout"


def failing(pods: Sequence[PodInfo], revision: str) -> tuple[str, str] | None:
    """A pod of `revision` that cannot become Ready by waiting: out of GPU memory, crash loop,
    image pull, ..."""
    oom = oom_problem([p for p in pods if p.revision == revision], named=True)
    if oom is not None:  # whether it waits in CrashLoopBackOff or runs again: it will die again
        return oom
    for p in pods:
        if p.terminating or p.revision != revision:
            continue
        if p.waiting_reason in FAILING_WAIT_REASONS:
            last = f"; last exit: {p.last_terminated}" if p.last_terminated else ""
            detail = p.waiting_message or p.waiting_reason
            return p.waiting_reason, f"pod {p.name}: {p.waiting_reason} ({detail}){last}"
        if p.phase == "Failed":
            return "ContainerFailed", f"pod {p.name} failed: {p.last_terminated or 'exited'}"
    return None


def blocked(dep: DeploymentInfo | None, revision: str, never: str = "") -> tuple[str, str] | None:
    """A revision that waiting cannot bring up: no node could ever hold one of its replicas
    (`never`, the capacity check's message), or the Deployment cannot create its pods because
    a PriorityClass or ServiceAccount it names does not exist."""
    if never:
        return "NeverFits", never
    if dep is not None and dep.revision == revision and dep.replica_failure:
        reason, message = create_failure(dep.replica_failure)
        if reason != "FailedCreate":
            return reason, message
    return None


def complete(dep: DeploymentInfo | None, pods: Sequence[PodInfo], revision: str,
             desired: int) -> bool:
    """Every replica runs `revision` and is Ready, and the Deployment agrees. Pods that ended
    (phase Failed or Succeeded: a failed revision's, an evicted one) are records, not replicas:
    they stay until someone deletes them and must not hold a good revision back."""
    if dep is None or dep.revision != revision or dep.observed_generation < dep.generation:
        return False
    live = [p for p in pods if not p.terminating and p.phase not in ("Failed", "Succeeded")]
    if any(p.revision != revision for p in live):
        return False
    ready = sum(1 for p in live if p.ready)
    return (ready >= desired and dep.updated_replicas >= desired
            and dep.replicas <= dep.updated_replicas and dep.ready_replicas >= desired)


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
class _Canary:
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


def _canary(spec: ModelDeploymentSpec, canary: CanarySpec, desired: int, spare: int,
            pods: Sequence[PodInfo], upd: dict[str, Any], previous: Any, desired_hash: str,
            strategy: Strategy, now: datetime,
            split: TrafficSplit = READY_REPLICAS) -> _Canary:
    """One look at a canary rollout: how many replicas (GPUs) each Deployment gets now.

    Steps move replicas from the stable Deployment (old template) to the canary (new template);
    the canary grows only into GPUs the stable one has given back or that are free, so the two
    never hold more pods than desired + free. After the last step the stable Deployment takes the
    new template and the canary shrinks as the stable's new replicas become Ready.
    """
    steps = canary.steps
    prev = dict(previous) if isinstance(previous, Mapping) and previous.get(
        "hash") == desired_hash else {}
    step = int(prev.get("step") or 1)
    step_ready_at = parse_time(prev.get("stepReadyAt"))
    main = [p for p in pods if p.track != "canary"]
    can = [p for p in pods if p.track == "canary"]
    main_ready = sum(1 for p in main if p.ready and not p.terminating)
    main_ready_new = sum(1 for p in main if p.ready and not p.terminating
                         and p.revision == desired_hash)
    can_ready = sum(1 for p in can if p.ready and not p.terminating
                    and p.revision == desired_hash)
    traffic = ready_share(can_ready, main_ready)
    by = "by HTTPRoute weights" if split == HTTP_ROUTE else "by ready replicas"
    budget = desired + spare
    number = upd.get("number")
    requeue: float | None = None
    if canary.abort:
        # Back to the current revision: the stable Deployment grows into the GPUs the canary
        # gives back, the canary shrinks as the stable replicas become Ready (-1 when full).
        slack = 0 if spare > 0 else max(1, min(strategy.max_unavailable, max(1, desired - 1)))
        old_ready = sum(1 for p in main if p.ready and not p.terminating
                        and p.revision != desired_hash)
        main_n = max(0, min(desired, budget - len(can)))
        can_n = max(0, min(len(can), desired - old_ready - slack))
        if split == HTTP_ROUTE:  # the route sends nothing to the canary from now on
            traffic = 0
        state = {"hash": desired_hash, "step": 0, "steps": len(steps), "weight": 0,
                 "canaryReplicas": can_n, "stableReplicas": main_n, "trafficPercent": traffic,
                 "trafficSplit": split}
        upd = {**upd, "progressAt": format_time(now)}  # an abort is not a stall
        return _Canary("stable", main_n, can_n, upd, state,
                       "canary aborted by spec.rollout.canary.abort: every replica runs the "
                       "current revision again; set abort to false to start the canary over",
                       None, done=not can and can_n == 0, aborted=True, weight=0)
    if canary.promote is not None and canary.promote == number:
        step = len(steps) + 1
    message: str
    if step <= len(steps):
        weight = steps[step - 1].weight
        want = step_replicas(desired, weight)
        # The stable Deployment gives replicas up only as canary replicas become Ready (at most
        # maxUnavailable short when no GPU is free), the canary grows into what is given up.
        slack = 0 if spare > 0 else max(1, min(strategy.max_unavailable, max(1, desired - 1)))
        main_n = max(desired - want, min(desired, desired - can_ready - slack))
        can_n = min(want, max(len(can), budget - len(main)))
        reached = can_ready >= want and len(main) <= main_n
        pause = steps[step - 1].pause_seconds
        gate = ""
        if reached:
            step_ready_at = step_ready_at or now
            upd = {**upd, "progressAt": format_time(now)}  # waiting at a gate is not a stall
            waited = (now - step_ready_at).total_seconds()
            if canary.paused:
                gate = "; paused (spec.rollout.canary.paused)"
            elif pause is None:
                gate = (f"; waiting for promotion: set spec.rollout.canary.promote to {number}")
            elif waited >= pause:
                step, step_ready_at = step + 1, None
                requeue = 0.05
            else:
                gate = f"; next step in {pause - waited:.0f}s"
                requeue = max(0.1, pause - waited)
        if requeue == 0.05:
            gate = f"; step {step - 1} done, moving on"
        if step <= len(steps) or requeue == 0.05:
            shown = step - 1 if requeue == 0.05 else step
            route = route_weight(steps, shown, desired, can_ready, main_ready)
            if split == HTTP_ROUTE:
                traffic = route
            message = (f"canary step {shown}/{len(steps)}: {weight}% = {want} of {desired} "
                       f"replica(s) on the new revision ({can_ready} Ready), traffic "
                       f"{traffic}% {by}{gate}")
            state = {"hash": desired_hash, "step": step, "steps": len(steps), "weight": weight,
                     "canaryReplicas": can_n, "stableReplicas": main_n,
                     "trafficPercent": traffic, "trafficSplit": split}
            if step_ready_at is not None:
                state["stepReadyAt"] = format_time(step_ready_at)
            if step <= len(steps):
                return _Canary("stable", main_n, can_n, upd, state, message, requeue,
                               weight=route)
    # After the last step: the stable Deployment takes the new template over.
    slack = 0 if spare > 0 else max(1, strategy.max_unavailable)
    main_n = max(0, min(desired, budget - len(can)))
    can_n = max(0, min(len(can), desired - main_ready_new - slack))
    # The route follows the ready replicas now: the canary's share shrinks as the stable
    # Deployment's new replicas become Ready; replicas the canary is about to give up get none.
    if split == HTTP_ROUTE:
        traffic = ready_share(min(can_ready, can_n), main_ready)
    state = {"hash": desired_hash, "step": len(steps) + 1, "steps": len(steps), "weight": 100,
             "canaryReplicas": can_n, "stableReplicas": main_n, "trafficPercent": traffic,
             "trafficSplit": split}
    message = (f"canary promoted: the stable Deployment takes revision {number} over "
               f"({main_ready_new} of {desired} Ready), the canary shrinks to {can_n}, traffic "
               f"{traffic}% to the canary {by}")
    return _Canary("desired", main_n, can_n, upd, state, message, None,
                   done=not can and can_n == 0, weight=traffic)


def _ref(obj: Any) -> dict[str, Any] | None:
    if not isinstance(obj, Mapping) or not obj.get("hash"):
        return None
    return dict(obj)


def _entry(ref: Mapping[str, Any], outcome: str, message: str, now: datetime) -> dict[str, Any]:
    return {"number": int(ref.get("number") or 0), "hash": str(ref.get("hash") or ""),
            "outcome": outcome, "message": message, "time": format_time(now)}


def plan(spec: ModelDeploymentSpec, raw_spec: Mapping[str, Any], desired_hash: str,
         dep: DeploymentInfo | None, pods: Sequence[PodInfo], desired: int, spare: int,
         previous: Mapping[str, Any], now: datetime,
         traffic_split: TrafficSplit = READY_REPLICAS, never: str = "") -> Plan:
    """Decide the Deployment's template and strategy, and the new status.rollout.

    `dep` is the stable (main) Deployment; canary pods are told apart by their track label.
    `traffic_split` says whether a canary's traffic follows an HTTPRoute's weights (then
    Plan.canary_weight is the weight to write) or the ready replicas behind one Service.
    `never`: why no node could ever hold a replica of the spec's revision (the capacity
    check's GPURequestTooLarge or UnknownGPUProduct message), or empty: such a revision is
    rolled back at once, before the serving revision gives up a replica for it.
    """
    cur = _ref(previous.get("current"))
    prev_good = _ref(previous.get("previous"))
    upd = _ref(previous.get("update"))
    failed = _ref(previous.get("failed"))
    stable_spec = previous.get("stableSpec") if isinstance(previous.get("stableSpec"),
                                                           Mapping) else None
    history: list[dict[str, Any]] = [dict(h) for h in previous.get("history") or []
                                     if isinstance(h, Mapping)]
    numbers = [int(r.get("number") or 0) for r in (cur, prev_good, upd, failed, *history) if r]
    next_number = max(numbers, default=0) + 1
    live_hash = dep.revision if dep is not None else ""
    strategy = sticky_strategy(spec, desired, spare, pods,
                               previous.get("strategy") if upd is not None
                               and upd["hash"] == desired_hash else None)
    deadline = spec.rollout.progress_deadline_seconds
    view_reason = view_message = ""
    blocked_reason = blocked_message = ""
    target: Target = "desired"
    requeue: float | None = None
    moving = False  # the Deployment is (to be) changing template: the strategy matters
    rolled_back = False
    notes: list[str] = []
    main_replicas: int | None = None
    canary_replicas: int | None = None
    canary_state: dict[str, Any] | None = None
    canary_moving = False
    canary_weight = 0

    def state(strategy_name: str, reason: str, message: str) -> dict[str, Any]:
        out: dict[str, Any] = {"strategy": strategy_name, "reason": reason, "message": message,
                               "current": cur, "previous": prev_good, "update": upd,
                               "failed": failed, "history": history[-HISTORY:] or None,
                               "stableSpec": stable_spec, "canary": canary_state}
        return {k: v for k, v in out.items() if v is not None}

    if failed is not None and failed["hash"] == desired_hash and cur is not None and (
            stable_spec is not None):
        # A revision that was rolled back: keep the last good one until the spec changes.
        target = "stable"
        blocked_reason = "RolledBack"
        blocked_message = (f"revision {failed.get('number')} ({desired_hash}) was rolled back to "
                           f"revision {cur.get('number')} ({cur['hash']}): "
                           f"{failed.get('message', '')}; change the spec to try again")
        moving = live_hash != cur["hash"]
        status = state(strategy.name if moving else "None", "RolledBack", blocked_message)
    elif cur is not None and desired_hash == cur["hash"]:
        # Steady state (or the spec went back to the good revision while another rolled out).
        if upd is not None and upd["hash"] != desired_hash:
            history.append(_entry(upd, "Superseded", f"the spec went back to revision "
                                  f"{cur.get('number')}", now))
            upd = None
        failed = None
        stable_spec = dict(raw_spec)
        if live_hash and live_hash != desired_hash:
            moving = True
            view_reason, view_message = _rollout_reason(strategy), strategy.message
            status = state(strategy.name, strategy.reason, strategy.message)
        else:
            status = state("None", "UpToDate", f"revision {cur.get('number')} ({desired_hash}) "
                           "is the current revision")
    else:
        # A new revision (or the first one).
        if upd is None or upd["hash"] != desired_hash:
            if upd is not None:
                history.append(_entry(upd, "Superseded", "the spec changed again before it "
                                      "completed", now))
            upd = {"number": next_number, "hash": desired_hash, "startedAt": format_time(now),
                   "progressAt": format_time(now), "ready": 0}
            failed = None
            notes.append(f"revision {next_number} ({desired_hash}) starts")
        mine = [p for p in pods if not p.terminating and p.revision == desired_hash]
        ready = sum(1 for p in mine if p.ready)
        if ready > int(upd.get("ready") or 0):
            upd = {**upd, "ready": ready, "progressAt": format_time(now)}
        # Something else ran before: this is a rollout, not the first revision.
        rolling = dep is not None and bool(live_hash) and (
            cur is not None or live_hash != desired_hash
            or any(p.revision != desired_hash for p in pods if not p.terminating))
        applied = live_hash == desired_hash
        canary = spec.rollout.canary
        if (canary is not None and rolling and cur is not None and stable_spec is not None
                and not (applied and not any(p.track == "canary" for p in pods)
                         and (previous.get("canary") or {}).get("hash") != desired_hash)):
            c = _canary(spec, canary, desired, spare, pods, dict(upd), previous.get("canary"),
                        desired_hash, strategy, now, traffic_split)
            upd, canary_state = c.update, c.state
            canary_weight = c.weight
            main_replicas, canary_replicas = c.main_replicas, c.canary_replicas
            if c.aborted and c.done:  # every replica is back: the canary Deployment goes
                canary_replicas = None
            canary_moving = True
            target = c.target
            requeue = c.requeue_after
            view_reason, view_message = "CanaryRollout", (
                f"revision {upd['number']} ({desired_hash}): {c.message}")
            if c.aborted:
                blocked_reason, blocked_message = "CanaryAborted", (
                    f"revision {upd['number']} ({desired_hash}): {c.message}")
            status = state("Canary", "CanarySteps", c.message)
            problem = failing(pods, desired_hash) or blocked(dep, desired_hash, never)
            since = parse_time(upd.get("progressAt")) or now
            overdue = (now - since) > timedelta(seconds=deadline)
            if (problem is not None or overdue) and not c.aborted:
                why = (problem[1] if problem is not None else
                       f"no canary replica became Ready for over {deadline}s "
                       "(progressDeadlineSeconds)")
                failed = {"number": upd["number"], "hash": desired_hash, "message": why}
                history.append(_entry(upd, "RolledBack", why, now))
                upd, canary_state = None, None
                main_replicas = canary_replicas = None
                canary_weight = 0
                target = "stable"
                rolled_back = True
                blocked_reason = "RolledBack"
                blocked_message = (f"revision {failed['number']} ({desired_hash}) was rolled "
                                   f"back to revision {cur.get('number')} ({cur['hash']}): "
                                   f"{why}; change the spec to try again")
                view_reason = view_message = ""
                status = state(strategy.name, "RolledBack", blocked_message)
                notes.append(blocked_message)
            elif c.done and not c.aborted and applied and complete(dep, pods, desired_hash,
                                                                   desired):
                history.append(_entry(upd, "Complete", f"{_plural(desired, 'replica')} Ready "
                                      f"(canary, {len(canary.steps)} step(s))", now))
                prev_good = cur
                cur = {"number": upd["number"], "hash": desired_hash}
                upd, canary_state = None, None
                main_replicas = canary_replicas = None
                canary_weight = 0
                stable_spec = dict(raw_spec)
                view_reason = view_message = ""
                status = state("None", "UpToDate", f"revision {cur['number']} "
                               f"({desired_hash}) is the current revision")
                notes.append(f"revision {cur['number']} ({desired_hash}) complete (canary)")
        elif rolling and not applied and strategy.name == "Wait" and not never:
            target = "hold"
            blocked_reason, blocked_message = "RolloutWaiting", (
                f"revision {upd['number']} ({desired_hash}) waits: {strategy.message}")
            requeue = 5.0
            status = state("Wait", strategy.reason, strategy.message)
        else:
            problem = (failing(pods, desired_hash) if applied else None) or blocked(
                dep, desired_hash, never)
            since = parse_time(upd.get("progressAt")) or now
            overdue = applied and (now - since) > timedelta(seconds=deadline)
            settle = float(min(spec.rollout.settle_seconds, deadline))
            settled = (now - since).total_seconds() >= settle
            done = applied and complete(dep, pods, desired_hash, desired) and settled
            can_roll_back = cur is not None and stable_spec is not None and rolling
            if not done and can_roll_back and (problem is not None or overdue):
                assert cur is not None
                why = (problem[1] if problem is not None else
                       f"{ready} of {desired} replica(s) Ready and no progress for over "
                       f"{deadline}s (progressDeadlineSeconds)")
                failed = {"number": upd["number"], "hash": desired_hash, "message": why}
                history.append(_entry(upd, "RolledBack", why, now))
                upd = None
                target = "stable"
                rolled_back = moving = True
                blocked_reason = "RolledBack"
                blocked_message = (f"revision {failed['number']} ({desired_hash}) was rolled "
                                   f"back to revision {cur.get('number')} ({cur['hash']}): "
                                   f"{why}; change the spec to try again")
                status = state(strategy.name, "RolledBack", blocked_message)
                notes.append(blocked_message)
            elif done:
                history.append(_entry(upd, "Complete", f"{_plural(desired, 'replica')} Ready "
                                      f"({strategy.name.lower() if rolling else 'first'} "
                                      "rollout)", now))
                if cur is not None and cur["hash"] != desired_hash:
                    prev_good = cur
                cur = {"number": upd["number"], "hash": desired_hash}
                upd = None
                stable_spec = dict(raw_spec)
                status = state("None", "UpToDate", f"revision {cur['number']} "
                               f"({desired_hash}) is the current revision")
                notes.append(f"revision {cur['number']} ({desired_hash}) complete")
            else:
                if rolling:
                    moving = True
                    view_reason, view_message = _rollout_reason(strategy), (
                        f"revision {upd['number']} ({desired_hash}): {strategy.message}; "
                        f"{ready} of {desired} new replica(s) Ready")
                    status = state(strategy.name, strategy.reason, strategy.message)
                else:
                    status = state("None", "FirstRevision", f"revision {upd['number']} "
                                   f"({desired_hash}) is the first: nothing to replace")
                if applied and complete(dep, pods, desired_hash, desired):
                    requeue = max(0.2, settle - (now - since).total_seconds() + 0.2)
                elif applied and can_roll_back:
                    left = deadline - (now - since).total_seconds()
                    requeue = max(0.5, left + 0.5)
    view = RolloutView(status=status, blocked_reason=blocked_reason,
                       blocked_message=blocked_message, strategy_reason=view_reason,
                       strategy_message=view_message)
    chosen = None
    if moving:
        chosen = ((strategy.max_surge, strategy.max_unavailable) if strategy.name != "Wait"
                  else (0, 1))  # going back to the good revision must not wait
    if canary_moving:  # the stable Deployment never surges beside a canary
        chosen = (0, max(1, min(strategy.max_unavailable or 1, max(1, desired - 1))))
    return Plan(target=target, strategy=strategy, status=status, view=view,
                stable_spec=stable_spec if target == "stable" else None,
                deployment_strategy=chosen, main_replicas=main_replicas,
                canary_replicas=canary_replicas,
                requeue_after=requeue, rolled_back=rolled_back, notes=notes,
                canary_weight=canary_weight)
