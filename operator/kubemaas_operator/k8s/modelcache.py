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

    async def delete_pod(self, namespace: str, name: str) -> None:
        await self.cluster.delete("v1", "Pod", namespace, name)

    async def post_event(self, involved: Mapping[str, Any], type_: str, reason: str,
                         message: str) -> None:
        await self.cluster.post_event(involved, type_, reason, message)
