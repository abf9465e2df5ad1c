"""PURE: what a rollout judges a revision's pods and Deployment by (rollout.plan): a pod that
cannot become Ready by waiting, a revision that waiting cannot bring up, a revision that every
replica runs Ready."""

from __future__ import annotations

from collections.abc import Sequence

from .observed import FAILING_WAIT_REASONS, DeploymentInfo, PodInfo, create_failure
from .pod_life import oom_problem


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


def awaits_a_node(pods: Sequence[PodInfo], revision: str) -> bool:
    """A canary pod of `revision` waits for room on a node (the GPUs a swap keeps at the
    floor, those the stable side has not given up yet) and none of its others runs unready:
    the revision has not been given its chance, and its deadline waits with it. A pod the
    scheduler found no node for but for room (a node selector nothing matches, a claim never
    bound, a taint) is no such wait: the deadline rolls that revision back."""
    mine = [p for p in pods if p.track == "canary" and p.revision == revision
            and not p.terminating]
    return any(not p.node and waits_for_room(p) for p in mine) and not any(
        p.node and not p.ready for p in mine)


def waits_for_room(pod: PodInfo) -> bool:
    """Not scheduled yet, or unschedulable for want of resources on some node (the
    scheduler's 'Insufficient nvidia.com/gpu'; its other reasons say no node would do)."""
    return not pod.unschedulable_message or "Insufficient " in pod.unschedulable_message
