"""Canary traffic split by Gateway API HTTPRoute weights, against the real control plane.

The Gateway API's standard-channel CRDs (sigs.k8s.io/gateway-api, from the Go module cache:
kubemaas_testbed.gateway) are installed into the session's testbed by this module's fixture.
That changes nothing for the other tests: an HTTPRoute is made only for a model that names a
Gateway (spec.serving.gateway) or when the operator has a default Gateway, and the session's
operator has none. The operator finds the CRDs through API discovery while it runs
(KUBEMAAS_OPERATOR_GATEWAY_DISCOVERY_S is short in tests/cluster/conftest.py).

No Gateway controller runs here: the test reads the HTTPRoute, the Services and the status
through the API server, as `kubectl get httproute -w` would; no traffic is sent anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import yaml

from tests.cluster.conftest import Operator
from tests.cluster.test_operator import apply, get, status
from tests.cluster.test_rollout import model, wait_revision
from tests.conftest import Kube, delete_namespace_and_its_pods
from tests.helpers import Poller, wait_for

pytestmark = pytest.mark.cluster

GW = "gateway.networking.k8s.io"
NEW = "ghcr.io/kubemaas/runtime:0.2.0"


@pytest.fixture(scope="module")
def gateway_api(kube: Kube, operator: Operator) -> None:
    from kubemaas_testbed import gateway

    gateway.install(kube.kubeconfig)
    wait_for(lambda: "Gateway API HTTPRoute (gateway.networking.k8s.io/v1) is served"
             in operator.log_text() or "Gateway API HTTPRoute (gateway.networking.k8s.io/v1) "
             "served" in operator.log_text(), timeout=30,
             what="the operator to discover HTTPRoute")


@pytest.fixture
def gw_ns(kube: Kube, namespace: str, gateway_api: None) -> Iterator[str]:
    """A namespace with a Gateway named `inference` (stored only: no controller serves it)."""
    kube.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump_all([
        {"apiVersion": f"{GW}/v1", "kind": "GatewayClass", "metadata": {"name": "none"},
         "spec": {"controllerName": "example.com/none"}},
        {"apiVersion": f"{GW}/v1", "kind": "Gateway", "metadata": {"name": "inference"},
         "spec": {"gatewayClassName": "none", "listeners": [
             {"name": "http", "protocol": "HTTP", "port": 80}]}}]))
    yield namespace
    delete_namespace_and_its_pods(kube, namespace)


def gw_model(name: str, replicas: int, image: str = "ghcr.io/kubemaas/runtime:0.1.0",
             gateway: bool = True, **rollout: Any) -> str:
    body = yaml.safe_load(model(name, replicas, image=image, **rollout))
    if gateway:
        body["spec"]["serving"] = {"gateway": {"name": "inference"}}
    return yaml.safe_dump(body)


def weights(route: dict[str, Any]) -> tuple[int, int]:
    refs = route["spec"]["rules"][0]["backendRefs"]
    by_name = {r["name"]: r["weight"] for r in refs}
    name = route["metadata"]["name"]
    return by_name[f"{name}-stable"], by_name[f"{name}-canary"]


def exists(kube: Kube, ns: str, kind: str, name: str) -> bool:
    return kube.kubectl("-n", ns, "get", kind, name, check=False).returncode == 0


@dataclass
class RouteWatch(Poller):
    """Samples the HTTPRoute's weights and the canary status through the API server."""

    kube: Kube
    namespace: str
    name: str
    seen: list[tuple[int, int]] = field(default_factory=list)  # distinct weights, in order
    splits: set[str] = field(default_factory=set)
    # route weights -> the status's trafficPercent values read right after them (the two reads
    # are not atomic: a reconcile between them may have moved both on)
    status_at: dict[tuple[int, int], set[int]] = field(default_factory=dict)
    def poll(self) -> None:
        from kubernetes import client

        custom = client.CustomObjectsApi(self.kube.api)
        try:
            route = custom.get_namespaced_custom_object(GW, "v1", self.namespace,
                                                        "httproutes", self.name)
        except client.exceptions.ApiException:
            return
        w = weights(route)
        if not self.seen or self.seen[-1] != w:
            self.seen.append(w)
        md = custom.get_namespaced_custom_object("serving.kubemaas.io", "v1alpha1",
                                                 self.namespace, "modeldeployments", self.name)
        canary = ((md.get("status") or {}).get("rollout") or {}).get("canary") or {}
        if canary:
            self.splits.add(canary.get("trafficSplit", ""))
            self.status_at.setdefault(w, set()).add(int(canary.get("trafficPercent", -1)))


def route_weights(kube: Kube, ns: str, name: str) -> tuple[int, int] | None:
    if not exists(kube, ns, "httproute", name):
        return None
    return weights(get(kube, ns, "httproute", name))


def test_canary_steps_through_httproute_weights(kube: Kube, gw_ns: str) -> None:
    """10 -> 50 -> 100 seen in the HTTPRoute's backendRefs (90/10, 50/50, 0/100), then the
    promotion hands everything back to NAME-stable (100/0) on the new revision."""
    ns = gw_ns
    steps = [{"weight": 10, "pauseSeconds": 2}, {"weight": 50, "pauseSeconds": 2},
             {"weight": 100}]
    apply(kube, ns, gw_model("m", 8, canary={"steps": steps}))
    wait_revision(kube, ns, "m", 1)
    wait_for(lambda: route_weights(kube, ns, "m") == (100, 0), timeout=30,
             what="the HTTPRoute at 100/0 (stable only)")
    route = get(kube, ns, "httproute", "m")
    assert route["spec"]["parentRefs"][0]["name"] == "inference"
    assert route["spec"]["parentRefs"][0]["namespace"] == ns
    assert route["spec"]["rules"][0]["matches"][0]["path"]["value"] == "/v2/models/m"
    md_uid = get(kube, ns, "md", "m")["metadata"]["uid"]
    for svc, track in (("m-stable", "main"), ("m-canary", "canary")):
        obj = get(kube, ns, "service", svc)
        assert obj["spec"]["selector"]["serving.kubemaas.io/track"] == track
        assert obj["metadata"]["ownerReferences"][0]["uid"] == md_uid
    assert route["metadata"]["ownerReferences"][0]["uid"] == md_uid
    # the model's own Service still selects every replica (in-cluster clients)
    assert "serving.kubemaas.io/track" not in get(kube, ns, "service", "m")["spec"]["selector"]

    with RouteWatch(kube, ns, "m") as watch:
        apply(kube, ns, gw_model("m", 8, image=NEW, canary={"steps": steps}))
        st = wait_for(lambda: (lambda s: s if ((s.get("rollout") or {}).get("canary") or {}).get(
            "step") == 3 and "promote to 2" in s["rollout"]["message"] else None)(
            status(kube, ns, "m")), timeout=90, what="the canary at step 3 (100%), waiting")
        wait_for(lambda: route_weights(kube, ns, "m") == (0, 100), timeout=30,
                 what="the HTTPRoute at 0/100")
        canary = status(kube, ns, "m")["rollout"]["canary"]
        assert canary["trafficSplit"] == "HTTPRoute" and canary["trafficPercent"] == 100
        assert "by HTTPRoute weights" in st["rollout"]["message"]
        apply(kube, ns, gw_model("m", 8, image=NEW, canary={"steps": steps, "promote": 2}))
        st = wait_revision(kube, ns, "m", 2)
        wait_for(lambda: route_weights(kube, ns, "m") == (100, 0), timeout=30,
                 what="the HTTPRoute back at 100/0 after the promotion")
        time.sleep(0.3)
    print(f"HTTPRoute weights seen (stable, canary): {watch.seen}; status: {watch.status_at}")
    order = [watch.seen.index(w) for w in ((90, 10), (50, 50), (0, 100))]
    assert order == sorted(order), watch.seen
    assert watch.seen[0] == (100, 0) and watch.seen[-1] == (100, 0), watch.seen
    assert watch.splits == {"HTTPRoute"}, watch.splits
    for w in ((90, 10), (50, 50), (0, 100)):  # each held for a pause or a gate
        assert w[1] in watch.status_at.get(w, set()), (w, watch.status_at)
    assert st["rollout"]["history"][-1]["outcome"] == "Complete"
    assert not exists(kube, ns, "deployment", "m-canary")


def test_abort_restores_100_0_and_the_split_goes_with_the_gateway(kube: Kube,
                                                                  gw_ns: str) -> None:
    ns = gw_ns
    steps = [{"weight": 50}, {"weight": 100}]
    apply(kube, ns, gw_model("a", 4, canary={"steps": steps}))
    wait_revision(kube, ns, "a", 1)
    apply(kube, ns, gw_model("a", 4, image=NEW, canary={"steps": steps}))
    wait_for(lambda: route_weights(kube, ns, "a") == (50, 50), timeout=60,
             what="the HTTPRoute at 50/50 (the manual gate)")
    apply(kube, ns, gw_model("a", 4, image=NEW, canary={"steps": steps, "abort": True}))
    started = time.monotonic()
    wait_for(lambda: route_weights(kube, ns, "a") == (100, 0), timeout=30,
             what="the HTTPRoute back at 100/0 after the abort")
    print(f"abort: the HTTPRoute was 100/0 {time.monotonic() - started:.1f} s after the patch")
    wait_for(lambda: not exists(kube, ns, "deployment", "a-canary"), timeout=60,
             what="the canary Deployment gone")
    assert status(kube, ns, "a")["reason"].startswith("CanaryAborted")

    # a hand edit of the weights is undone: the operator watches its HTTPRoutes (kopf started
    # that watch when the CRD appeared) and re-applies a route that drifted
    kube.kubectl("-n", ns, "patch", "httproute", "a", "--type=json", "-p",
                 '[{"op": "replace", "path": "/spec/rules/0/backendRefs/1/weight", "value": 70}]')
    wait_for(lambda: route_weights(kube, ns, "a") == (100, 0), timeout=15,
             what="the hand-edited HTTPRoute restored to 100/0")

    # without a Gateway the operator takes the split down; the model's Service stays
    apply(kube, ns, gw_model("a", 4, image=NEW, gateway=False,
                             canary={"steps": steps, "abort": True}))
    wait_for(lambda: not any(exists(kube, ns, k, n) for k, n in (
        ("httproute", "a"), ("service", "a-stable"), ("service", "a-canary"))), timeout=30,
        what="the HTTPRoute and the per-track Services deleted")
    assert exists(kube, ns, "service", "a")

    # with it again they come back; deleting the model removes them (ownerReferences)
    apply(kube, ns, gw_model("a", 4, image=NEW, canary={"steps": steps, "abort": True}))
    wait_for(lambda: route_weights(kube, ns, "a") == (100, 0), timeout=30,
             what="the HTTPRoute again")
    kube.kubectl("-n", ns, "delete", "md", "a", "--wait=true", "--timeout=60s")
    wait_for(lambda: not any(exists(kube, ns, k, n) for k, n in (
        ("httproute", "a"), ("service", "a-stable"), ("service", "a-canary"),
        ("service", "a"))), timeout=60,
        what="the HTTPRoute and the Services garbage-collected with the model")
