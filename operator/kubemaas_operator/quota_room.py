"""PURE: whether the namespace's ResourceQuotas hold one more pod of a revision (a surge pod),
read ahead from each quota's status (hard minus used), the way the API server's quota admission
counts a pod.

A rollout under a quota that has no room picks a replacement in place (or waits) from the
start, instead of surging and switching only once the Deployment controller's surge pod was
refused (rollout_strategy, reason QuotaExceeded). Only what is known for sure counts: a quota
with scopes (it may not apply to the pod), a cpu or memory limit on a pod that does not state
that resource (a LimitRange default would decide), a quantity that does not parse: no verdict,
and a refused surge pod still turns the rollout into a replacement.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from .quantity import QuantityError, parse_quantity

# The quota names that count the pod itself (one more pod).
_POD_COUNTS = ("pods", "count/pods")
# Bare names the quota reads as requests (the API server's standard resources).
_BARE = ("cpu", "memory", "ephemeral-storage")


@dataclass(frozen=True)
class QuotaInfo:
    """A ResourceQuota as indexes.quota_index keeps it."""

    name: str
    hard: Mapping[str, str]  # status.hard (what the quota controller enforces now)
    used: Mapping[str, str]  # status.used
    scoped: bool = False  # spec.scopes or spec.scopeSelector: it may not count every pod


def waits_on_quota(rollout: Mapping[str, Any]) -> bool:
    """Whether a model's status.rollout waits for room in a quota (a held template, a canary
    that grows only as the quota lets it, one whose pod needs more GPUs than the stable side
    may give up, or a revision that needs more GPUs in all than the quota allows): a change of
    its namespace's quotas is worth a look."""
    return ((rollout.get("reason") == "QuotaExceeded"
             and rollout.get("strategy") in ("Wait", "Canary"))
            or (rollout.get("reason") in ("CanaryNeedsGPUs", "InsufficientGPU")
                and rollout.get("strategy") in ("Wait", "Canary")))


def quota_info(name: str, spec: Mapping[str, Any], status: Mapping[str, Any]) -> QuotaInfo:
    return QuotaInfo(name=name, hard={str(k): str(v) for k, v in (
                         status.get("hard") or {}).items()},
                     used={str(k): str(v) for k, v in (status.get("used") or {}).items()},
                     scoped=bool(spec.get("scopes") or spec.get("scopeSelector")))


def _amount(container: Mapping[str, Any], kind: str, resource: str) -> Decimal | None:
    """The container's request (a request not given is its limit: the API server's default)
    or limit of `resource`, or None when it states neither."""
    res = container.get("resources") or {}
    requests, limits = res.get("requests") or {}, res.get("limits") or {}
    value = limits.get(resource) if kind == "limits" else requests.get(
        resource, limits.get(resource))
    return None if value is None else parse_quantity(value)


def pod_amount(pod_spec: Mapping[str, Any], kind: str, resource: str) -> Decimal | None:
    """What one pod of `pod_spec` counts against `kind` ("requests" or "limits") of `resource`:
    its containers' sum or its largest init container, whichever is more, plus the pod's
    overhead; None when no container states it."""
    containers = list(pod_spec.get("containers") or [])
    inits = list(pod_spec.get("initContainers") or [])
    amounts = [_amount(c, kind, resource) for c in containers]
    init_amounts = [_amount(c, kind, resource) for c in inits]
    if all(a is None for a in (*amounts, *init_amounts)):
        return None
    total = sum((a for a in amounts if a is not None), Decimal(0))
    total = max(total, *(a for a in init_amounts if a is not None), Decimal(0))
    overhead = (pod_spec.get("overhead") or {}).get(resource)
    return total + (parse_quantity(overhead) if overhead is not None else 0)


def _need(pod_spec: Mapping[str, Any], key: str) -> Decimal | None:
    """One pod's amount of quota item `key`, or None when it is unknown or not a pod's."""
    if key in _POD_COUNTS:
        return Decimal(1)
    kind, _, resource = key.partition(".")
    if key in _BARE:
        kind, resource = "requests", key
    elif kind not in ("requests", "limits") or not resource:
        return None  # services, count/deployments.apps, a bare extended resource: not a pod's
    amount = pod_amount(pod_spec, kind, resource)
    if amount is None and resource not in _BARE and kind == "requests":
        return Decimal(0)  # an extended resource (GPUs) the pod does not ask for
    return amount  # cpu/memory not stated: a LimitRange default decides, not known here


def _show(value: Decimal) -> str:
    return format(value.normalize(), "f")


def no_room(quotas: Iterable[QuotaInfo], pod_spec: Mapping[str, Any]) -> tuple[str, str] | None:
    """(the quota's name, what is full, in our words) for the first quota (by name) that has no
    room for one more pod of `pod_spec`, or None when each has room or cannot be judged."""
    for quota in sorted(quotas, key=lambda q: q.name):
        if quota.scoped:
            continue
        full = _full_items(quota, pod_spec)
        if full:
            return quota.name, "; ".join(full) + " (hard limit minus used, read ahead)"
    return None


def _full_items(quota: QuotaInfo, pod_spec: Mapping[str, Any]) -> Sequence[str]:
    out = []
    for key in sorted(quota.hard):
        try:
            need = _need(pod_spec, key)
            if not need:
                continue
            hard = parse_quantity(quota.hard[key])
            used = parse_quantity(quota.used.get(key, "0"))
        except QuantityError:
            continue
        if used + need > hard:
            out.append(f"{key}: {quota.used.get(key, '0')} of {quota.hard[key]} used, one more "
                       f"pod of the new revision needs {_show(need)}")
    return out


def _limits(quotas: Iterable[QuotaInfo], resource: str) -> list[tuple[str, int, int]]:
    """(name, hard, used) of `resource` (requests.<resource>) in each quota that counts every
    pod and limits it; a quantity that does not parse leaves its quota out."""
    key = f"requests.{resource}"
    out = []
    for quota in quotas:
        if quota.scoped or key not in quota.hard:
            continue
        try:
            hard = parse_quantity(quota.hard[key])
            used = parse_quantity(quota.used.get(key, "0"))
        except QuantityError:
            continue
        out.append((quota.name, int(hard), int(used)))
    return out


def free_in_quotas(quotas: Iterable[QuotaInfo], resource: str) -> int | None:
    """How much of extended resource `resource` (GPUs) the tightest quota that counts every pod
    has left (hard minus used, of requests.<resource>), or None when no such quota limits it."""
    frees = [max(0, hard - used) for _, hard, used in _limits(quotas, resource)]
    return min(frees) if frees else None


def hard_in_quotas(quotas: Iterable[QuotaInfo], resource: str) -> tuple[str, int] | None:
    """The tightest quota that counts every pod and limits `resource` (requests.<resource>):
    (its name, its hard limit), or None."""
    hards = sorted((hard, name) for name, hard, _ in _limits(quotas, resource))
    return (hards[0][1], hards[0][0]) if hards else None
