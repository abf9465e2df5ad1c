"""PURE: how many stable replicas one canary pod needs the GPUs of, when the new revision's pods
ask for more GPUs each than the stable revision's (a larger tensor parallelism, a larger
spec.gpu.count, a model re-sized by sizing.py).

Read from the rendered pod specs' requests (quota_room.pod_amount, the way the scheduler and a
ResourceQuota count a pod): a canary pod of 2 GPUs where a stable replica frees 1 takes the room
of 2 stable replicas. canary.py moves replicas in these units when no GPU is free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any

from .api import ModelDeploymentSpec, RolloutSpec
from .canary import first_room
from .observed import PodInfo, deployment_info
from .quantity import QuantityError
from .quota_room import QuotaInfo, free_in_quotas, hard_in_quotas, pod_amount
from .scheduling import NodeInfo, PendingDemand, check_capacity, most_held
from .status import plural


@dataclass(frozen=True)
class GpuRatio:
    """GPUs one canary-side pod and one stable-side pod request (of `resource`)."""

    resource: str = "nvidia.com/gpu"
    new: int = 0
    old: int = 0
    # stable-size replicas the matching nodes hold, this model's pods counted as free (its own
    # GPUs and the free ones; held_by_nodes); 0: not counted
    held: int = 0
    # what the namespace's tightest quota has left of the resource (hard minus used), or None
    quota_free: int | None = None
    # GPUs of a canary pod of a revision the spec left (the live canary Deployment's, while it
    # runs another revision than the spec's and the stable one); 0: none
    was: int = 0
    # the new revision's pods the matching nodes hold were nothing else on them, and their GPUs
    # (scheduling.most_held); 0: not counted
    nodes_hold: int = 0
    nodes_gpus: int = 0
    # the tightest quota's name and hard limit of the resource, or None
    quota_hard: tuple[str, int] | None = None

    @property
    def was_per(self) -> Fraction:
        """Stable replicas' GPUs in one superseded canary pod (`was`), at least 1."""
        if self.old <= 0 or self.was <= self.old:
            return Fraction(1)
        return Fraction(self.was, self.old)

    def within_quota(self, stable: int, pods: Iterable[PodInfo]) -> int:
        """Stable-size replicas under a full quota: what the quota has left plus what this
        model's live `pods` hold of it, in stable replicas (at least the stable revision's
        `stable`, at most what the nodes hold, when counted)."""
        if self.quota_free is None or self.old <= 0:
            return stable
        own = sum(self.new if p.track == "canary" else self.old for p in pods
                  if p.phase not in ("Failed", "Succeeded"))
        units = max(stable, (self.quota_free + own) // self.old)
        return min(units, max(stable, self.held)) if self.held else units

    @property
    def per(self) -> Fraction:
        """Stable replicas' GPUs in one canary pod, unrounded (3 GPUs for 2: 3/2), at least 1:
        what a canary pod takes of the room the stable side and free GPUs leave."""
        if self.old <= 0 or self.new <= self.old:
            return Fraction(1)
        return Fraction(self.new, self.old)

    @property
    def ratio(self) -> int:
        """Stable replicas one canary pod needs the GPUs of: ceil(new / old), at least 1."""
        if self.old <= 0 or self.new <= self.old:
            return 1
        return -(-self.new // self.old)


ONE = GpuRatio()


def _gpus(pod_spec: Mapping[str, Any] | None, resource: str) -> int:
    if not pod_spec:
        return 0
    try:
        amount = pod_amount(pod_spec, "requests", resource)
    except QuantityError:
        return 0
    return int(amount) if amount is not None else 0


def template_spec(deployment: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    """A Deployment's pod spec (spec.template.spec), or None."""
    if not deployment:
        return None
    spec = ((deployment.get("spec") or {}).get("template") or {}).get("spec")
    return spec if isinstance(spec, Mapping) else None


def gpu_ratio(canary_pod: Mapping[str, Any] | None, stable_pod: Mapping[str, Any] | None,
              resource: str | None) -> GpuRatio:
    """The ratio between a canary-side pod spec and a stable-side one (ONE without a GPU)."""
    if not resource:
        return ONE
    return GpuRatio(resource, _gpus(canary_pod, resource), _gpus(stable_pod, resource))


def rollout_gpus(resource: str | None, new_pod: Mapping[str, Any] | None, applied: bool,
                 stable_dep: Mapping[str, Any] | None,
                 canary_dep: Mapping[str, Any] | None, revision: str = "") -> GpuRatio:
    """The GPUs of a canary-side pod (the spec's revision, `new_pod`; once the stable
    Deployment carries it (`applied`: a promotion, or the spec gone back to the stable
    revision), the canary Deployment's own) and of a stable-side pod (the stable
    Deployment's); and `was`, a canary Deployment's of another revision than the spec's
    (`revision`: a canary the spec changed again under)."""
    if applied and canary_dep is not None:
        new_pod = template_spec(canary_dep)
    ratio = gpu_ratio(new_pod, template_spec(stable_dep), resource)
    running = deployment_info(canary_dep).revision if canary_dep is not None else ""
    if ratio is ONE or applied or not revision or running in ("", revision):
        return ratio
    return replace(ratio, was=_gpus(template_spec(canary_dep), ratio.resource))


def held_by_nodes(ratio: GpuRatio, spec: ModelDeploymentSpec, nodes: Iterable[NodeInfo],
                  used: Mapping[str, Mapping[str, int]], pending: Iterable[PendingDemand],
                  quotas: Iterable[QuotaInfo] = ()) -> GpuRatio:
    """`ratio` with what the matching nodes hold in stable-size replicas (scheduling
    .check_capacity at the stable pod's GPU count) and what the namespace's quotas have left,
    where a canary pod needs more or fewer GPUs than a stable replica's."""
    if (ratio.ratio <= 1 and ratio.was <= ratio.old and ratio.new >= ratio.old) or (
            spec.gpu is None):
        return ratio
    nodes = list(nodes)
    stable = replace(spec, gpu=replace(spec.gpu, count=ratio.old, sizing=None))
    hold, gpus = most_held(replace(spec, gpu=replace(spec.gpu, count=ratio.new, sizing=None)),
                           nodes) if ratio.new > ratio.old else (0, 0)
    quotas = list(quotas)
    return replace(ratio, held=check_capacity(stable, nodes, used, 1, pending=pending).room,
                   quota_free=free_in_quotas(quotas, ratio.resource), nodes_hold=hold,
                   nodes_gpus=gpus, quota_hard=hard_in_quotas(quotas, ratio.resource))


def never_all(ratio: GpuRatio, desired: int) -> str:
    """Why the new revision's `desired` replicas, of larger pods than the stable revision's,
    could not all run even with every stable replica gone (more GPUs in all than the matching
    nodes hold, were nothing else on them, or than the namespace's quota allows), or "" when
    they could (or it is not counted)."""
    if desired <= 0 or ratio.new <= ratio.old:
        return ""
    need = desired * ratio.new
    most, where, fixes = desired, [], [f"ask for fewer {ratio.resource} per pod (spec.gpu.count)"]
    if 0 < ratio.nodes_hold < desired:
        most = ratio.nodes_hold
        where.append(f"the matching nodes have {ratio.nodes_gpus} (room for "
                     f"{plural(ratio.nodes_hold, 'such pod')} were nothing else on them)")
        fixes.append("add matching nodes")
    if ratio.quota_hard is not None and ratio.quota_hard[1] < need:
        most = min(most, ratio.quota_hard[1] // ratio.new)
        where.append(f"the namespace's ResourceQuota {ratio.quota_hard[0]} allows "
                     f"{ratio.quota_hard[1]}")
        fixes.append(f"raise {ratio.quota_hard[0]}'s requests.{ratio.resource}")
    if not where:
        return ""
    if most > 0:
        fixes.insert(0, f"set spec.replicas to {most} or fewer")
    return (f"its {plural(desired, 'replica')} need {need} {ratio.resource} in all "
            f"({ratio.new} per pod, the stable revision's {ratio.old}), but "
            f"{' and '.join(where)}: they could not all run even with every stable replica "
            f"gone; {', '.join(fixes[:-1])} or {fixes[-1]}")


def spare_in_gpus(ratio: GpuRatio, desired: int, spare: int) -> int:
    """`spare` (new-revision pods the free GPUs hold beyond the `desired` replicas, counted as
    the capacity check counts them: as if this model's pods were all of the new size) in
    stable-size replicas where the new pods are smaller (2 -> 1 GPU per pod: the stable
    replicas hold more than counted, and a 2-GPU replica's GPUs are no room for two more
    1-GPU pods beside it): what the matching nodes hold of them (`held`) beyond `desired`, so
    a canary pod is asked for only where its GPUs are free. Unchanged when they are not."""
    if ratio.new <= 0 or ratio.old <= ratio.new:
        return spare
    return max(0, min(spare, ratio.held - desired))


def canary_short(ratio: GpuRatio, desired: int, spare: int, strategy_unavailable: int,
                 units: int, rollout: RolloutSpec) -> str:
    """Why the first canary pod cannot fit in what the stable side may give up (canary
    .first_room, in stable replicas; `strategy_unavailable`: the rollout strategy's
    maxUnavailable), or "" when it can."""
    need = ratio.ratio
    room = first_room(desired, spare, strategy_unavailable, need, units)
    if room >= need or desired <= 0:
        return ""
    max_unavailable, allow_downtime = rollout.max_unavailable, rollout.allow_downtime
    limit = desired if allow_downtime else desired - 1
    if need <= limit:
        fix = f"raise spec.rollout.maxUnavailable to {need}"
    elif need <= desired:
        fix = (f"set spec.rollout.allowDowntime: true and spec.rollout.maxUnavailable: {need} "
               f"(all {desired} stable replicas would go for it)")
    else:
        fix = f"raise spec.replicas (the stable side has {desired})"
    missing = (need - room) * ratio.old
    return (f"a canary pod needs {ratio.new} {ratio.resource} and a stable replica frees "
            f"{ratio.old}: the stable Deployment must give up {need} replicas for it, but with "
            f"no free GPU it may run only {room} short (spec.rollout.maxUnavailable "
            f"{max_unavailable}, {desired} replica(s)"
            + ("" if allow_downtime else ", one kept serving without spec.rollout.allowDowntime")
            + f"); {fix}, or free {missing} more {ratio.resource} on matching nodes (and in the "
            "namespace's ResourceQuota)")
