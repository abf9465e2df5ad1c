"""Waking a model at zero on its first request (render/wake.py) against the real control plane,
with KEDA's operator and its HTTP add-on's interceptor and scaler running (kubemaas_testbed.keda,
kubemaas_testbed.keda_http):

- with KEDA but without the add-on, a model at minReplicas 0 says that wake on request is
  unavailable and why (status.autoscaling.wakeOnRequest, a Warning Event), and gets no route;
- with the add-on, it gets an InterceptorRoute and the external-push trigger, KEDA accepts that
  trigger (it opens its stream to the add-on's scaler), the interceptor learns the route, the
  status and the Reason column say where requests must go, a hand-edit of the route is undone,
  and a model that no longer goes to zero loses both.

No request is sent here: the models' pods would be kwok's, whose IPs lead nowhere. The wake itself
is tests/cluster/test_real_node_wake.py, on the real node.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubemaas_testbed import keda_http
from tests.cluster.conftest import ROOT, Operator, reconfigured
from tests.cluster.test_autoscaling_keda import CPU, Signal, _events, _exists
from tests.cluster.test_autoscaling_keda import keda as keda  # the module fixtures
from tests.cluster.test_autoscaling_keda import prometheus as prometheus
from tests.cluster.test_operator import apply, get, get_md_table, md, status
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

AT_ZERO = {"signal": "queue", "target": 2, "minReplicas": 0, "maxReplicas": 2, "idleSeconds": 30}


@pytest.fixture(scope="module")
def http_addon(kube: Kube, keda: None) -> Iterator[keda_http.Ports]:
    """The add-on's CRDs, interceptor and scaler for this module; removed afterwards, so that the
    rest of the session sees a cluster without the add-on again."""
    assert kube.log_dir is not None, "the add-on fixture needs the session's own testbed"
    if not keda_http.built():  # built once (from third_party/), cached like the control plane
        subprocess.run(["nice", "-n", "10", str(ROOT / "hack" / "build-testbed"),
                        "--with-keda"], check=True)
    state = Path(kube.log_dir).parent
    ports = keda_http.up(state, kube.kubeconfig)
    try:
        yield ports
    finally:
        kube.kubectl("delete", "interceptorroutes.http.keda.sh", "--all-namespaces", "--all",
                     "--timeout=60s", check=False)
        keda_http.down(state)
        # gone before the next module looks (test_without_the_add_on_… needs a cluster without)
        kube.kubectl("delete", "crd", *keda_http.crd_names(), "--timeout=60s", check=False)


def addon_env(prom: Signal, ports: keda_http.Ports) -> dict[str, str]:
    return {"KUBEMAAS_OPERATOR_PROMETHEUS": prom.url,
            "KUBEMAAS_OPERATOR_HTTP_SCALER": ports.scaler_address,
            "KUBEMAAS_OPERATOR_HTTP_INTERCEPTOR": ports.interceptor_address}


def _wake(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    return ((status(kube, namespace, name).get("autoscaling") or {}).get("wakeOnRequest")
            or None)


def test_without_the_add_on_wake_on_request_is_unavailable_and_says_why(
        kube: Kube, namespace: str, operator: Operator, keda: None,
        prometheus: Signal) -> None:
    wait_for(lambda: kube.kubectl("get", "crd", "interceptorroutes.http.keda.sh",
                                  check=False).returncode != 0, timeout=60,
             what="a cluster without the HTTP add-on's CRDs (this test runs before its fixture)")
    with reconfigured(operator, KUBEMAAS_OPERATOR_PROMETHEUS=prometheus.url):
        apply(kube, namespace, md("z", runtime=CPU, autoscaling=AT_ZERO))
        wake = wait_for(lambda: _wake(kube, namespace, "z"), timeout=60,
                        what="status.autoscaling.wakeOnRequest")
        assert wake["available"] is False and wake["reason"] == "HTTPAddOnNotInstalled"
        assert "http.keda.sh/v1beta1 InterceptorRoute" in wake["message"]
        so = get(kube, namespace, "scaledobject", "z")
        assert [t["type"] for t in so["spec"]["triggers"]] == ["prometheus"] * 2
        (event,) = wait_for(lambda: _events(kube, namespace, "HTTPAddOnNotInstalled"),
                            timeout=30, what="an HTTPAddOnNotInstalled Event")
        assert event["type"] == "Warning"


def test_route_and_trigger_follow_the_spec_and_keda_accepts_them(
        kube: Kube, namespace: str, operator: Operator, prometheus: Signal,
        http_addon: keda_http.Ports) -> None:
    with reconfigured(operator, **addon_env(prometheus, http_addon)):
        apply(kube, namespace, md("z", runtime=CPU, autoscaling=AT_ZERO))
        route = wait_for(lambda: _exists(kube, namespace, "interceptorroute", "z")
                         and get(kube, namespace, "interceptorroute", "z"), timeout=60,
                         what="the InterceptorRoute")
        assert route["spec"]["target"] == {"service": "z", "port": 8080}
        assert route["spec"]["rules"][0]["hosts"][0] == f"z.{namespace}"
        assert route["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
        so = wait_for(lambda: (lambda s: s if len(s["spec"]["triggers"]) == 3 else None)(
            get(kube, namespace, "scaledobject", "z")), timeout=60,
            what="the external-push trigger on the ScaledObject")
        push = so["spec"]["triggers"][2]  # after the queue's and the running requests' triggers
        assert push["type"] == "external-push"
        assert push["metadata"] == {"scalerAddress": http_addon.scaler_address,
                                    "interceptorRoute": "z"}
        wake = wait_for(lambda: (lambda w: w if w and w["available"] else None)(
            _wake(kube, namespace, "z")), timeout=60, what="wakeOnRequest available")
        assert (wake["interceptor"], wake["host"]) == (http_addon.interceptor_address,
                                                       f"z.{namespace}")
        # KEDA accepts both triggers (it reaches the add-on's scaler) and keeps the idle model
        # at zero; the interceptor has the route.
        wait_for(lambda: any(c["type"] == "Ready" and c["status"] == "True" for c in (
            get(kube, namespace, "scaledobject", "z").get("status") or {}).get(
                "conditions") or []), timeout=120, what="KEDA's Ready on the ScaledObject")
        wait_for(lambda: f"{namespace}/z" in keda_http.pending(http_addon), timeout=60,
                 what="the interceptor to learn the route")
        assert get(kube, namespace, "deployment", "z")["spec"].get("replicas") == 0
        row = wait_for(lambda: next((r for r in get_md_table(kube, namespace)
                                     if r["REASON"].startswith("ScaledToZero")), None),
                       timeout=60, what="ScaledToZero in the Reason column")
        assert row["NAME"] == "z"
        available = next(c for c in status(kube, namespace, "z")["conditions"]
                         if c["type"] == "Available")
        assert http_addon.interceptor_address in available["message"]

        # A hand-edit of the route is undone.
        kube.kubectl("-n", namespace, "patch", "interceptorroute", "z", "--type=merge",
                     "-p", '{"spec":{"target":{"port":9999}}}')
        wait_for(lambda: get(kube, namespace, "interceptorroute", "z")["spec"]["target"][
            "port"] == 8080, timeout=30, what="the hand-edited route put back")

        # A model that no longer goes to zero needs no route and no push trigger.
        apply(kube, namespace, md("z", runtime=CPU, autoscaling={
            **{k: v for k, v in AT_ZERO.items() if k != "idleSeconds"}, "minReplicas": 1}))
        wait_for(lambda: not _exists(kube, namespace, "interceptorroute", "z"), timeout=60,
                 what="the InterceptorRoute deleted")
        wait_for(lambda: len(get(kube, namespace, "scaledobject", "z")["spec"]["triggers"]) == 1,
                 timeout=60, what="the push trigger removed")
        assert "wakeOnRequest" not in (status(kube, namespace, "z").get("autoscaling") or {})
