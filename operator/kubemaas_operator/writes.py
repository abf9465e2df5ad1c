"""The writes of a ModelDeployment's reconcile pass that are not its children: the status (with
its Events) and the autoscaling floor's replicas; an API error becomes a `Retry`."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from .api import API_VERSION, KIND
from .floor import FLOOR_MANAGER
from .k8s import ApiError, AsyncCluster
from .memory import Memory
from .metrics import count_rollouts
from .render import replicas_manifest
from .status import StatusResult

log = logging.getLogger("kubemaas.reconcile")


class Retry(Exception):
    """Something transient failed (the API server, a conflict); try again after `delay`.
    `quiet`: said once already (an Event and a log line); the handler logs it at debug level."""

    def __init__(self, message: str, delay: float = 5.0, quiet: bool = False) -> None:
        super().__init__(message)
        self.delay = delay
        self.quiet = quiet


class Refused(Exception):
    """A policy of the cluster refused a child (a ValidatingAdmissionPolicy or webhook denied
    it, a ResourceQuota or LimitRange does not allow it): not remembered like an invalid
    manifest, since the policy may change while the manifest does not; the model says so in its
    status and the write is tried again at the next reconcile."""


def _involved(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    return {"apiVersion": API_VERSION, "kind": KIND, "name": meta.get("name"),
            "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion")}


async def write_status(cluster: AsyncCluster, memory: Memory, body: Mapping[str, Any],
                        result: StatusResult) -> None:
    if not result.changed:
        return
    meta = body.get("metadata") or {}
    writing = _what_it_says(result.status)
    held = memory.held(meta["namespace"], meta["name"], writing, what="status")
    if held is not None:  # the same status refused or failed, its retry not yet due
        raise Retry(str(held[0]), held[1], quiet=True)
    try:
        previous = memory.previous_status(body)
        response = await cluster.patch_status(meta["namespace"], meta["name"], result.status,
                                              previous)
        if memory.wrote_status(meta["namespace"], meta["name"], response,
                               result.status) >= REPORT_FROM:
            log.info("%s/%s: the status is written again", meta["namespace"], meta["name"])
        count_rollouts(previous, result.status)
    except ApiError as err:
        if err.status == 404:
            return  # deleted meanwhile
        retry = await _status_refused(cluster, memory, body, err)
        memory.hold(meta["namespace"], meta["name"], writing, retry.delay, str(retry),
                    what="status")
        raise retry from err
    for event in result.events:
        try:
            await cluster.post_event(_involved(body), event.type, event.reason, event.message)
        except ApiError as err:  # an Event is a courtesy; never fail a reconcile on it
            log.warning("cannot post an Event for %s/%s: %s", meta["namespace"], meta["name"],
                        err)


# The times a status carries: a status no write of which went through gets new ones at each pass.
_TIMES = frozenset({"lastTransitionTime", "time", "startedAt", "progressAt", "idleSince"})


def _what_it_says(status: Any) -> str:
    """The status without its times, as a key (the same status refused again at a later pass)."""
    def strip(value: Any) -> Any:
        if isinstance(value, Mapping):
            return {k: strip(v) for k, v in value.items() if k not in _TIMES}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value
    return json.dumps(strip(status), sort_keys=True, default=str)


# Failures in a row of a write (a child's, a status) that count as more than a blip; from
# there it is tried again after a delay that doubles up to MAX_DELAY_S (doubling_delay).
REPORT_FROM = 3
MAX_DELAY_S = 60.0


def doubling_delay(first: float, streak: int, from_streak: int) -> float:
    """`first` at the `from_streak`-th failure in a row (and before), doubling with each
    failure after it, up to MAX_DELAY_S: the one back-off of failing writes."""
    return min(first * 2.0 ** max(0, streak - from_streak), MAX_DELAY_S)


async def _status_refused(cluster: AsyncCluster, memory: Memory, body: Mapping[str, Any],
                          err: ApiError) -> Retry:
    """A status write the API server refused or failed. The status cannot say so: a Warning
    Event (reason StatusRefused) and one log line do, at the first failure when a policy, RBAC
    or the schema refused it, else at the REPORT_FROM-th in a row (a blip is retried
    quietly). After that it is retried quietly, every 5 s doubling up to a minute."""
    meta = body.get("metadata") or {}
    key = (meta.get("namespace") or "", meta.get("name") or "")
    streak = memory.status_write_failed(*key)
    refused = err.policy_refused or err.invalid or err.status == 403
    message = (f"cannot write the status of ModelDeployment {key[0]}/{key[1]}: {err}; it is "
               "tried again (at least once a minute) and written once the API server takes it")
    report_at = 1 if refused else REPORT_FROM
    delay = doubling_delay(5.0, streak, report_at)
    if streak != report_at:
        return Retry(message, delay, quiet=streak > report_at)
    log.warning("%s/%s: %s", *key, message)
    try:
        await cluster.post_event(_involved(body), "Warning", "StatusRefused", message)
    except ApiError as again:
        log.warning("%s/%s: and no Event can say so: %s", *key, again)
    return Retry(message, delay, quiet=True)


async def pin_replicas(cluster: AsyncCluster, memory: Memory, name: str, namespace: str,
                        replicas: int) -> dict[str, Any]:
    """Apply only the Deployment's replicas, as the autoscaling floor's field manager."""
    try:
        applied = await cluster.apply(replicas_manifest(name, namespace, replicas), FLOOR_MANAGER)
    except ApiError as err:
        if err.policy_refused:
            raise Refused(f"the cluster's policy refused {replicas} replica(s) for the "
                          f"Deployment {namespace}/{name}: {err.message}; it is tried again at "
                          "each resync") from err
        raise Retry(f"cannot set the replicas of the Deployment {namespace}/{name} to the "
                    f"autoscaling floor ({replicas}): {err}") from err
    memory.remember(applied)
    return applied
