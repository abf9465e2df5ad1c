"""A language model's InferencePool and its route, against the real control plane.

The Gateway API's CRDs and the Gateway API Inference Extension's InferencePool CRD
(sigs.k8s.io/gateway-api-inference-extension v1.6.0, from the Go module cache:
kubemaas_testbed.inference_extension) are installed into the session's testbed by this module's
fixture while the operator runs, so the operator finds them through API discovery (every
KUBEMAAS_OPERATOR_GATEWAY_DISCOVERY_S). Only language models (spec.model.format hf) get a pool,
so the other tests are unaffected. No Gateway controller or endpoint picker runs: the test reads
the objects through the API server; no traffic is sent anywhere.
"""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.cluster.conftest import RESYNC_S, Operator
from tests.cluster.test_operator import apply, condition, get, wait_phase
from tests.cluster.test_rollout_gateway import exists, gateway_api, gw_ns
from tests.conftest import Kube
from tests.helpers import holds, wait_for

pytestmark = pytest.mark.cluster
__all__ = ["gateway_api", "gw_ns"]  # fixtures used here

GROUP = "inference.networking.k8s.io"
RUNTIME_PODS = {"app.kubernetes.io/name": "kubemaas-runtime", "app.kubernetes.io/instance": "llm"}


@pytest.fixture(scope="module")
def inference_extension(kube: Kube, operator: Operator, gateway_api: None) -> None:
    from kubemaas_testbed import inference_extension

    served = "InferencePool (inference.networking.k8s.io/v1) is served"
    inference_extension.install(kube.kubeconfig)
    wait_for(lambda: served in operator.log_text(), timeout=30,
             what="the operator to discover InferencePool while it runs")
    # No restart: kopf watches a kind whose CRD appears late only if its rescan (on CRD events)
    # already finds it in API discovery, and when it does not, the operator's own discovery asks
    # kopf to look again (kopf_watch.py); the drift check below needs that watch.


def llm(name: str = "llm", port: int = 8080, gateway: bool = True,
        picker: dict[str, Any] | None = None, model_format: str = "hf") -> str:
    serving: dict[str, Any] = {"port": port}
    if gateway:
        serving["gateway"] = {"name": "inference"}
    if picker is not None:
        serving["inferencePool"] = {"endpointPicker": picker}
    return yaml.safe_dump({
        "apiVersion": "serving.kubemaas.io/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"uri": "s3://models/llama-3-8b", "format": model_format},
                 "runtime": {"image": "ghcr.io/kubemaas/runtime:0.1.0"}, "serving": serving}})


def pool_of(kube: Kube, ns: str, name: str) -> dict[str, Any] | None:
    if not exists(kube, ns, f"inferencepools.{GROUP}", name):
        return None
    return get(kube, ns, f"inferencepools.{GROUP}", name)


def test_pool_and_route_follow_the_spec_and_go_with_the_model(
        kube: Kube, gw_ns: str, inference_extension: None) -> None:
    ns = gw_ns
    apply(kube, ns, llm(picker={"name": "llm-epp", "port": 9002}))
    pool = wait_for(lambda: pool_of(kube, ns, "llm"), timeout=30, what="the InferencePool")
    assert pool["spec"]["selector"] == {"matchLabels": RUNTIME_PODS}
    assert pool["spec"]["targetPorts"] == [{"number": 8080}]
    assert pool["spec"]["endpointPickerRef"] == {
        "group": "", "kind": "Service", "name": "llm-epp", "port": {"number": 9002},
        "failureMode": "FailClose"}
    owner = pool["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "ModelDeployment" and owner["name"] == "llm" and owner["controller"]
    route = wait_for(lambda: get(kube, ns, "httproute", "llm") if exists(
        kube, ns, "httproute", "llm") else None, timeout=30, what="the HTTPRoute")
    rule = route["spec"]["rules"][0]
    assert rule["matches"][0]["path"] == {"type": "PathPrefix", "value": "/v1"}
    assert [(b["group"], b["kind"], b["name"]) for b in rule["backendRefs"]] == [
        (GROUP, "InferencePool", "llm")]
    assert route["spec"]["parentRefs"][0]["name"] == "inference"
    # the pool replaces the per-track Services of the weighted split
    assert not exists(kube, ns, "service", "llm-stable")
    assert not exists(kube, ns, "service", "llm-canary")
    assert exists(kube, ns, "service", "llm")  # the plain Service stays

    # steady: the resyncs (every RESYNC_S) find nothing to write (the API server's defaults in
    # the pool and the route are not drift)
    versions = {kind: get(kube, ns, kind, "llm")["metadata"]["resourceVersion"]
                for kind in (f"inferencepools.{GROUP}", "httproute")}
    holds(lambda: all(get(kube, ns, kind, "llm")["metadata"]["resourceVersion"] == version
                      for kind, version in versions.items()), 2 * RESYNC_S + 1,
          "the pool and the route unchanged", interval=1.0)

    # spec changes: the port, the picker's failure mode
    apply(kube, ns, llm(port=8000, picker={"name": "llm-epp", "port": 9002,
                                           "failureMode": "FailOpen"}))
    wait_for(lambda: (lambda p: p and p["spec"]["targetPorts"] == [{"number": 8000}]
                      and p["spec"]["endpointPickerRef"]["failureMode"] == "FailOpen")(
        pool_of(kube, ns, "llm")), timeout=30, what="the pool to follow the spec")

    # drift: a hand edit is taken back
    kube.kubectl("-n", ns, "patch", f"inferencepools.{GROUP}", "llm", "--type", "merge", "-p",
                 '{"spec": {"targetPorts": [{"number": 9999}]}}')
    wait_for(lambda: (lambda p: p and p["spec"]["targetPorts"] == [{"number": 8000}])(
        pool_of(kube, ns, "llm")), timeout=30, what="the drifted pool to be repaired")

    # no Gateway any more: the route goes, the pool stays
    apply(kube, ns, llm(port=8000, gateway=False, picker={"name": "llm-epp", "port": 9002}))
    wait_for(lambda: not exists(kube, ns, "httproute", "llm"), timeout=30,
             what="the HTTPRoute to be deleted")
    assert pool_of(kube, ns, "llm") is not None

    # deleting the model garbage-collects the pool
    kube.kubectl("-n", ns, "delete", "md", "llm", "--wait=true", "--timeout=60s")
    wait_for(lambda: pool_of(kube, ns, "llm") is None, timeout=60,
             what="the InferencePool to go with the model")


def test_a_tensor_model_gets_no_pool(kube: Kube, gw_ns: str, inference_extension: None) -> None:
    """A model in another format keeps the weighted HTTPRoute split of docs/rollouts.md."""
    ns = gw_ns
    apply(kube, ns, llm("resnet", model_format="onnx"))
    route = wait_for(lambda: get(kube, ns, "httproute", "resnet") if exists(
        kube, ns, "httproute", "resnet") else None, timeout=30, what="the HTTPRoute")
    assert {b["name"] for b in route["spec"]["rules"][0]["backendRefs"]} == {
        "resnet-stable", "resnet-canary"}
    assert pool_of(kube, ns, "resnet") is None


def test_a_pool_of_the_models_name_made_elsewhere_is_not_taken_over(
        kube: Kube, gw_ns: str, inference_extension: None) -> None:
    """An InferencePool a Helm chart or a person made under the model's name (no owner, no
    kubemaas label) is left as it is and the model says NameConflict; before, the operator
    rewrote its selector and picker and took it over, and deleting the model deleted it."""
    ns = gw_ns
    theirs = {"apiVersion": f"{GROUP}/v1", "kind": "InferencePool",
              "metadata": {"name": "helm", "namespace": ns},
              "spec": {"selector": {"matchLabels": {"app": "theirs"}},
                       "targetPorts": [{"number": 9000}],
                       "endpointPickerRef": {"name": "their-epp", "port": {"number": 9002}}}}
    kube.kubectl("apply", "-f", "-", input=yaml.safe_dump(theirs))
    apply(kube, ns, llm("helm", gateway=False))
    st = wait_phase(kube, ns, "helm", "Failed")
    ready = condition(st, "Ready")
    assert ready["reason"] == "NameConflict", st
    assert "InferencePool helm" in ready["message"] and "not made by kubemaas" in (
        ready["message"]), st
    pool = pool_of(kube, ns, "helm")
    assert pool is not None and not pool["metadata"].get("ownerReferences"), pool
    assert pool["spec"]["selector"] == {"matchLabels": {"app": "theirs"}}, pool
    assert pool["spec"]["targetPorts"] == [{"number": 9000}], pool
    kube.kubectl("-n", ns, "delete", "md", "helm", "--wait=true", "--timeout=60s")
    # the garbage collector deletes an owned pool within a second or two of its owner
    holds(lambda: pool_of(kube, ns, "helm") is not None, seconds=5,
          what="the user's InferencePool to stay when the model is deleted")


def test_without_the_crd_a_language_model_falls_back_to_the_split(
        kube: Kube, gw_ns: str, inference_extension: None, operator: Operator) -> None:
    """The CRD removed while the operator runs (the last test here: the module's fixture
    installed it once): API discovery notices, and the route goes back to the weighted split
    over the per-track Services. The CRD is installed again for whoever runs next."""
    from kubemaas_testbed import inference_extension as extension

    ns = gw_ns
    apply(kube, ns, llm("chat"))
    wait_for(lambda: pool_of(kube, ns, "chat"), timeout=30, what="the InferencePool")
    extension.uninstall(kube.kubeconfig)
    try:
        def split() -> bool:
            if not exists(kube, ns, "httproute", "chat"):
                return False
            refs = get(kube, ns, "httproute", "chat")["spec"]["rules"][0]["backendRefs"]
            return {r["name"] for r in refs} == {"chat-stable", "chat-canary"}
        wait_for(split, timeout=60, what="the route to fall back to the weighted split")
        assert "InferencePool (inference.networking.k8s.io/v1) is not served" in (
            operator.log_text())
    finally:
        extension.install(kube.kubeconfig)


def _picker_peers(kube: Kube, ns: str) -> list[Any]:
    rules = get(kube, ns, "networkpolicy", "llm")["spec"].get("ingress") or []
    return [peer["podSelector"]["matchLabels"] for rule in rules for peer in rule["from"]
            if "podSelector" in peer and "namespaceSelector" not in peer]


def test_the_pickers_pods_are_admitted_by_the_models_network_policy(
        kube: Kube, gw_ns: str, inference_extension: None) -> None:
    """The picker reads each pod's load from /metrics on the serving port; the model's
    NetworkPolicy, closed by default, refused it unless its pods were listed in
    networkPolicy.from by hand. The pods the picker's Service selects are admitted, and follow
    that Service (read at each resync)."""
    ns = gw_ns
    apply(kube, ns, llm(gateway=False, picker={"name": "llm-epp", "port": 9002}))
    wait_for(lambda: exists(kube, ns, "networkpolicy", "llm") or None, timeout=30,
             what="the model's NetworkPolicy")
    assert _picker_peers(kube, ns) == []  # no such Service yet: nobody more
    kube.kubectl("-n", ns, "create", "service", "clusterip", "llm-epp", "--tcp=9002:9002")
    kube.kubectl("-n", ns, "patch", "service", "llm-epp", "--type=merge", "-p",
                 '{"spec": {"selector": {"app": "epp", "pool": "llm"}}}')
    wait_for(lambda: _picker_peers(kube, ns) == [{"app": "epp", "pool": "llm"}] or None,
             timeout=30, what="the picker's pods admitted")
    rule = next(r for r in get(kube, ns, "networkpolicy", "llm")["spec"]["ingress"]
                if {"podSelector": {"matchLabels": {"app": "epp", "pool": "llm"}}} in r["from"])
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
    kube.kubectl("-n", ns, "delete", "service", "llm-epp")
    wait_for(lambda: _picker_peers(kube, ns) == [] or None, timeout=30,
             what="the picker's rule to go with its Service")
    kube.kubectl("-n", ns, "delete", "md", "llm", "--wait=true", "--timeout=60s")
