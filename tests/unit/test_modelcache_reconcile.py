"""The ModelCache reconcile's calls to the API server, recorded by a fake of its small
CacheCluster surface: a deletion's clean-up pods and finalizer, a claim the API server refuses
(the pure status and render logic is tested in test_modelcache.py)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

from tests.unit.test_modelcache import NODE_SPEC, NOW, REF, _pod

from kubemaas_operator.modelcache import api
from kubemaas_operator.modelcache.render import removal_pod


class _FakeCacheApi:
    """The calls a deletion makes, recorded."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    async def delete_pod(self, namespace: str, name: str) -> None:
        self.calls.append(("delete", name))

    async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
        self.calls.append(("apply", manifest["metadata"]["name"]))
        return manifest

    async def set_finalizers(self, namespace: str, name: str, finalizers: list[str],
                             resource_version: str) -> None:
        self.calls.append(("finalizers", finalizers))

    async def post_event(self, *args: Any) -> None:
        self.calls.append(("event", args[2]))

    async def claim_bound(self, namespace: str, name: str) -> bool:
        return name != "missing"

    async def patch_status(self, namespace: str, name: str, status: dict[str, Any],
                           previous: Any) -> dict[str, Any]:
        self.calls.append(("status", status))
        return {"metadata": {"resourceVersion": "8"}}


def test_deletion_waits_for_the_clean_pod_once_the_download_pods_are_gone() -> None:
    """A cache deleted while its download ran: the first pass deleted the download pod and
    created the clean-up pod; the next pass found no download pod, so no node to clean, and
    removed the finalizer while the clean-up pod ran (seen on kwok): the garbage collector
    then deleted it and the node's files stayed. Now the clean-up pod's node, and the nodes the
    status lists, are cleaned and waited for."""
    from kubemaas_operator.modelcache.reconcile import CacheSnapshot, Memory, reconcile_cache
    body = {"metadata": {"name": "llama", "namespace": "ml", "uid": "u-1", "generation": 1,
                         "deletionTimestamp": "2026-11-30T19:00:00Z", "resourceVersion": "7",
                         "finalizers": ["serving.kubemaas.io/model-cache-cleanup"]},
            "spec": NODE_SPEC,
            "status": {"nodes": [{"name": "gpu-2", "phase": "Ready"},
                                 {"name": "gone", "phase": "Ready"},
                                 {"name": "gpu-3", "phase": "Evicted"}]}}
    nodes = {"gpu-1": {}, "gpu-2": {}, "gpu-3": {}}
    clean = _pod("llama-clean-x", "Running", role="clean")
    fake = _FakeCacheApi()
    snap = CacheSnapshot(body=body, pods=[clean], nodes=nodes)
    again = asyncio.run(reconcile_cache(snap, fake, Memory(), NOW))  # type: ignore[arg-type]
    assert again == 2.0 and not [c for c in fake.calls if c[0] == "finalizers"]
    (status,) = [c[1] for c in fake.calls if c[0] == "status"]  # no longer 'Downloading'
    assert status["reason"] == "CleaningUp" and "llama-clean-x" in status["message"]
    assert [c[1] for c in fake.calls if c[0] == "apply"] == [
        removal_pod(REF, api.parse_cache_spec(NODE_SPEC), "gpu-2", "clean")["metadata"]["name"]]
    done = replace(clean, phase="Succeeded", exit_code=0)
    other = replace(_pod("llama-clean-y", "Succeeded", node="gpu-2", role="clean"), exit_code=0)
    fake = _FakeCacheApi()
    snap = CacheSnapshot(body=body, pods=[done, other], nodes=nodes)
    assert asyncio.run(reconcile_cache(snap, fake, Memory(), NOW)) is None  # type: ignore[arg-type]
    assert fake.calls == [("finalizers", [])]


def test_a_failed_clean_pod_is_said_once_when_the_others_are_done() -> None:
    """A clean-up pod that failed on one node while another node still cleaned posted its
    CleanupFailed Event on every pass (each 2 s) until the other finished."""
    from kubemaas_operator.modelcache.reconcile import CacheSnapshot, Memory, reconcile_cache
    body = {"metadata": {"name": "llama", "namespace": "ml", "uid": "u-1", "generation": 1,
                         "deletionTimestamp": "2026-11-30T19:00:00Z", "resourceVersion": "7",
                         "finalizers": ["serving.kubemaas.io/model-cache-cleanup"]},
            "spec": NODE_SPEC, "status": {}}
    nodes = {"gpu-1": {}, "gpu-2": {}}
    failed = replace(_pod("llama-clean-x", "Failed", role="clean"), exit_code=1)
    running = _pod("llama-clean-y", "Running", node="gpu-2", role="clean")
    for _ in range(3):  # three passes while gpu-2 cleans: no Event
        fake = _FakeCacheApi()
        snap = CacheSnapshot(body=body, pods=[failed, running], nodes=nodes)
        assert asyncio.run(reconcile_cache(snap, fake, Memory(), NOW)) == 2.0  # type: ignore[arg-type]
        assert not [c for c in fake.calls if c[0] == "event"], fake.calls
    fake = _FakeCacheApi()
    done = replace(running, phase="Succeeded", exit_code=0)
    snap = CacheSnapshot(body=body, pods=[failed, done], nodes=nodes)
    assert asyncio.run(reconcile_cache(snap, fake, Memory(), NOW)) is None  # type: ignore[arg-type]
    assert fake.calls == [("event", "CleanupFailed"), ("finalizers", [])]


def test_a_claim_the_api_server_refuses_fails_the_cache() -> None:
    """spec.storage.pvc.storageClassName changed on a bound claim: the claim's apply was
    refused (422: spec is immutable), the reconcile raised, the status kept its last message
    and the refusal reached only the operator's log, every 60 s. Now the cache is Failed,
    ClaimRejected, with the API server's words, and no pod is created."""
    from kubemaas_operator.k8s import ApiError
    from kubemaas_operator.modelcache.reconcile import CacheSnapshot, Memory, reconcile_cache

    class Refusing(_FakeCacheApi):
        async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
            if manifest["kind"] == "PersistentVolumeClaim":
                raise ApiError(422, "Invalid", "spec: Forbidden: spec is immutable")
            return await super().apply(manifest)

    raw = {"source": {"uri": "s3://models/llama/"},
           "storage": {"type": "pvc", "pvc": {"storageClassName": "fast", "size": "1Gi"}}}
    body = {"metadata": {"name": "llama", "namespace": "ml", "uid": "u-1", "generation": 2,
                         "resourceVersion": "7",
                         "finalizers": ["serving.kubemaas.io/model-cache-cleanup"]},
            "spec": raw}
    fake = Refusing()
    asyncio.run(reconcile_cache(CacheSnapshot(body=body), fake, Memory(), NOW))  # type: ignore[arg-type]
    (status,) = [c[1] for c in fake.calls if c[0] == "status"]
    assert (status["phase"], status["reason"]) == ("Failed", "ClaimRejected")
    assert "llama-cache" in status["message"] and "spec is immutable" in status["message"]
    assert status["conditions"][0]["reason"] == "ClaimRejected"
    assert not [c for c in fake.calls if c[0] == "apply"]


def test_a_deleted_cache_whose_claim_was_never_made_is_not_held_for_ever() -> None:
    """A pvc cache whose claim a ResourceQuota refused, deleted: its clean-up pod mounted the
    claim that did not exist and stayed Pending ('persistentvolumeclaim "pc-cache" not
    found'), and the finalizer with it, for good (seen on the testbed). Now no clean-up pod is
    made for a claim that is not there or was never bound, and the finalizer goes."""
    from kubemaas_operator.modelcache.reconcile import CacheSnapshot, Memory, reconcile_cache
    body = {"metadata": {"name": "pc", "namespace": "ml", "uid": "u-1", "generation": 1,
                         "deletionTimestamp": "2026-11-30T19:00:00Z", "resourceVersion": "7",
                         "finalizers": ["serving.kubemaas.io/model-cache-cleanup"]},
            "spec": {"source": {"uri": "http://h/m.onnx"}, "storage": {
                "type": "pvc", "pvc": {"claimName": "missing"}}}}
    pending = _pod("pc-clean-pvc", "Pending", node=None, role="clean")
    fake = _FakeCacheApi()
    asyncio.run(reconcile_cache(CacheSnapshot(body=body, pods=[pending], nodes={}), fake,
                                Memory()))  # type: ignore[arg-type]
    assert ("finalizers", []) in fake.calls, fake.calls
    assert not [c for c in fake.calls if c[0] == "apply"], fake.calls


class _NoFinalizerApi(_FakeCacheApi):
    """A policy refuses every update of the cache: its finalizer."""

    async def set_finalizers(self, namespace: str, name: str, finalizers: list[str],
                             resource_version: str) -> None:
        from kubemaas_operator.k8s import ApiError

        self.calls.append(("finalizers", finalizers))
        raise ApiError(422, "Invalid", 'modelcaches.serving.kubemaas.io "llama" is forbidden: '
                       "ValidatingAdmissionPolicy 'p' with binding 'p' denied request: frozen")


def test_a_refused_finalizer_is_said_in_the_status_once() -> None:
    """The cleanup finalizer refused by a policy (a 422): the cache had no status and no Event,
    the operator logging an ERROR every 60 s."""
    from kubemaas_operator.modelcache.reconcile import CacheSnapshot, Memory, reconcile_cache
    body = {"metadata": {"name": "llama", "namespace": "ml", "uid": "u-1", "generation": 1,
                         "resourceVersion": "7"}, "spec": NODE_SPEC}
    fake, memory = _NoFinalizerApi(), Memory()
    snap = CacheSnapshot(body=body, pods=[], nodes={"gpu-1": {}})
    assert asyncio.run(reconcile_cache(snap, fake, memory, NOW)) == 60.0  # type: ignore[arg-type]
    (status,) = [c[1] for c in fake.calls if c[0] == "status"]
    assert status["phase"] == "Pending" and status["reason"] == "FinalizerRefused"
    assert "denied request: frozen" in status["message"], status
    assert [c[1] for c in fake.calls if c[0] == "event"] == ["FinalizerRefused"]
    assert not [c for c in fake.calls if c[0] == "apply"]  # nothing starts without it
    fake.calls.clear()
    assert asyncio.run(reconcile_cache(snap, fake, memory, NOW)) == 60.0  # type: ignore[arg-type]
    assert [c[0] for c in fake.calls] == ["finalizers"]  # said once: no status, no Event again


def test_a_refused_pod_is_asked_for_again_when_due_not_at_each_wake() -> None:
    """A ResourceQuota refused the download pod: every event that woke the cache (any node's
    labels or status, its own status written) asked for the pod again, a refused write each
    (8 node events, 8 refused creates, on the testbed). Now the refusal holds until its retry
    is due (REFUSED_RETRY_S), with no write at all meanwhile; a changed spec asks at once."""
    from kubemaas_operator.k8s import ApiError
    from kubemaas_operator.modelcache.reconcile import CacheSnapshot, Memory, reconcile_cache
    from kubemaas_operator.modelcache.refusals import REFUSED_RETRY_S, Refusals

    class OverQuota(_FakeCacheApi):
        async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
            self.calls.append(("apply", manifest["metadata"]["name"]))
            raise ApiError(403, "Forbidden", f'pods "{manifest["metadata"]["name"]}" is '
                           "forbidden: exceeded quota: pods, requested: pods=1, used: pods=0, "
                           "limited: pods=0")

    clock = [100.0]
    memory = Memory()
    memory.refusals = Refusals(clock=lambda: clock[0])
    body: dict[str, Any] = {"metadata": {
        "name": "llama", "namespace": "ml", "uid": "u-1", "generation": 1, "resourceVersion": "7",
        "finalizers": ["serving.kubemaas.io/model-cache-cleanup"]}, "spec": NODE_SPEC}
    nodes = {"gpu-1": {"pool": "gpu"}}

    def wake(fake: OverQuota) -> float | None:
        return asyncio.run(reconcile_cache(CacheSnapshot(body=body, nodes=nodes), fake, memory,
                                           NOW))  # type: ignore[arg-type]

    fake = OverQuota()
    assert wake(fake) == REFUSED_RETRY_S
    (status,) = [c[1] for c in fake.calls if c[0] == "status"]
    assert (status["phase"], status["reason"]) == ("Pending", "Refused")
    assert "exceeded quota" in status["message"] and [c[0] for c in fake.calls].count(
        "apply") == 1
    body = {**body, "status": status,
            "metadata": {**body["metadata"], "resourceVersion": "9"}}  # as the watch delivers it
    for seconds in (1.0, 10.0, REFUSED_RETRY_S - 1):
        clock[0] = 100.0 + seconds
        fake = OverQuota()
        assert wake(fake) == REFUSED_RETRY_S - seconds
        assert fake.calls == [], (seconds, fake.calls)  # nothing asked, nothing written
    clock[0] = 100.0 + REFUSED_RETRY_S + 1  # due: asked again, the status unchanged
    fake = OverQuota()
    assert wake(fake) == REFUSED_RETRY_S
    assert [c[0] for c in fake.calls] == ["apply"]
    clock[0] += 1  # the spec changed: asked at once
    body = {**body, "metadata": {**body["metadata"], "generation": 2}}
    fake = OverQuota()
    wake(fake)
    assert [c[0] for c in fake.calls][:1] == ["apply"]


def test_only_a_node_that_comes_goes_or_is_relabelled_wakes_the_caches(
        monkeypatch: Any) -> None:
    """Every node event (a kubelet's status, a heartbeat) woke every cache; a cache reads a
    node's name and labels only."""
    from kubemaas_operator.modelcache import handlers

    class Queue:
        def __init__(self) -> None:
            self.keys: list[Any] = []

        def enqueue(self, key: Any, delay: float = 0.0) -> None:
            self.keys.append(key)

    queue = Queue()
    monkeypatch.setattr(handlers, "_state", {"queue": queue, "cache_index": {("ml", "c"): []}})

    def event(type: str | None, labels: dict[str, str]) -> int:
        before = len(queue.keys)
        asyncio.run(handlers.cache_node_event(type=type, name="n1", labels=labels))
        return len(queue.keys) - before

    assert event(None, {"pool": "gpu"}) == 0  # the initial listing
    assert event("MODIFIED", {"pool": "gpu"}) == 0  # its status changed
    assert event("MODIFIED", {"pool": "cpu"}) == 1
    assert event("DELETED", {"pool": "cpu"}) == 1
    assert event("ADDED", {"pool": "cpu"}) == 1
