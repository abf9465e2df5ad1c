"""PURE: the room a plain rollout (no canary) has for surge pods, counted at the new revision's
pod size with the model's own pods holding the GPUs they hold.

The capacity check (scheduling.check_capacity) counts this model's own pods as free: right for
"could the spec's replicas ever run", wrong for a surge, where no old pod goes before a new one
is available (maxUnavailable 0). Counted that way, a 1-GPU revision arriving while 2-GPU pods
held every GPU saw room for surge pods that could not bind (the Deployment kept every old pod
for them until the progress deadline rolled the revision back), and a 2-GPU revision beside a
1-GPU replica saw no room (3 GPUs: one 2-GPU pod "per" replica) with 2 GPUs free for it.

Here the GPUs the model's pods hold stay held; the surge room is the pods bound now plus the
new-size pods the free GPUs hold, beyond the desired count. Pods already surged beside the
desired ones count as room (they hold it), so the number stays put while a surge runs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from .api import ModelDeploymentSpec
from .gpu_ratio import GpuRatio
from .observed import PodInfo
from .rollout_strategy import Strategy, choose_strategy
from .scheduling import NodeInfo, PendingDemand, check_capacity
from .status import plural


def with_own(used: Mapping[str, Mapping[str, int]],
             own: Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Others' GPU requests per node (`used`) plus the model's own bound pods' (`own`)."""
    out = {node: dict(per) for node, per in used.items()}
    for node, per in own.items():
        mine = out.setdefault(node, {})
        for resource, count in per.items():
            mine[resource] = mine.get(resource, 0) + count
    return out


def surge_room(spec: ModelDeploymentSpec, nodes: Iterable[NodeInfo],
               used: Mapping[str, Mapping[str, int]], own: Mapping[str, Mapping[str, int]],
               pending: Iterable[PendingDemand], pods: Sequence[PodInfo],
               desired: int) -> int | None:
    """Pods of the spec's revision that can run beyond `desired` with no pod of the model
    deleted first: the model's bound pods (any revision, any size; terminating ones too) plus the
    spec-size pods that the GPUs free of others' and of the model's own pods hold (after the
    waiting demand of others), less `desired`. None for a model without GPUs (the scheduler
    places a CPU model's extras) or at zero replicas (nothing to surge beside)."""
    if spec.gpu is None or desired <= 0:
        return None
    free = check_capacity(spec, nodes, with_own(used, own), 1, pending=pending).room
    # terminating pods too: `own` counts their GPUs held until they are gone, and left out
    # here their GPUs counted nowhere (the room fell each time an old pod was deleted)
    bound = sum(1 for p in pods if p.node and p.phase not in ("Failed", "Succeeded"))
    return max(0, bound + free - desired)


def plain(spec: ModelDeploymentSpec, pods: Sequence[PodInfo],
          previous: Mapping[str, object]) -> bool:
    """A rollout without a canary: none in the spec, none running, none on record."""
    return (spec.rollout.canary is None and not previous.get("canary")
            and not any(p.track == "canary" for p in pods))


def old_left(pods: Sequence[PodInfo], desired_hash: str) -> bool:
    """Pods of another revision still serving (not terminating): what a surge that the pool
    cannot hold would have to replace in place. None left, the surge is done but for its last
    pods' settle; turning it into a replacement (or, for one replica, a wait) then replaces
    nothing, and where the new pods are larger than the old (1 x 1 GPU -> 2 GPUs on 3: a pool
    of no 2-GPU pod beside the replica) it recorded a completed surge as a "wait rollout"."""
    return any(p.revision != desired_hash and not p.terminating for p in pods)


def surge_finishes(gpu: GpuRatio, desired: int) -> bool:
    """Whether a surge of pods larger than the serving ones has room for its last pod, which
    binds beside `desired` - 1 new pods and the last serving one (it goes only once that pod is
    Ready): the GPUs free or held by the model (`gpu.held`, in serving-size pods) hold
    `desired` new pods and one serving pod. Room for the next surge pod (surge_room) is not
    room for the last: each serving pod given up frees less than the new one takes. `held` is
    rounded down: up to `old` - 1 GPUs more may be there, and they count (a surge that might
    finish starts, as before). True where the pods are not larger or nothing is counted."""
    if desired <= 0 or gpu.old <= 0 or gpu.new <= gpu.old or gpu.held <= 0:
        return True
    return gpu.held * gpu.old + gpu.old - 1 >= desired * gpu.new + gpu.old


def whole_surge(strategy: Strategy, spec: ModelDeploymentSpec, desired: int, gpu: GpuRatio,
                plain_unapplied: bool) -> Strategy:
    """`strategy`, unless it is the surge of a plain rollout not applied yet
    (`plain_unapplied`) that could not finish (surge_finishes) where no replica may be
    replaced in place (maxUnavailable 0, or a single replica without allowDowntime): that one
    waits before it starts, the serving revision untouched, rather than stall halfway with
    its last pod Pending for good."""
    if not plain_unapplied or strategy.name != "Surge" or surge_finishes(gpu, desired):
        return strategy
    fallback = choose_strategy(spec, desired, 0)
    if fallback.name != "Wait":  # a surge that runs out of room turns into a replacement
        return strategy
    need = desired * gpu.new + gpu.old
    blocker = ("replacing the only replica would leave none serving" if desired <= 1
               else "rollout.maxUnavailable is 0")
    return Strategy("Wait", strategy.max_surge, 0, "NoFreeGPU", (
        f"waiting: a surge could not finish: its last pod of {gpu.new} {gpu.resource} binds "
        f"beside {plural(desired - 1, 'new replica')} and the last serving one ({gpu.old}), "
        f"{need} {gpu.resource} in all, and the GPUs free or held by this model on matching "
        f"nodes hold {plural(gpu.held, 'serving pod')}; {blocker}; raise "
        f"spec.rollout.maxUnavailable, or free {gpu.resource} on matching nodes"))
