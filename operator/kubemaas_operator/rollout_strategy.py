"""PURE: a rollout's Deployment strategy: surge onto free GPUs, replace in place, or wait
(rollout.py decides the rest of the rollout).

Surge when the free GPUs of matching nodes hold extra replicas (maxUnavailable 0: never below the
desired ready count); otherwise replace within spec.rollout.maxUnavailable (never more pods than
GPUs); for a single replica without a spare GPU wait unless downtime is allowed; at zero replicas
replace at once (nothing serves). A rollout keeps the strategy it started with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .api import ModelDeploymentSpec
from .observed import DeploymentInfo, PodInfo, quota_refusal
from .status import plural

# How soon a rollout that waits for room looks again. A GPU freed on a node shows in no event of
# the model: it is looked for every WAIT_RECHECK_S. A ResourceQuota's change wakes the models that
# wait on it (handlers.quota_event): QUOTA_RECHECK_S is only a slow safety net.
WAIT_RECHECK_S = 5.0
QUOTA_RECHECK_S = 60.0


@dataclass(frozen=True)
class Strategy:
    name: Literal["Surge", "Replace", "Wait"]
    max_surge: int
    max_unavailable: int
    reason: str
    message: str
    # (the ResourceQuota's name, the API server's words): a surge pod it refused made this
    # strategy (reason QuotaExceeded); or (its name, what is full in our words): read ahead, it
    # had no room for one (quota_room.py); kept in status.rollout.quota while the rollout runs
    quota: tuple[str, str] | None = None

    @property
    def recheck_s(self) -> float:
        """When a rollout that waits on this strategy looks again, if nothing wakes it before."""
        return QUOTA_RECHECK_S if self.reason == "QuotaExceeded" else WAIT_RECHECK_S


def choose_strategy(spec: ModelDeploymentSpec, desired: int, spare: int,
                    quota: tuple[str, str] | None = None) -> Strategy:
    """Surge if the free GPUs of matching nodes hold extra replicas, else replace, else wait.

    `spare`: how many replicas beyond `desired` fit in the free capacity right now (this model's
    own pods counted as free: they are the ones being replaced). `quota`: (name, the API
    server's words) when the namespace's ResourceQuota refused a surge pod, or (name, what is
    full) when it has no room for one, read ahead: no surge then, whatever the nodes hold.
    """
    ro = spec.rollout
    if desired <= 0:  # nothing runs (replicas 0, or KEDA took it to zero): nothing to keep serving
        return Strategy("Replace", 0, 1, "NoReplicas", "replace: no replica runs (0 desired): "
                        "the new template is applied at once; its pods start when the model "
                        "scales up")
    unit = (f"{spec.gpu.count} {spec.gpu.resource}" if spec.gpu is not None else "a replica")
    if ro.max_surge > 0 and spare > 0 and quota is None:
        surge = min(ro.max_surge, spare)
        why = (f"free GPUs on matching nodes hold {plural(spare, 'more replica')} of "
               f"{unit}" if spec.gpu is not None else "a CPU model: the scheduler places extras")
        return Strategy("Surge", surge, 0, "FreeGPUs",
                        f"surge: {plural(surge, 'extra replica')} at a time beside the "
                        f"{desired} serving ({why}); ready replicas never drop below {desired}")
    if quota is not None:
        said = "the API server said: " if "exceeded quota" in quota[1] else ""
        why = (f"the namespace's ResourceQuota {quota[0]} has no room for a surge pod "
               f"({said}{quota[1]})")
        reason, room = "QuotaExceeded", f"raise ResourceQuota {quota[0]} for a surge"
    else:
        why = ("no free GPU on matching nodes for an extra replica of " + unit
               if ro.max_surge > 0 else "rollout.maxSurge is 0")
        reason, room = "NoFreeGPU", "free a GPU for a surge"
    limit = desired if ro.allow_downtime else desired - 1
    unavailable = max(0, min(ro.max_unavailable, limit))
    if unavailable >= 1:
        floor = desired - unavailable
        return Strategy("Replace", 0, unavailable, reason,
                        f"replace: {why}; replacing {plural(unavailable, 'replica')} at a time "
                        f"in place (at least {floor} of {desired} stay ready, never more pods "
                        "than GPUs)", quota)
    if desired <= 1 and not ro.allow_downtime:
        hint = ("set spec.rollout.allowDowntime: true to replace the only replica (downtime), "
                f"or {room}")
    else:
        hint = f"raise spec.rollout.maxUnavailable, or {room}"
    blocker = ("replacing the only replica would leave none serving" if desired <= 1
               else "rollout.maxUnavailable is 0")
    # A surge already applied stays pending on the Deployment (maxSurge, never below the
    # desired ready count): it starts by itself once room appears.
    return Strategy("Wait", ro.max_surge, 0, reason, f"waiting: {why}, and {blocker}; {hint}",
                    quota)


def canary_quota_note(strategy: Strategy, ratio: int = 1) -> str:
    """What a canary's message adds when the namespace's quota has no room for one more pod
    (`strategy.quota`): its pods take the room of stable ones (`ratio` per canary pod), given
    up first."""
    if strategy.quota is None:
        return ""
    name, words = strategy.quota
    said = "the API server said: " if "exceeded quota" in words else ""
    given = "a replica" if ratio <= 1 else f"{ratio} replicas per canary pod"
    return (f"; the namespace's ResourceQuota {name} has no room for a canary pod beside the "
            f"stable ones ({said}{words}): the stable Deployment gives {given} up first, and "
            f"the canary takes its room (a canary started with room in ResourceQuota {name} runs "
            "beside them)")


def remembered_quota(previous: Mapping[str, Any]) -> tuple[str, str] | None:
    """The quota refusal a rollout's strategy was chosen for (status.rollout.quota): the
    Deployment's ReplicaFailure goes once a replacement has made room, the reason to replace
    stays."""
    quota = previous.get("quota") if previous.get("reason") == "QuotaExceeded" else None
    if not isinstance(quota, Mapping) or not quota.get("name"):
        return None
    return str(quota["name"]), str(quota.get("message") or "")


def sticky_strategy(spec: ModelDeploymentSpec, desired: int, spare: int,
                    pods: Sequence[PodInfo], chosen: Any,
                    quota: tuple[str, str] | None = None, pool: int | None = None) -> Strategy:
    """The strategy for this reconcile; a rollout keeps the one it started with.

    Free capacity moves while models roll (a replacing model's old pod gives its GPU back for a
    moment): re-deciding at every look would flip Deployments between surge and replace. A
    replacement stays a replacement; a surge stays a surge unless one of the model's pods cannot
    be scheduled (someone took the free GPUs) or the namespace's ResourceQuota refused the surge
    pod (`quota`), and then it becomes a replacement (or waits, where none may be replaced).
    So it does when the GPUs free or held by the model hold no pod beside the desired count
    (`pool`: spare counted with the model's own pods as free; 0, say, once the autoscaler
    raised the count to fill every GPU): no surge pod could ever bind, and the in-place
    replacement within maxUnavailable is what moves the rollout on.
    """
    fresh = choose_strategy(spec, desired, spare, quota)
    if chosen == "Replace" and fresh.name == "Surge":
        return choose_strategy(spec, desired, 0)
    if chosen == "Surge" and fresh.name != "Surge" and quota is None and (
            pool is None or pool > 0) and (
            spec.rollout.max_surge > 0) and not any(
            p.unschedulable_message for p in pods if not p.terminating):
        return choose_strategy(spec, desired, 1)
    return fresh


def pick_strategy(spec: ModelDeploymentSpec, desired: int, spare: int, pods: Sequence[PodInfo],
                  previous: Mapping[str, Any], same_update: bool, applied: bool,
                  dep: DeploymentInfo | None, quota_full: tuple[str, str] | None,
                  pool: int | None = None) -> Strategy:
    """The rollout's strategy (rollout_strategy.sticky_strategy), except for a revision applied
    at zero replicas: the Deployment carries it already and the model's pods, as it scales up,
    start on it; there is nothing to wait for (a fresh choice would say 'waiting' without a
    free GPU). A surge pod of this revision that the namespace's ResourceQuota refused (the
    Deployment's ReplicaFailure) counts as no room for a surge; a replacement chosen for that
    keeps its reason. So does a quota read ahead without room (`quota_full`), unless a surge
    is under way: its own pod fills the quota then. A canary chosen under the quota keeps it
    too: its stable Deployment gave replicas up for the canary's pods (canary.py, no spare).
    `pool`: sticky_strategy's."""
    at_zero = same_update and previous.get("reason") == "NoReplicas"
    if at_zero and applied:
        return Strategy("Replace", 0, 1, "NoReplicas", "replace: applied while no replica ran; "
                        "its pods start as the model scales up")
    chosen = previous.get("strategy") if same_update and not at_zero else None
    # a replacement (or a canary) keeps the quota it was chosen for (its words stay, no status
    # write; a canary does not flip back to a surge as its stable pods leave room)
    quota = remembered_quota(previous) if chosen in ("Replace", "Canary") else None
    if quota is None and dep is not None and applied and dep.replica_failure:
        quota = quota_refusal(dep.replica_failure)
    if quota is None and chosen != "Surge":
        quota = quota_full
    return sticky_strategy(spec, desired, spare, pods, chosen, quota, pool)


def rollout_reason(strategy: Strategy) -> str:
    """The RolloutComplete reason while the Deployment changes template."""
    return "SurgeRollout" if strategy.name == "Surge" else "ReplaceRollout"
