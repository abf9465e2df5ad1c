"""The ONLY code that talks to the API server: server-side apply, deletes, status patches,
Events, and the one read the indexes cannot answer (an administrator's templates ConfigMap).

All calls are blocking (the `kubernetes` client) and run in a bounded thread pool through
`AsyncCluster`, so the event loop never waits on the network. Every write is counted
(`Cluster.writes`, and by namespace), which the operator reports on its health endpoint and the
benchmark reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import quote

import urllib3
from kubernetes import client, config

from ..metrics import api_error, api_write, forget_namespace

log = logging.getLogger("kubemaas.k8s")
T = TypeVar("T")

FIELD_MANAGER = "kubemaas-operator"
MD_GROUP, MD_VERSION, MD_PLURAL = "serving.kubemaas.io", "v1alpha1", "modeldeployments"

PLURALS: dict[str, str] = {
    "Deployment": "deployments",
    "Service": "services",
    "HorizontalPodAutoscaler": "horizontalpodautoscalers",
    "PodDisruptionBudget": "poddisruptionbudgets",
    "HTTPRoute": "httproutes",
    "NetworkPolicy": "networkpolicies",
    "Certificate": "certificates",
    "InferencePool": "inferencepools",
    "ModelCache": "modelcaches",
    "ScaledObject": "scaledobjects",
    "InterceptorRoute": "interceptorroutes",
    "ConfigMap": "configmaps",
    "Event": "events",
    "ModelDeployment": MD_PLURAL,
    "Pod": "pods",
    "PersistentVolumeClaim": "persistentvolumeclaims",
}


# What the API server says when a policy, not the object's schema nor RBAC, refused a write.
_POLICY_SAYS = ("denied request", "denied the request", "exceeded quota", "failed quota",
                "violates PodSecurity")
_NAMESPACE_IN_PATH = re.compile(r"/namespaces/([^/]+)/")
_LIMIT_RANGE = re.compile(r"(maximum|minimum) \S+ usage per |ratio to request ")


class ApiError(Exception):
    """The API server said no. `status` is the HTTP code, `message` its explanation."""

    def __init__(self, status: int, reason: str, message: str,
                 causes: tuple[str, ...] = ()) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.causes = causes  # the types of the Status' details.causes (their `reason`)

    @property
    def namespace_terminating(self) -> bool:
        """Refused because the namespace is being deleted (NamespaceLifecycle admission)."""
        return self.status == 403 and "NamespaceTerminating" in self.causes

    @property
    def policy_refused(self) -> bool:
        """Refused by a policy of the cluster, not for the object alone nor for RBAC: a
        ValidatingAdmissionPolicy or an admission webhook that denied it, a ResourceQuota it
        would exceed, a LimitRange's bounds. The policy can change while the object does not, so
        the same object may be taken later."""
        if self.status not in (400, 403, 422):
            return False
        return any(said in self.message for said in _POLICY_SAYS) or (
            self.status == 403 and _LIMIT_RANGE.search(self.message) is not None)

    @property
    def invalid(self) -> bool:
        """The object itself was rejected (422 Invalid, 400 BadRequest, or server-side apply's
        500 for an object that does not fit the kind's schema): retrying won't help."""
        return self.status in (400, 422) or (
            self.status == 500 and "failed to create typed patch object" in self.message)


def _path(api_version: str, kind: str, namespace: str | None, name: str | None = None,
          subresource: str | None = None) -> str:
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace:
        base += f"/namespaces/{quote(namespace, safe='')}"
    base += f"/{PLURALS[kind]}"
    if name:
        base += f"/{quote(name, safe='')}"
    if subresource:
        base += f"/{subresource}"
    return base


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _merge_patch(new: Mapping[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning `old` into `new`: keys gone from nested objects (for example
    status.rollout.update once a rollout completes) are set to null, lists are replaced."""
    body: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            body[key] = _merge_patch(value, before)
        else:
            body[key] = value
    for key in old:
        if key not in new:
            body[key] = None
    return body


def refusal(status: int, text: str) -> ApiError:
    """The ApiError for an answer with an error status; `text` is its body (a Status, or
    anything else from a proxy in between)."""
    try:
        payload = json.loads(text)
    except ValueError:
        return ApiError(status, "", text)
    if not isinstance(payload, dict):
        return ApiError(status, "", text)
    details = payload.get("details") or {}
    # a StatusCause's type is serialized as "reason"
    causes = tuple(str(c.get("reason", "")) for c in details.get("causes") or [])
    return ApiError(status, payload.get("reason", ""), payload.get("message", text), causes)


class Cluster:
    """Blocking API access with one field manager."""

    def __init__(self, api: client.ApiClient, field_manager: str = FIELD_MANAGER) -> None:
        self.api = api
        self.field_manager = field_manager
        self._write_total = 0
        self._writes_by_namespace: dict[str, int] = {}
        self._lock = threading.Lock()

    @classmethod
    def from_environment(cls, pool_size: int = 16) -> Cluster:
        """In-cluster credentials when running in a pod, else $KUBECONFIG / ~/.kube/config."""
        configuration = client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=os.environ.get("KUBECONFIG"), client_configuration=configuration)
        configuration.connection_pool_maxsize = pool_size
        return cls(client.ApiClient(configuration))

    @property
    def writes(self) -> int:
        return self._write_total

    def writes_by_namespace(self) -> dict[str, int]:
        """The writes so far by the namespace of their object ("" for cluster-scoped ones): which
        models an unexpected write was for, where several namespaces share the operator."""
        with self._lock:
            return dict(self._writes_by_namespace)

    def forget_namespace(self, namespace: str) -> None:
        """The namespace was deleted: its writes leave the per-namespace counts (the probe's
        and kubemaas_operator_api_writes_total's); the total keeps them."""
        with self._lock:
            self._writes_by_namespace.pop(namespace, None)
        forget_namespace(namespace)

    def _count_write(self, path: str) -> None:
        found = _NAMESPACE_IN_PATH.search(path)
        namespace = found.group(1) if found else ""
        with self._lock:
            self._write_total += 1
            self._writes_by_namespace[namespace] = self._writes_by_namespace.get(namespace, 0) + 1
        api_write(namespace)

    def _call(self, method: str, path: str, *, body: Any = None,
              query: list[tuple[str, str]] | None = None,
              content_type: str = "application/json",
              expected: tuple[int, ...] = ()) -> dict[str, Any] | None:
        """One API call; a failure raises ApiError and counts in the operator's metrics unless
        its status is `expected` (API discovery of a group that is not installed)."""
        if method != "GET":
            self._count_write(path)
        serialized = self.api.param_serialize(
            method, path, query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body, auth_settings=["BearerToken"])
        try:
            response = self.api.call_api(*serialized, _request_timeout=30)
            data = response.read()  # type: ignore[no-untyped-call]
        except (client.exceptions.ApiException, urllib3.exceptions.HTTPError) as err:
            api_error(method, 0)
            raise ApiError(0, "Unreachable", f"{method} {path}: {err}") from err
        text = data.decode("utf-8") if isinstance(data, bytes) else (data or "")
        if response.status >= 400:
            if response.status not in expected:
                api_error(method, response.status)
            raise refusal(response.status, text)
        return json.loads(text) if text else None

    def apply(self, manifest: Mapping[str, Any],
              field_manager: str | None = None) -> dict[str, Any]:
        """Server-side apply with our field manager (or `field_manager`: the autoscaling floor's
        own), taking fields back from hand edits."""
        meta = manifest["metadata"]
        path = _path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"),
                     meta["name"])
        result = self._call("PATCH", path, body=dict(manifest),
                            query=[("fieldManager", field_manager or self.field_manager),
                                   ("force", "true")],
                            content_type="application/apply-patch+yaml")
        return result or {}

    def replace_spec_lists(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of the manifest's spec: each list in it replaces the live one whole
        (server-side apply merges lists by key, so an item another manager added stays)."""
        meta = manifest["metadata"]
        path = _path(manifest["apiVersion"], manifest["kind"], meta.get("namespace"),
                     meta["name"])
        return self._call("PATCH", path, body={"spec": manifest["spec"]},
                          query=[("fieldManager", self.field_manager)],
                          content_type="application/merge-patch+json") or {}

    def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        try:
            self._call("DELETE", _path(api_version, kind, namespace, name),
                       body={"propagationPolicy": "Background"})
        except ApiError as err:
            if err.status != 404:
                raise

    def patch_status(self, namespace: str, name: str, status: Mapping[str, Any],
                     previous: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch the ModelDeployment's status to exactly `status`."""
        body = _merge_patch(status, previous)
        path = _path(f"{MD_GROUP}/{MD_VERSION}", "ModelDeployment", namespace, name, "status")
        return self._call("PATCH", path, body={"status": body},
                          content_type="application/merge-patch+json") or {}

    def post_event(self, involved: Mapping[str, Any], type_: str, reason: str,
                   message: str) -> None:
        now = _now()
        name = f"{involved['name']}.{uuid.uuid4().hex[:12]}"
        body = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": involved["namespace"]},
            "involvedObject": dict(involved), "type": type_, "reason": reason[:128],
            "message": message[:1024], "source": {"component": self.field_manager},
            "reportingComponent": "kubemaas.io/operator",
            "reportingInstance": os.environ.get("HOSTNAME", "kubemaas-operator")[:128],
            "firstTimestamp": now, "lastTimestamp": now, "count": 1,
        }
        self._call("POST", _path("v1", "Event", involved["namespace"]), body=body)

    def serves(self, api_version: str, plural: str) -> bool:
        """API discovery: does the API server serve `plural` in group/version `api_version`
        (for example httproutes in gateway.networking.k8s.io/v1)? False when the group is
        not installed; an unreachable API server raises ApiError."""
        base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        try:
            found = self._call("GET", base, expected=(403, 404, 503)) or {}
        except ApiError as err:
            if err.status in (403, 404, 503):  # not installed (503: an unavailable APIService)
                return False
            raise
        return any(r.get("name") == plural for r in found.get("resources") or [])

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._call("GET", _path("v1", "ConfigMap", namespace, name))
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    def get_optional(self, api_version: str, kind: str, namespace: str,
                     name: str) -> dict[str, Any] | None:
        """An object that may not exist, of a kind that may not be served or readable (a CRD
        another component installs): None for 403 and 404."""
        try:
            return self._call("GET", _path(api_version, kind, namespace, name),
                              expected=(403, 404))
        except ApiError as err:
            if err.status in (403, 404):
                return None
            raise


class AsyncCluster:
    """`Cluster` for the event loop: each call runs in a bounded thread pool.

    Applies and deletes of children get a pool of their own, so that during a burst (a thousand
    models at once) every model's Deployment goes out first and the controllers start working,
    while status patches and Events queue in the other pool.
    """

    def __init__(self, cluster: Cluster, workers: int = 32) -> None:
        self.sync = cluster
        half = max(1, workers // 2)
        self.executor = ThreadPoolExecutor(max_workers=half, thread_name_prefix="kubemaas-apply")
        self.status_executor = ThreadPoolExecutor(max_workers=max(1, workers - half),
                                                  thread_name_prefix="kubemaas-status")

    @property
    def writes(self) -> int:
        return self.sync.writes

    def writes_by_namespace(self) -> dict[str, int]:
        return self.sync.writes_by_namespace()

    def forget_namespace(self, namespace: str) -> None:
        self.sync.forget_namespace(namespace)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    async def _run_status(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.status_executor, fn, *args)

    async def apply(self, manifest: Mapping[str, Any],
                    field_manager: str | None = None) -> dict[str, Any]:
        return await self._run(self.sync.apply, manifest, field_manager)

    async def replace_spec_lists(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        return await self._run(self.sync.replace_spec_lists, manifest)

    async def delete(self, api_version: str, kind: str, namespace: str, name: str) -> None:
        await self._run(self.sync.delete, api_version, kind, namespace, name)

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any],
                           previous: Mapping[str, Any]) -> dict[str, Any]:
        return await self._run_status(self.sync.patch_status, namespace, name, status, previous)

    async def post_event(self, involved: Mapping[str, Any], type_: str, reason: str,
                         message: str) -> None:
        await self._run_status(self.sync.post_event, involved, type_, reason, message)

    async def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._run_status(self.sync.get_configmap, namespace, name)

    async def serves(self, api_version: str, plural: str) -> bool:
        return await self._run_status(self.sync.serves, api_version, plural)

    async def get_optional(self, api_version: str, kind: str, namespace: str,
                           name: str) -> dict[str, Any] | None:
        return await self._run_status(self.sync.get_optional, api_version, kind, namespace, name)

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.status_executor.shutdown(wait=False, cancel_futures=True)
        self.sync.api.close()  # type: ignore[no-untyped-call]
