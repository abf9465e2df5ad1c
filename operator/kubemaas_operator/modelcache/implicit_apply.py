"""What a ModelDeployment's autoCache needs written (modelcache/implicit.py decides): create the
ModelCache, add the model's owner reference to one the operator created, take it away from
caches the model no longer uses (and delete a cache whose last reference that was).

Owner references are replaced with the object's resourceVersion as a precondition, so two models
adopting or releasing one cache at once cannot lose each other's reference: the loser gets 409
Conflict (an ApiError) and its reconcile tries again."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from ..k8s import ApiError, AsyncCluster
from ..k8s.modelcache import CacheCluster
from .implicit import (
    MD_API_VERSION,
    MD_KIND,
    Owner,
    Plan,
    adoptable,
    name_taken,
    owned_by,
    owner_ref,
    released,
)

log = logging.getLogger("kubemaas.modelcache.implicit")


class CacheNameTaken(Exception):
    """A ModelCache the model may not own has the name its autoCache wants (the message says
    so): waiting does not help, the user renames or deletes one of them."""


async def _adopt(api: CacheCluster, namespace: str, name: str, owner: Owner, key: str) -> None:
    body = await api.get_cache(namespace, name)
    if body is None:
        return
    if not adoptable(body, key):
        if owned_by(body, owner.uid):  # taken over before this check existed: give it back
            await api.set_owners(namespace, name, released(body, owner.uid),
                                 body["metadata"]["resourceVersion"])
        raise CacheNameTaken(name_taken(name, body))
    if owned_by(body, owner.uid):
        return
    refs = [*released(body, owner.uid), owner_ref(owner)]
    await api.set_owners(namespace, name, refs, body["metadata"]["resourceVersion"])
    log.info("%s/%s: uses ModelCache %s (autoCache; %d models own it)", namespace, owner.name,
             name, len(refs))


async def _release(api: CacheCluster, namespace: str, name: str, owner: Owner) -> None:
    body = await api.get_cache(namespace, name)
    if body is None or not owned_by(body, owner.uid):
        return
    rest, rv = released(body, owner.uid), body["metadata"]["resourceVersion"]
    if rest:
        await api.set_owners(namespace, name, rest, rv)
        log.info("%s/%s: no longer uses ModelCache %s (%d models still do)", namespace,
                 owner.name, name, len(rest))
    else:
        await api.delete_cache(namespace, name, rv)
        log.info("%s/%s: no longer uses ModelCache %s, the last model that asked for it: "
                 "deleted", namespace, owner.name, name)


async def ensure(cluster: AsyncCluster, namespace: str, owner: Owner, plan: Plan) -> None:
    """Carry out `plan`; an ApiError (a conflict, the API server) propagates: try again.
    CacheNameTaken: the name belongs to a cache the model may not own."""
    api = CacheCluster(cluster)
    for name in plan.release:
        await _release(api, namespace, name, owner)
    if plan.create is not None:
        try:
            await api.create_cache(plan.create)
        except ApiError as err:
            if err.status != 409:  # AlreadyExists: another model (or our last look) made it
                raise
            await _adopt(api, namespace, plan.name, owner, plan.key)
            return
        log.info("%s/%s: created ModelCache %s from %s (autoCache)", namespace, owner.name,
                 plan.name, plan.uri)
        await _event(cluster, namespace, owner, "CacheCreated",
                     f"created ModelCache {plan.name} from {plan.uri} for spec.model.autoCache")
    elif plan.adopt:
        await _adopt(api, namespace, plan.name, owner, plan.key)


async def _event(cluster: AsyncCluster, namespace: str, owner: Owner, reason: str,
                 message: str) -> None:
    involved: Mapping[str, Any] = {"apiVersion": MD_API_VERSION, "kind": MD_KIND,
                                   "name": owner.name, "namespace": namespace,
                                   "uid": owner.uid}
    try:
        await cluster.post_event(involved, "Normal", reason, message)
    except ApiError as err:  # an Event is a courtesy: never a reason to fail
        log.debug("%s/%s: cannot post an Event: %s", namespace, owner.name, err)
