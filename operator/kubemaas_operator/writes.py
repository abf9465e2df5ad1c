"""The writes of a ModelDeployment's reconcile pass that are not its children: the status (with
its Events) and the autoscaling floor's replicas; an API error becomes a `Retry`."""

from __future__ import annotations

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
    """Something transient failed (the API server, a conflict); try again after `delay`."""

    def __init__(self, message: str, delay: float = 5.0) -> None:
        super().__init__(message)
        self.delay = delay


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
    try:
        previous = memory.previous_status(body)
        response = await cluster.patch_status(meta["namespace"], meta["name"], result.status,
                                              previous)
        memory.wrote_status(meta["namespace"], meta["name"], response, result.status)
        count_rollouts(previous, result.status)
    except ApiError as err:
        if err.status == 404:
            return  # deleted meanwhile
        raise Retry(f"cannot write the status: {err}") from err
    for event in result.events:
        try:
            await cluster.post_event(_involved(body), event.type, event.reason, event.message)
        except ApiError as err:  # an Event is a courtesy; never fail a reconcile on it
            log.warning("cannot post an Event for %s/%s: %s", meta["namespace"], meta["name"],
                        err)


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
