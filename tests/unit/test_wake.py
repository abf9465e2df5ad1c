"""Waking a model at zero on its first request (render/wake.py): the InterceptorRoute and the
ScaledObject's external-push trigger where KEDA's HTTP add-on is served, a clear reason where it is
not, nothing for models that never reach zero; the status and the settings that carry it."""

from __future__ import annotations

from typing import Any

import pytest

from kubemaas_operator.api import parse_spec
from kubemaas_operator.autoscaling_status import events
from kubemaas_operator.autoscaling_status import status as autoscaling_status
from kubemaas_operator.config import Settings, SettingsError
from kubemaas_operator.render import CHILD_KINDS, RenderContext, render
from kubemaas_operator.render.wake import (
    INTERCEPTORROUTE_API_VERSION,
    KV_CACHE_REQUESTS_PER_REPLICA,
    hosts,
    namespace_of,
)

PROM = "http://prometheus.monitoring:9090"
SCALER = "keda-add-ons-http-external-scaler.keda:9090"
INTERCEPTOR = "keda-add-ons-http-interceptor-proxy.keda:8080"
AT_ZERO = {"signal": "queue", "target": 3, "minReplicas": 0, "maxReplicas": 4, "idleSeconds": 60}


def _spec(autoscaling: dict[str, Any], port: int | None = None) -> Any:
    raw: dict[str, Any] = {"model": {"uri": "https://m/x.onnx", "format": "onnx"},
                           "runtime": {"image": "i", "resources": {"cpu": "1"}},
                           "autoscaling": autoscaling}
    if port is not None:
        raw["serving"] = {"port": port}
    return parse_spec(raw)


def _render(spec: Any, **ctx: Any) -> Any:
    base: dict[str, Any] = {"keda": True, "prometheus": PROM, "http_addon": True,
                            "http_scaler": SCALER, "http_interceptor": INTERCEPTOR}
    return render(spec, RenderContext(name="m", namespace="ns", uid="u", **{**base, **ctx}))


def _kinds(out: Any) -> dict[str, dict[str, Any]]:
    return {c["kind"]: c for c in out.children}


def test_at_zero_with_the_add_on_renders_a_route_and_a_push_trigger() -> None:
    out = _render(_spec(AT_ZERO, port=9000))
    kinds = _kinds(out)
    route = kinds["InterceptorRoute"]
    assert route["apiVersion"] == INTERCEPTORROUTE_API_VERSION
    assert route["metadata"]["name"] == "m" and route["metadata"]["namespace"] == "ns"
    assert route["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    assert "serving.kubemaas.io/spec-hash" in route["metadata"]["annotations"]
    assert route["spec"]["target"] == {"service": "m", "port": 9000}
    assert route["spec"]["rules"] == [{"hosts": ["m.ns", "m.ns.svc", "m.ns.svc.cluster.local"]}]
    assert route["spec"]["scalingMetric"] == {"concurrency": {"targetValue": 3}}
    prometheus, busy, push = kinds["ScaledObject"]["spec"]["triggers"]
    assert prometheus["type"] == busy["type"] == "prometheus"
    assert push == {"type": "external-push", "name": "requests",
                    "metadata": {"scalerAddress": SCALER, "interceptorRoute": "m"}}
    # the route is applied before the ScaledObject whose trigger names it
    order = [c["kind"] for c in out.children]
    assert order.index("InterceptorRoute") < order.index("ScaledObject")
    wake = out.wake_on_request
    assert wake is not None and wake.available and wake.reason == "Interceptor"
    assert (wake.interceptor, wake.host) == (INTERCEPTOR, "m.ns")
    assert INTERCEPTOR in wake.message and "Host m.ns" in wake.message


def test_without_the_add_on_no_route_and_the_status_says_why() -> None:
    out = _render(_spec(AT_ZERO), http_addon=False)
    kinds = _kinds(out)
    assert "InterceptorRoute" not in kinds
    assert [t["type"] for t in kinds["ScaledObject"]["spec"]["triggers"]] == ["prometheus"] * 2
    wake = out.wake_on_request
    assert wake is not None and not wake.available and wake.reason == "HTTPAddOnNotInstalled"
    assert "http.keda.sh/v1beta1 InterceptorRoute" in wake.message
    assert "install KEDA's HTTP add-on" in wake.message


@pytest.mark.parametrize("autoscaling,ctx", [
    ({**AT_ZERO, "minReplicas": 1, "idleSeconds": None}, {}),  # never at zero
    (AT_ZERO, {"keda": False}),  # the CPU fallback never goes below one replica
    (AT_ZERO, {"prometheus": ""}),  # the same
    ({"signal": "cpu", "targetCPUUtilization": 70, "maxReplicas": 3}, {}),
])
def test_models_that_never_reach_zero_get_no_route(autoscaling: dict[str, Any],
                                                   ctx: dict[str, Any]) -> None:
    out = _render(_spec({k: v for k, v in autoscaling.items() if v is not None}), **ctx)
    assert "InterceptorRoute" not in _kinds(out)
    assert out.wake_on_request is None
    so = _kinds(out).get("ScaledObject")
    assert so is None or all(t["type"] != "external-push" for t in so["spec"]["triggers"])


def test_kv_cache_models_use_a_request_count_for_the_route() -> None:
    raw = {"model": {"uri": "https://m/llm", "format": "hf"},
           "runtime": {"image": "i", "resources": {"cpu": "1"}},
           "autoscaling": {"signal": "kvCache", "target": 70, "minReplicas": 0,
                           "maxReplicas": 2}}
    route = _kinds(_render(parse_spec(raw)))["InterceptorRoute"]
    assert route["spec"]["scalingMetric"]["concurrency"]["targetValue"] == (
        KV_CACHE_REQUESTS_PER_REPLICA)


def test_the_route_is_a_child_kind_so_it_is_deleted_when_no_longer_wanted() -> None:
    assert (INTERCEPTORROUTE_API_VERSION, "InterceptorRoute") in CHILD_KINDS


def test_status_carries_wake_on_request() -> None:
    out = _render(_spec(AT_ZERO))
    st = autoscaling_status(out.autoscaler, out.wake_on_request)
    assert st is not None and st["engine"] == "KEDA"
    assert st["wakeOnRequest"] == {"available": True, "reason": "Interceptor",
                                   "message": st["wakeOnRequest"]["message"],
                                   "interceptor": INTERCEPTOR, "host": "m.ns"}
    plain = _render(_spec({**AT_ZERO, "minReplicas": 1, "idleSeconds": None}))
    assert "wakeOnRequest" not in (autoscaling_status(plain.autoscaler, None) or {})
    assert autoscaling_status(None, None) is None


def test_hosts() -> None:
    assert hosts("a", "b") == ["a.b", "a.b.svc", "a.b.svc.cluster.local"]


def test_settings_validate_the_add_on_addresses() -> None:
    s = Settings.from_env({"KUBEMAAS_OPERATOR_NAMESPACE": "x"})
    assert (s.http_scaler, s.http_interceptor) == (SCALER, INTERCEPTOR)
    s = Settings.from_env({"KUBEMAAS_OPERATOR_NAMESPACE": "x",
                           "KUBEMAAS_OPERATOR_HTTP_SCALER": "127.0.0.1:4000",
                           "KUBEMAAS_OPERATOR_HTTP_INTERCEPTOR": "127.0.0.1:4001"})
    assert (s.http_scaler, s.http_interceptor) == ("127.0.0.1:4000", "127.0.0.1:4001")
    for bad in ("http://scaler", "scaler:99999", "scaler:0"):  # no port beyond 1..65535
        with pytest.raises(SettingsError, match="KUBEMAAS_OPERATOR_HTTP_SCALER"):
            Settings.from_env({"KUBEMAAS_OPERATOR_NAMESPACE": "x",
                               "KUBEMAAS_OPERATOR_HTTP_SCALER": bad})


def test_the_network_policy_admits_the_interceptor_of_a_model_it_may_wake() -> None:
    def peers(out: Any) -> list[dict[str, Any]]:
        rules = _kinds(out)["NetworkPolicy"]["spec"].get("ingress") or []
        return [peer for rule in rules for peer in rule["from"]]

    keda_ns = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}}
    assert keda_ns in peers(_render(_spec(AT_ZERO)))
    assert keda_ns not in peers(_render(_spec(AT_ZERO), http_addon=False))
    assert keda_ns not in peers(_render(_spec(AT_ZERO), http_interceptor="127.0.0.1:4001"))


@pytest.mark.parametrize("address,namespace", [
    ("keda-add-ons-http-interceptor-proxy.keda:8080", "keda"),
    ("proxy.edge.svc.cluster.local:80", "edge"),
    ("127.0.0.1:4001", None),
    ("proxy:80", None),
])
def test_namespace_of(address: str, namespace: str | None) -> None:
    assert namespace_of(address) == namespace


def test_a_warning_event_when_a_model_at_zero_cannot_be_woken_once_per_change() -> None:
    out = _render(_spec(AT_ZERO), http_addon=False)
    st = autoscaling_status(out.autoscaler, out.wake_on_request)
    assert st is not None
    (normal, warning) = events(None, st)
    assert normal[:2] == ("Normal", "Autoscaling")
    assert warning[:2] == ("Warning", "HTTPAddOnNotInstalled")
    assert events(st, st) == []
    woken = _render(_spec(AT_ZERO))
    st_ok = autoscaling_status(woken.autoscaler, woken.wake_on_request)
    assert events(st, st_ok) == []  # the add-on arrived: nothing to warn about
    (again,) = events(st_ok, st)
    assert again[1] == "HTTPAddOnNotInstalled"
