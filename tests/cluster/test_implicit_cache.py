"""spec.model.autoCache through the operator on the real control plane (kwok nodes: the test
writes each download pod's end into its status as the kubelet would): the ModelCache created from
the model's URI, shared by a second model that asks for the same files, the models waiting for
it and then mounting it read-only; the garbage collector removing the first model's owner
reference and, after the last model, the cache (its finalizer's clean-up first); a model that
stops asking releasing (and so deleting) the cache; a matching ModelCache someone created used
without being owned; the API server's CEL rules refusing nonsense."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest

from tests.cluster.conftest import Operator
from tests.cluster.test_modelcache import (
    REPORT,
    _json,
    cache,
    cache_pods,
    model_runs_only_on,
    terminate,
    two_nodes,
)
from tests.cluster.test_operator import apply, md
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

IMPLICIT = "serving.kubemaas.io/implicit-cache=true"


def asking(name: str, node: str, uri: str = "http://127.0.0.1:9/models/model.onnx",
           **model: Any) -> str:
    return md(name, model={"uri": uri, "format": "onnx", "autoCache": {
        "storage": {"type": "node", "node": {"nodes": [node]}},
        "download": {"progressIntervalSeconds": 1}}, **model})


def implicit_caches(kube: Kube, namespace: str) -> list[dict[str, Any]]:
    return list(_json(kube, "-n", namespace, "get", "modelcaches", "-l", IMPLICIT)["items"])


def owner_names(body: dict[str, Any]) -> list[str]:
    return sorted(r["name"] for r in body["metadata"].get("ownerReferences") or [])


def md_status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict(_json(kube, "-n", namespace, "get", "md", name).get("status") or {})


def ready_message(st: dict[str, Any]) -> str:
    return str(next((c.get("message") for c in st.get("conditions") or []
                     if c.get("type") == "Ready"), ""))


def cleaned_up(kube: Kube, namespace: str, name: str, what: str) -> set[str]:
    """Wait until the ModelCache is gone, ending each clean-up pod as the kubelet would (kwok
    may end it first); the nodes of the clean-up pods seen."""
    nodes: set[str] = set()

    def step() -> bool:
        if gone(kube, namespace, "modelcache", name):
            return True
        for pod in cache_pods(kube, namespace, name, "clean"):
            nodes.add(pod["spec"].get("nodeName") or "")
            with contextlib.suppress(AssertionError):  # gone meanwhile
                terminate(kube, namespace, pod, 0, "")
        return False
    wait_for(step, timeout=120, what=what)
    return nodes


def deployment(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    return dict(wait_for(lambda: (lambda r: json.loads(r.stdout) if r.returncode == 0 else None)(
        kube.kubectl("-n", namespace, "get", "deployment", name, "-o", "json", check=False)),
        timeout=60, what=f"{name}'s Deployment"))


def gone(kube: Kube, namespace: str, kind: str, name: str) -> bool:
    return kube.kubectl("-n", namespace, "get", kind, name, check=False).returncode != 0


def test_created_shared_waited_for_and_collected(kube: Kube, namespace: str,
                                                 operator: Operator) -> None:
    n1, _ = two_nodes(kube)
    apply(kube, namespace, asking("first", n1))
    (mc,) = wait_for(lambda: implicit_caches(kube, namespace) or None, timeout=60,
                     what="the ModelCache autoCache creates")
    name = mc["metadata"]["name"]
    assert name.startswith("model-onnx-") and owner_names(mc) == ["first"]
    assert mc["metadata"]["annotations"]["serving.kubemaas.io/created-for"] == "first"
    assert mc["spec"]["source"] == {"uri": "http://127.0.0.1:9/models/model.onnx"}
    assert mc["spec"]["storage"] == {"type": "node", "node": {
        "nodes": [n1], "path": "/var/lib/kubemaas/model-cache"}}
    (fetch,) = wait_for(lambda: cache_pods(kube, namespace, name) or None, timeout=60,
                        what="its download pod")
    assert fetch["spec"]["nodeName"] == n1

    # The model waits for it, exactly as with a named cache.
    st = wait_for(lambda: (lambda s: s if s.get("reason", "").startswith("CacheNotReady")
                           else None)(md_status(kube, namespace, "first")), timeout=60,
                  what="first: CacheNotReady")
    assert st["phase"] == "Pending" and name in ready_message(st), st
    assert st["modelCache"] == name
    assert gone(kube, namespace, "deployment", "first")
    events = _json(kube, "-n", namespace, "get", "events", "--field-selector",
                   "involvedObject.name=first,reason=CacheCreated")["items"]
    assert events and name in events[0]["message"]

    # A second model asking for the same files shares the cache (one more owner, no new cache).
    apply(kube, namespace, asking("second", n1))
    mc = wait_for(lambda: (lambda c: c if owner_names(c) == ["first", "second"] else None)(
        _json(kube, "-n", namespace, "get", "modelcache", name)), timeout=60,
        what="second's owner reference")
    assert [c["metadata"]["name"] for c in implicit_caches(kube, namespace)] == [name]
    assert [p["metadata"]["name"] for p in cache_pods(kube, namespace, name)] == [
        fetch["metadata"]["name"]]

    # Ready: both models run on it, read-only, on the node with the copy.
    terminate(kube, namespace, fetch, 0, json.dumps(REPORT))
    for model in ("first", "second"):
        model_runs_only_on(kube, namespace, n1, model)
    wide = kube.kubectl("-n", namespace, "get", "md", "second", "-o", "wide").stdout
    assert name in wide  # the Cache column

    # The garbage collector: the first model's deletion leaves the cache to the second ...
    kube.kubectl("-n", namespace, "delete", "md", "first", "--wait=false")
    mc = wait_for(lambda: (lambda c: c if owner_names(c) == ["second"] else None)(
        _json(kube, "-n", namespace, "get", "modelcache", name)), timeout=90,
        what="first's owner reference removed by the garbage collector")
    assert not mc["metadata"].get("deletionTimestamp")
    # ... and the last one's deletes it: its clean-up pod empties the node's directory first.
    kube.kubectl("-n", namespace, "delete", "md", "second", "--wait=false")
    assert cleaned_up(kube, namespace, name, "the implicit ModelCache gone after the last "
                      "model") <= {n1}


def test_released_when_no_longer_asked_for(kube: Kube, namespace: str,
                                           operator: Operator) -> None:
    n1, _ = two_nodes(kube)
    # A ModelCache someone created with the same source and storage is used, not owned.
    apply(kube, namespace, cache("mine", [n1], source={
        "uri": "http://127.0.0.1:9/models/theirs.onnx"}))
    apply(kube, namespace, asking("third", n1, "http://127.0.0.1:9/models/theirs.onnx"))
    wait_for(lambda: (lambda s: s if "ModelCache mine " in ready_message(s) else None)(
        md_status(kube, namespace, "third")), timeout=60, what="third waiting for mine")
    assert not implicit_caches(kube, namespace)
    assert not _json(kube, "-n", namespace, "get", "modelcache", "mine")["metadata"].get(
        "ownerReferences")

    # Another URI: a cache of its own.
    apply(kube, namespace, asking("third", n1, "http://127.0.0.1:9/models/own.onnx"))
    (mc,) = wait_for(lambda: implicit_caches(kube, namespace) or None, timeout=60,
                     what="third's own cache")
    name = mc["metadata"]["name"]
    assert name.startswith("own-onnx-") and owner_names(mc) == ["third"]
    (fetch,) = wait_for(lambda: cache_pods(kube, namespace, name) or None, timeout=60,
                        what="its download pod")
    assert fetch["spec"]["nodeName"] == n1

    # No longer asking: the model releases it; it was the only one, so the cache is deleted.
    apply(kube, namespace, md("third", model={"uri": "s3://models/m.onnx", "format": "onnx"}))
    cleaned_up(kube, namespace, name, "the released cache gone")
    assert not gone(kube, namespace, "modelcache", "mine")  # someone's cache: untouched
    deployment(kube, namespace, "third")  # the model now downloads by itself


@pytest.mark.parametrize(("model", "words"), [
    ({"uri": "pvc://claim/m.onnx", "format": "onnx",
      "autoCache": {"storage": {"type": "node", "node": {"nodes": ["node-x"]}}}}, "already local"),
    ({"uri": "file:///m.onnx", "cache": "c", "format": "onnx",
      "autoCache": {"storage": {"type": "node", "node": {"nodes": ["node-x"]}}}}, "not both"),
    ({"uri": "hf://acme/tiny", "format": "hf"}, "add model.autoCache"),
    ({"uri": "hf://acme/tiny", "format": "hf",
      "autoCache": {"storage": {"type": "node", "node": {"nodes": ["node-x"]}}}},
     "autoCache.revision is required"),
    ({"uri": "s3://models/m/", "format": "onnx", "autoCache": {
        "revision": "abc", "storage": {"type": "node", "node": {"nodes": ["node-x"]}}}},
     "revision only applies to hf://"),
    ({"uri": "s3://models/m/", "format": "onnx", "autoCache": {
        "storage": {"type": "node", "node": {}}}}, "nodeSelector and/or nodes"),
])
def test_nonsense_is_refused(kube: Kube, namespace: str, operator: Operator,
                             model: dict[str, Any], words: str) -> None:
    result = kube.kubectl("-n", namespace, "apply", "-f", "-", check=False,
                          input=md("nonsense", model=model))
    assert result.returncode != 0 and words in result.stderr, result.stderr


def test_an_hf_model_with_autocache_is_accepted(kube: Kube, namespace: str,
                                                operator: Operator) -> None:
    text = md("hf-ok", model={"uri": "hf://acme/tiny", "format": "hf",
                              "credentialsSecretRef": {"name": "hf-token"},
                              "autoCache": {"revision": "abc", "storage": {
                                  "type": "pvc", "pvc": {"claimName": "weights"}}}})
    out = json.loads(kube.kubectl("-n", namespace, "apply", "--dry-run=server", "-o", "json",
                                  "-f", "-", input=text).stdout)
    assert out["spec"]["model"]["autoCache"]["revision"] == "abc"
    assert out["spec"]["model"]["uri"] == "hf://acme/tiny"
