"""The ModelCache's calls to the API server: its status and finalizer, its pods' logs (the
download pod's progress lines: pods on a node may have no route to the API server, so the
operator reads what they print), creating and deleting its pods and claim."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client

from ..metrics import api_error
from . import ApiError, AsyncCluster, Cluster, _merge_patch, _path

CACHE_API = "serving.kubemaas.io/v1alpha1"


def _pod_log(cluster: Cluster, namespace: str, name: str, container: str, tail: int) -> str:
    path = (f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}/log")
    serialized = cluster.api.param_serialize(
        "GET", path, query_params=[("container", container), ("tailLines", str(tail))],
        # "Accept: text/plain" is refused with 406 Not Acceptable; the log comes back as text
        header_params={"Accept": "*/*"}, auth_settings=["BearerToken"])
    try:
        response = cluster.api.call_api(*serialized, _request_timeout=10)
        data = response.read()  # type: ignore[no-untyped-call]
    except (client.exceptions.ApiException, urllib3.exceptions.HTTPError) as err:
        api_error("GET", 0)
        raise ApiError(0, "Unreachable", f"GET {path}: {err}") from err
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else str(data or "")
    if response.status >= 400:
        api_error("GET", response.status)
        raise ApiError(response.status, "", text[:500])
    return text


def _patch_status(cluster: Cluster, namespace: str, name: str, status: Mapping[str, Any],
                  previous: Mapping[str, Any]) -> dict[str, Any]:
    body = _merge_patch(status, previous)
    return cluster._call("PATCH", _path(CACHE_API, "ModelCache", namespace, name, "status"),
                         body={"status": body},
                         content_type="application/merge-patch+json") or {}


def _set_finalizers(cluster: Cluster, namespace: str, name: str, finalizers: list[str],
                    resource_version: str) -> dict[str, Any]:
    """Replace metadata.finalizers, refused (409) if the object changed meanwhile."""
    body = {"metadata": {"finalizers": finalizers, "resourceVersion": resource_version}}
    return cluster._call("PATCH", _path(CACHE_API, "ModelCache", namespace, name),
                         body=body, content_type="application/merge-patch+json") or {}


def _create_cache(cluster: Cluster, body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body["metadata"]
    return cluster._call("POST", _path(CACHE_API, "ModelCache", meta["namespace"]),
                         body=dict(body)) or {}


def _set_owners(cluster: Cluster, namespace: str, name: str, owners: list[dict[str, Any]],
                resource_version: str) -> dict[str, Any]:
    """Replace metadata.ownerReferences, refused (409) if the object changed meanwhile."""
    body = {"metadata": {"ownerReferences": owners, "resourceVersion": resource_version}}
    return cluster._call("PATCH", _path(CACHE_API, "ModelCache", namespace, name),
                         body=body, content_type="application/merge-patch+json") or {}


def _delete_cache(cluster: Cluster, namespace: str, name: str, resource_version: str) -> None:
    """Delete, refused (409) if the object changed since `resource_version` (a model adopted
    it meanwhile); gone already is fine."""
    try:
        cluster._call("DELETE", _path(CACHE_API, "ModelCache", namespace, name), body={
            "propagationPolicy": "Background",
            "preconditions": {"resourceVersion": resource_version}})
    except ApiError as err:
        if err.status != 404:
            raise


class CacheCluster:
    """The ModelCache's API calls for the event loop (the operator's bounded thread pools)."""

    def __init__(self, cluster: AsyncCluster) -> None:
        self.cluster = cluster

    async def _status_pool(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(
            self.cluster.status_executor, fn, self.cluster.sync, *args)

    async def pod_log(self, namespace: str, name: str, container: str, tail: int) -> str:
        text: str = await self._status_pool(_pod_log, namespace, name, container, tail)
        return text

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any],
                           previous: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = await self._status_pool(_patch_status, namespace, name, status,
                                                      previous)
        return out

    async def set_finalizers(self, namespace: str, name: str, finalizers: list[str],
                             resource_version: str) -> dict[str, Any]:
        out: dict[str, Any] = await self._status_pool(_set_finalizers, namespace, name,
                                                      finalizers, resource_version)
        return out

    async def apply(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return await self.cluster.apply(manifest)

    async def get_cache(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.cluster.get_optional(CACHE_API, "ModelCache", namespace, name)

    async def create_cache(self, body: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = await self._status_pool(_create_cache, body)
        return out

    async def set_owners(self, namespace: str, name: str, owners: list[dict[str, Any]],
                         resource_version: str) -> dict[str, Any]:
        out: dict[str, Any] = await self._status_pool(_set_owners, namespace, name, owners,
                                                      resource_version)
        return out

    async def delete_cache(self, namespace: str, name: str, resource_version: str) -> None:
        await self._status_pool(_delete_cache, namespace, name, resource_version)

    async def claim_bound(self, namespace: str, name: str) -> bool:
        """Whether the claim exists and was ever bound (an unbound one holds no files)."""
        claim = await self.cluster.get_optional("v1", "PersistentVolumeClaim", namespace, name)
        return claim is not None and (claim.get("status") or {}).get("phase") != "Pending"

    async def delete_pod(self, namespace: str, name: str) -> None:
        await self.cluster.delete("v1", "Pod", namespace, name)

    async def post_event(self, involved: Mapping[str, Any], type_: str, reason: str,
                         message: str) -> None:
        await self.cluster.post_event(involved, type_, reason, message)
