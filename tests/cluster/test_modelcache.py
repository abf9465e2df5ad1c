"""ModelCache through the operator on the real control plane: its download pods (kwok runs no
container, so the test writes each pod's termination into its status as the kubelet would, like
tests/cluster/test_optimize_contract.py), the status that follows, a ModelDeployment that waits
for it and then mounts it read-only on the nodes whose copy is Ready, an operator restarted
mid-download, and deletion that cleans up."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from kubemaas_testbed.volumes import bound_host_volume
from tests.cluster.conftest import Operator
from tests.cluster.test_operator import apply, md
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPORT = {"phase": "Ready", "reason": "Ready", "message": "2 files verified",
          "files": [{"path": "config.json", "size": 600, "sha256": "a" * 64},
                    {"path": "model.onnx", "size": 4000, "sha256": "b" * 64}],
          "model": {"architecture": "LlamaForCausalLM", "parameters": 700000,
                    "weightBytes": 2800000, "numLayers": 2, "hiddenSize": 64,
                    "numAttentionHeads": 4, "numKeyValueHeads": 2, "headDim": 16,
                    "maxPositionEmbeddings": 256, "dtype": "float32",
                    "slidingWindow": 64, "slidingWindowLayers": 2}}


def cache(name: str, nodes: list[str], **spec: Any) -> str:
    """A ModelCache on `nodes` (spec keys override; sizeLimit and the like pass through)."""
    body: dict[str, Any] = {"source": {"uri": "http://127.0.0.1:9/models/model.onnx"},
                            "storage": {"type": "node", "node": {"nodes": nodes}},
                            "download": {"progressIntervalSeconds": 1}}
    body.update(spec)
    return yaml.safe_dump({"apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelCache",
                           "metadata": {"name": name}, "spec": body})


def _json(kube: Kube, *args: str) -> Any:
    return json.loads(kube.kubectl(*args, "-o", "json").stdout)


def cache_pods(kube: Kube, namespace: str, name: str, role: str = "fetch") -> list[dict[str, Any]]:
    items = kube.read(f"/api/v1/namespaces/{namespace}/pods", selector=(
        f"serving.kubemaas.io/model-cache={name},serving.kubemaas.io/cache-role={role}"))["items"]
    return [p for p in items if not p["metadata"].get("deletionTimestamp")]


def cache_path(namespace: str, name: str) -> str:
    return f"/apis/serving.kubemaas.io/v1alpha1/namespaces/{namespace}/modelcaches/{name}"


def cache_status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict(kube.read(cache_path(namespace, name)).get("status") or {})


def started(kube: Kube, namespace: str, pod: dict[str, Any]) -> None:
    """Wait for kwok to start the pod (its pod-ready stage: phase Running). A container ends
    only after it started; a status written before kwok's can be overwritten by it (the API
    server lets a status patch take a Succeeded pod back to Running)."""
    name = pod["metadata"]["name"]
    wait_for(lambda: (_json(kube, "-n", namespace, "get", "pod", name).get("status") or {}).get(
        "phase") == "Running", timeout=60, what=f"kwok to start pod {name}")


def terminate(kube: Kube, namespace: str, pod: dict[str, Any], exit_code: int,
              message: str) -> None:
    """Write the container's end into the pod's status, as the kubelet does (once kwok has
    started the pod: see started())."""
    started(kube, namespace, pod)
    c = pod["spec"]["containers"][0]
    patch = {"status": {"phase": "Succeeded" if exit_code == 0 else "Failed",
                        "containerStatuses": [{
                            "name": c["name"], "image": c["image"], "imageID": "", "ready": False,
                            "restartCount": 0, "state": {"terminated": {
                                "exitCode": exit_code, "reason": "Completed" if exit_code == 0
                                else "Error", "message": message,
                                "finishedAt": "2026-11-30T00:00:00Z"}}}]}}
    kube.kubectl("-n", namespace, "patch", "pod", pod["metadata"]["name"], "--subresource",
                 "status", "--type", "strategic", "-p", json.dumps(patch))


def two_nodes(kube: Kube) -> list[str]:
    nodes = _json(kube, "get", "nodes")["items"]
    names = sorted(n["metadata"]["name"] for n in nodes
                   if (n["metadata"].get("annotations") or {}).get("kwok.x-k8s.io/node") == "fake")
    assert len(names) >= 2, names
    return names[:2]


def test_node_cache_end_to_end(kube: Kube, namespace: str, operator: Operator) -> None:
    n1, n2 = two_nodes(kube)
    apply(kube, namespace, cache("tiny", [n1, n2]))
    pods = wait_for(lambda: (lambda p: p if len(p) == 2 else None)(
        cache_pods(kube, namespace, "tiny")), timeout=60, what="two download pods")
    by_node = {p["spec"]["nodeName"]: p for p in pods}
    assert set(by_node) == {n1, n2}
    c = by_node[n1]["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "kubemaas_runtime.fetch"]
    assert by_node[n1]["spec"]["volumes"][0]["hostPath"]["path"].endswith(f"/{namespace}/tiny")
    finalizers = _json(kube, "-n", namespace, "get", "modelcache", "tiny")["metadata"].get(
        "finalizers")
    assert finalizers == ["serving.kubemaas.io/model-cache-cleanup"]

    # A model that names the cache waits for it.
    apply(kube, namespace, md("uses-cache", model={"cache": "tiny", "format": "onnx"}))
    waiting = wait_for(lambda: (lambda s: s if s.get("reason", "").startswith(
        "CacheNotReady") else None)(_json(kube, "-n", namespace, "get", "md", "uses-cache")
                                    .get("status") or {}), timeout=60, what="CacheNotReady")
    assert waiting["phase"] == "Pending"
    assert kube.kubectl("-n", namespace, "get", "deployment", "uses-cache",
                        check=False).returncode != 0

    # The operator restarted mid-download creates no new pods and carries on.
    wait_for(lambda: cache_status(kube, namespace, "tiny").get("phase") == "Downloading",
             timeout=60, what="phase Downloading")
    operator.restart()
    terminate(kube, namespace, by_node[n1], 0, json.dumps(REPORT))
    st = wait_for(lambda: (lambda s: s if any(n.get("phase") == "Ready" for n in s.get(
        "nodes") or []) else None)(cache_status(kube, namespace, "tiny")), timeout=60,
        what=f"{n1}'s copy Ready")
    assert sorted(p["metadata"]["name"] for p in cache_pods(kube, namespace, "tiny")) == sorted(
        p["metadata"]["name"] for p in pods)
    assert st["phase"] == "Downloading" and st["model"]["numKeyValueHeads"] == 2
    assert (st["model"]["slidingWindow"], st["model"]["slidingWindowLayers"]) == (64, 2)
    assert [f["sha256"] for f in st["files"]] == ["a" * 64, "b" * 64]
    printed = kube.kubectl("-n", namespace, "get", "mc", "tiny").stdout
    assert "node" in printed and "Downloading" in printed

    model_runs_only_on(kube, namespace, n1)

    # A stalled download on the other node fails the cache with the downloader's reason.
    terminate(kube, namespace, by_node[n2], 1, json.dumps(
        {"phase": "Failed", "reason": "Stalled", "message": "no bytes for 30s"}))
    st = wait_for(lambda: (lambda s: s if s.get("phase") == "Failed" else None)(
        cache_status(kube, namespace, "tiny")), timeout=60, what="phase Failed")
    assert st["reason"] == "Stalled" and n2 in st["message"]

    _deletion_held_while_in_use_then_cleaned(kube, namespace, n1, n2)


def model_runs_only_on(kube: Kube, namespace: str, node: str, model: str = "uses-cache"
                       ) -> None:
    """The model now runs, read-only, and only on the node whose copy is Ready."""
    dep = wait_for(lambda: (lambda r: json.loads(r.stdout) if r.returncode == 0 else None)(
        kube.kubectl("-n", namespace, "get", "deployment", model, "-o", "json",
                     check=False)), timeout=60, what=f"{model}'s Deployment")
    pod = dep["spec"]["template"]["spec"]
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "model-files")
    assert mount["readOnly"] is True
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["KUBEMAAS_MODEL_URI"] == "file:///var/lib/kubemaas/model-cache"
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"]
    assert all({"key": "metadata.name", "operator": "In", "values": [node]} in t["matchFields"]
               for t in terms)


def _deletion_held_while_in_use_then_cleaned(kube: Kube, namespace: str, n1: str,
                                            n2: str) -> None:
    """Deleting the cache while a model runs from it: held (like a claim in use), and the
    model is told. Once the model is gone: clean-up pods on both nodes, then the ModelCache
    and its pods go."""
    wait_for(lambda: [p for p in _json(kube, "-n", namespace, "get", "pods", "-l",
                                       "app.kubernetes.io/instance=uses-cache")["items"]
                      if p["status"].get("phase") == "Running"] or None, timeout=60,
             what="the model's pod Running")
    kube.kubectl("-n", namespace, "delete", "modelcache", "tiny", "--wait=false")
    held = wait_for(lambda: (lambda s: s if s.get("reason") == "InUse" else None)(
        cache_status(kube, namespace, "tiny")), timeout=60, what="reason InUse")
    assert n1 in held["message"] and not cache_pods(kube, namespace, "tiny", "clean")
    told = wait_for(lambda: (lambda s: s if s.get("reason", "").startswith("CacheDeleting")
                             else None)(
        _json(kube, "-n", namespace, "get", "md", "uses-cache").get("status") or {}),
        timeout=60, what="the model told CacheDeleting")
    # its pod still serves: Degraded with its URL, not Pending with none
    assert told["phase"] == "Degraded" and told.get("url"), told

    kube.kubectl("-n", namespace, "delete", "md", "uses-cache", "--wait=false")
    cleaners = wait_for(lambda: (lambda p: p if len(p) == 2 else None)(
        cache_pods(kube, namespace, "tiny", "clean")), timeout=60, what="two clean-up pods")
    assert {p["spec"]["nodeName"] for p in cleaners} == {n1, n2}
    assert kube.kubectl("-n", namespace, "get", "modelcache", "tiny",
                        check=False).returncode == 0  # held by the finalizer
    for p in cleaners:
        terminate(kube, namespace, p, 0, "")
    wait_for(lambda: kube.gone(cache_path(namespace, "tiny")), timeout=60,
             what="the ModelCache gone")
    wait_for(lambda: not cache_pods(kube, namespace, "tiny") and not cache_pods(
        kube, namespace, "tiny", "clean"), timeout=90, what="its pods garbage-collected")



def test_invalid_cache_is_refused(kube: Kube, namespace: str, operator: Operator) -> None:
    result = kube.kubectl("-n", namespace, "apply", "-f", "-", check=False, input=cache(
        "bad", ["x"], source={"uri": "hf://acme/tiny"}))
    assert result.returncode != 0 and "source.revision is required" in result.stderr
    result = kube.kubectl("-n", namespace, "apply", "-f", "-", check=False, input=md(
        "both", model={"uri": "s3://m/x.onnx", "cache": "c", "format": "onnx"}))
    assert result.returncode != 0 and "exactly one" in result.stderr


def test_budget_evicts_the_least_recently_used_copy(kube: Kube, namespace: str,
                                                    operator: Operator) -> None:
    n1, _ = two_nodes(kube)
    # A directory of the test's own: the budget counts only the copies under the same path, so
    # caches of earlier tests whose namespaces are still going (their copies still on n1) are
    # not candidates that the least-recently-used order could pick before old.
    node = {"type": "node", "node": {"nodes": [n1], "budget": "6000",
                                     "path": f"/var/lib/kubemaas/budget-{namespace}"}}
    apply(kube, namespace, cache("old", [n1], storage=node))
    (pod,) = wait_for(lambda: cache_pods(kube, namespace, "old") or None, timeout=60,
                      what="old's download pod")
    terminate(kube, namespace, pod, 0, json.dumps(REPORT))  # 4600 bytes on n1
    wait_for(lambda: cache_status(kube, namespace, "old").get("phase") == "Ready", timeout=60,
             what="old Ready")
    # 4600 + 2000 > 6000: old (unused) is evicted from n1 to make room.
    apply(kube, namespace, cache("new", [n1], storage=node, sizeLimit="2000"))
    (evict,) = wait_for(lambda: cache_pods(kube, namespace, "old", "evict") or None,
                        timeout=60, what="an evict pod for old")
    assert evict["spec"]["nodeName"] == n1
    assert evict["spec"]["volumes"][0]["hostPath"]["path"].endswith(f"/{namespace}/old")
    wait_for(lambda: cache_pods(kube, namespace, "new") or None, timeout=60,
             what="new's download pod")
    st = wait_for(lambda: (lambda s: s if (s.get("nodes") or [{}])[0].get("phase") == "Evicted"
                           else None)(cache_status(kube, namespace, "old")), timeout=60,
                  what="old's copy Evicted")
    assert st["phase"] == "Pending" and st["reason"] == "Evicted"


@contextlib.contextmanager
def other_namespace(kube: Kube, name: str) -> Iterator[str]:
    """A namespace beside the test's: deleted on the way out, and gone before the test goes
    on (when the body raised, only deleted)."""
    kube.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        kube.kubectl("delete", "namespace", name, "--wait=false", check=False)
    wait_for(lambda: kube.gone(f"/api/v1/namespaces/{name}"), timeout=90,
             what=f"namespace {name} gone")


def test_a_cache_whose_namespace_goes_evicts_nothing(kube: Kube, namespace: str,
                                                    operator: Operator) -> None:
    """A cache with a budget whose namespace is deleted: when the namespace controller deletes
    its download pod, the operator, seeing a first download to plan, must not evict another
    namespace's copy for a pod the API server will refuse (seen in full runs: the budget test's
    leftover cache evicted the next test's copy)."""
    n1, _ = two_nodes(kube)
    with other_namespace(kube, f"{namespace}-going") as going:
        apply(kube, going, cache("asker", [n1], storage={
            "type": "node", "node": {"nodes": [n1], "budget": "6000"}}, sizeLimit="2000"))
        wait_for(lambda: cache_pods(kube, going, "asker") or None, timeout=60,
                 what="asker's download pod (it fits: nothing else on the node)")
        apply(kube, namespace, cache("victim", [n1]))
        (pod,) = wait_for(lambda: cache_pods(kube, namespace, "victim") or None, timeout=60,
                          what="victim's download pod")
        terminate(kube, namespace, pod, 0, json.dumps(REPORT))  # 4600 bytes: over the budget
        wait_for(lambda: cache_status(kube, namespace, "victim").get("phase") == "Ready",
                 timeout=60, what="victim Ready")
    assert not cache_pods(kube, namespace, "victim", "evict")
    assert cache_status(kube, namespace, "victim").get("phase") == "Ready"


def test_a_copy_whose_namespace_goes_is_not_evicted(kube: Kube, namespace: str,
                                                    operator: Operator) -> None:
    """The copy to evict belongs to a cache whose namespace is being deleted (a finalizer of
    the test's holds the cache there): the API server refuses the evict pod in that namespace,
    and the cache asking for room downloads all the same instead of failing PodRejected."""
    n1, _ = two_nodes(kube)
    with other_namespace(kube, f"{namespace}-held") as held:
        try:
            apply(kube, held, cache("victim", [n1]))
            (pod,) = wait_for(lambda: cache_pods(kube, held, "victim") or None, timeout=60,
                              what="victim's download pod")
            terminate(kube, held, pod, 0, json.dumps(REPORT))  # 4600 bytes on n1
            wait_for(lambda: cache_status(kube, held, "victim").get("phase") == "Ready",
                     timeout=60, what="victim Ready")
            kube.kubectl("-n", held, "patch", "modelcache", "victim", "--type=json", "-p",
                         json.dumps([{"op": "add", "path": "/metadata/finalizers/-",
                                      "value": "test.kubemaas.io/hold"}]))
            kube.kubectl("delete", "namespace", held, "--wait=false")
            wait_for(lambda: _json(kube, "-n", held, "get", "modelcache", "victim")[
                "metadata"].get("deletionTimestamp"), timeout=60,
                what="victim being deleted with its namespace")
            # 4600 + 2000 > 6000: the victim's copy is the one to evict.
            apply(kube, namespace, cache("asker", [n1], storage={
                "type": "node", "node": {"nodes": [n1], "budget": "6000"}}, sizeLimit="2000"))
            (pod,) = wait_for(lambda: cache_pods(kube, namespace, "asker") or None, timeout=60,
                              what="asker's download pod")
            st = wait_for(lambda: (lambda s: s if s.get("phase") == "Downloading" else None)(
                cache_status(kube, namespace, "asker")), timeout=60, what="asker Downloading")
            assert st["nodes"][0]["phase"] == "Downloading", st
            # A refused evict pod failing the asker shows for one pass only (the next pass has
            # no first download left to make room for), but its Warning Event stays.
            events = _json(kube, "-n", namespace, "get", "events", "--field-selector",
                           "involvedObject.kind=ModelCache,involvedObject.name=asker")["items"]
            rejected = [e["message"] for e in events if e.get("reason") == "PodRejected"]
            assert not rejected, rejected
        finally:
            kube.kubectl("-n", held, "patch", "modelcache", "victim", "--type=merge", "-p",
                         '{"metadata": {"finalizers": null}}', check=False)


def shared_claim(kube: Kube, namespace: str, pv: str) -> str:
    """A ReadWriteMany claim `shared` bound to the PersistentVolume `pv` (a hostPath nothing on
    kwok reads: the tests run the cache's pods themselves); returns `pv`, deleted by the test."""
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump_all(
        bound_host_volume(pv, "/tmp/unused-" + pv, namespace, "shared", writable=True)))
    return pv


def test_pvc_cache_fills_one_claim(kube: Kube, namespace: str, operator: Operator) -> None:
    pv = shared_claim(kube, namespace, f"{namespace}-cache")
    try:
        apply(kube, namespace, cache("files", [], storage={
            "type": "pvc", "pvc": {"claimName": "shared", "subPath": "models/files"}}))
        (pod,) = wait_for(lambda: cache_pods(kube, namespace, "files") or None, timeout=60,
                          what="one download pod")
        assert pod["spec"]["volumes"][0]["persistentVolumeClaim"] == {"claimName": "shared"}
        assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
        assert "--dest" in pod["spec"]["containers"][0]["args"]
        terminate(kube, namespace, pod, 0, json.dumps(REPORT))
        st = wait_for(lambda: (lambda s: s if s.get("phase") == "Ready" else None)(
            cache_status(kube, namespace, "files")), timeout=60, what="Ready")
        assert (st["claimName"], st["path"]) == ("shared", "models/files")
        assert st["bytesTotal"] == 4600 and "nodes" not in st
        apply(kube, namespace, md("on-pvc", model={"cache": "files", "format": "onnx"}))
        dep = wait_for(lambda: (lambda r: json.loads(r.stdout) if r.returncode == 0 else None)(
            kube.kubectl("-n", namespace, "get", "deployment", "on-pvc", "-o", "json",
                         check=False)), timeout=60, what="the model's Deployment")
        spec = dep["spec"]["template"]["spec"]
        assert {"name": "model-files", "persistentVolumeClaim": {
            "claimName": "shared", "readOnly": True}} in spec["volumes"]
        mount = next(m for m in spec["containers"][0]["volumeMounts"]
                     if m["name"] == "model-files")
        assert mount == {"name": "model-files", "mountPath": "/var/lib/kubemaas/model-cache",
                         "readOnly": True, "subPath": "models/files"}
    finally:
        kube.kubectl("delete", "pv", pv, "--ignore-not-found", "--wait=false", check=False)


def test_a_model_runs_on_every_ready_copy(kube: Kube, namespace: str,
                                          operator: Operator) -> None:
    """A cache Ready on two nodes: the model's Deployment used to carry `matchFields
    metadata.name In [n1, n2]`, which the API server refuses (one value per node field
    selector), and the model turned Failed, Rejected. Now it runs on both nodes."""
    n1, n2 = two_nodes(kube)
    apply(kube, namespace, cache("duo", [n1, n2]))
    pods = wait_for(lambda: (lambda p: p if len(p) == 2 else None)(
        cache_pods(kube, namespace, "duo")), timeout=60, what="two download pods")
    for pod in pods:
        terminate(kube, namespace, pod, 0, json.dumps(REPORT))
    wait_for(lambda: cache_status(kube, namespace, "duo").get("phase") == "Ready", timeout=60,
             what="both copies Ready")
    apply(kube, namespace, md("on-duo", replicas=2, model={"cache": "duo", "format": "onnx"}))

    def placed() -> set[str] | None:
        st = _json(kube, "-n", namespace, "get", "md", "on-duo").get("status") or {}
        assert st.get("reason") != "Rejected", st.get("message")
        items = _json(kube, "-n", namespace, "get", "pods", "-l",
                      "app.kubernetes.io/instance=on-duo")["items"]
        nodes = {p["spec"].get("nodeName") for p in items}
        return {n for n in nodes if n} if len(items) == 2 and None not in nodes else None
    assert wait_for(placed, timeout=90, what="the model's pods on both nodes") == {n1, n2}


def test_a_cache_deleted_mid_download_waits_for_its_clean_pod(kube: Kube, namespace: str,
                                                              operator: Operator) -> None:
    """Deleted while its download pod ran: the pass after that pod was gone found no node to
    clean and removed the finalizer while the clean-up pod ran (the files stayed). Now the
    cache stays until the clean-up pod ends."""
    n1, _ = two_nodes(kube)
    apply(kube, namespace, cache("going", [n1]))
    (pod,) = wait_for(lambda: cache_pods(kube, namespace, "going") or None, timeout=60,
                      what="the download pod")
    started(kube, namespace, pod)
    kube.kubectl("-n", namespace, "delete", "modelcache", "going", "--wait=false")
    (clean,) = wait_for(lambda: cache_pods(kube, namespace, "going", "clean") or None,
                        timeout=60, what="the clean-up pod")
    wait_for(lambda: not cache_pods(kube, namespace, "going"), timeout=60,
             what="the download pod gone")
    operator.wait_resyncs(2)
    assert kube.kubectl("-n", namespace, "get", "modelcache", "going",
                        check=False).returncode == 0, "the finalizer went before the clean-up"
    terminate(kube, namespace, clean, 0, "")
    wait_for(lambda: kube.gone(cache_path(namespace, "going")), timeout=60,
             what="the ModelCache gone once cleaned")
