"""The pure parts of spec.serving's auth, tls and networkPolicy: parsing (errors name the
field), what the pod gains, the NetworkPolicy's rules and the Certificate's names."""

from __future__ import annotations

from typing import Any

import pytest

from kubemaas_operator.api import SpecError, parse_spec
from kubemaas_operator.k8s import PLURALS
from kubemaas_operator.render import CHILD_KINDS, RenderContext, render
from kubemaas_operator.render.security import (
    API_KEYS_DIR,
    TLS_DIR,
    certificate_dns_names,
    ingress_rules,
    security_pod,
)


def spec(**serving: Any) -> Any:
    return parse_spec({"model": {"uri": "s3://m/model.onnx", "format": "onnx"},
                       "runtime": {"image": "runtime:1"}, "serving": serving})


def children(s: Any, **ctx: Any) -> dict[str, dict[str, Any]]:
    rendered = render(s, RenderContext(name="m", namespace="ns", uid="u", **ctx))
    return {c["kind"]: c for c in rendered.children}


@pytest.mark.parametrize(("serving", "path", "words"), [
    ({"auth": {}}, "spec.serving.auth.secretName", "is required"),
    ({"auth": {"secretName": "Bad_Name"}}, "spec.serving.auth.secretName", "not a valid"),
    ({"tls": {}}, "spec.serving.tls", "exactly one"),
    ({"tls": {"secretName": "a", "certManager": {"issuerRef": {"name": "ca"}}}},
     "spec.serving.tls", "exactly one"),
    ({"tls": {"certManager": {"issuerRef": {"name": "ca", "kind": "Vault"}}}},
     "spec.serving.tls.certManager.issuerRef.kind", "not one of"),
    ({"tls": {"certManager": {"issuerRef": {}}}},
     "spec.serving.tls.certManager.issuerRef.name", "is required"),
    ({"networkPolicy": {"enabled": "yes"}}, "spec.serving.networkPolicy.enabled", "true or false"),
    ({"networkPolicy": {"from": [{"namespace": "Not_A_Namespace"}]}},
     "spec.serving.networkPolicy.from[0].namespace", "not a valid"),
    ({"networkPolicy": {"from": [{"podLabels": {"app": "bad value!"}}]}},
     "spec.serving.networkPolicy.from[0].podLabels.app", "label value"),
])
def test_bad_security_specs_name_the_field(serving: dict[str, Any], path: str,
                                           words: str) -> None:
    with pytest.raises(SpecError) as err:
        spec(**serving)
    assert err.value.path == path and words in err.value.message


def test_defaults_network_policy_on_no_auth_no_tls() -> None:
    s = spec()
    assert s.serving.auth is None and s.serving.tls is None
    assert s.serving.network_policy.enabled and s.serving.network_policy.allow_from == ()
    pod = security_pod(s, "m")
    assert (pod.volumes, pod.mounts, pod.env, pod.https, pod.metrics_port) == (
        [], [], [], False, None)


def test_auth_and_tls_mount_their_secrets_and_move_metrics_off_the_serving_port() -> None:
    s = spec(auth={"secretName": "keys"}, tls={"secretName": "cert"})
    pod = security_pod(s, "m")
    assert {v["name"]: v["secret"]["secretName"] for v in pod.volumes} == {
        "api-keys": "keys", "tls": "cert"}
    assert all(m["readOnly"] for m in pod.mounts)
    assert {e["name"]: e["value"] for e in pod.env} == {
        "KUBEMAAS_API_KEYS_DIR": API_KEYS_DIR, "KUBEMAAS_TLS_DIR": TLS_DIR,
        "KUBEMAAS_METRICS_PORT": "9090"}
    assert security_pod(spec(port=9090, auth={"secretName": "k"}), "m").metrics_port == 9091
    dep = children(s)["Deployment"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert {container[p]["httpGet"]["scheme"] for p in (
        "startupProbe", "livenessProbe", "readinessProbe")} == {"HTTPS"}
    assert [p["name"] for p in container["ports"]] == ["http", "metrics"]
    svc = children(s)["Service"]
    assert [(p["name"], p["appProtocol"]) for p in svc["spec"]["ports"]] == [
        ("http", "https"), ("metrics", "http")]


def test_auth_alone_keeps_http_probes() -> None:
    dep = children(spec(auth={"secretName": "keys"}))["Deployment"]
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert "scheme" not in container["readinessProbe"]["httpGet"]


def test_the_user_env_stays_last() -> None:
    s = parse_spec({"model": {"uri": "s3://m/model.onnx", "format": "onnx"},
                    "runtime": {"image": "runtime:1", "env": [{"name": "X", "value": "1"}]},
                    "serving": {"auth": {"secretName": "keys"}}})
    env = children(s)["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    assert env[-1] == {"name": "X", "value": "1"}
    assert env[-2]["name"] == "KUBEMAAS_METRICS_PORT"


def test_no_peer_means_no_rule_never_an_open_one() -> None:
    assert ingress_rules(spec(), None, "") == []
    policy = children(spec())["NetworkPolicy"]
    assert "ingress" not in policy["spec"] and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/instance"] == "m"


def test_peers_gateway_and_monitoring() -> None:
    s = spec(networkPolicy={"from": [{"namespace": "web"},
                                     {"namespace": "web", "podLabels": {"app": "ui"}},
                                     {}]})
    (rule,) = ingress_rules(s, "gw", "monitoring")
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
    ns = {"kubernetes.io/metadata.name": "web"}
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": ns}},
        {"namespaceSelector": {"matchLabels": ns}, "podSelector": {"matchLabels": {"app": "ui"}}},
        {"podSelector": {"matchLabels": {}}},  # every pod of the model's namespace
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gw"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]
    # duplicates collapse
    (rule,) = ingress_rules(spec(networkPolicy={"from": [{"namespace": "gw"}]}), "gw", "")
    assert len(rule["from"]) == 1


def test_guarded_metrics_port_is_for_monitoring_only() -> None:
    s = spec(auth={"secretName": "keys"}, networkPolicy={"from": [{"namespace": "web"}]})
    serving, metrics = ingress_rules(s, None, "monitoring")
    assert serving["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert all("monitoring" not in str(p) for p in serving["from"])
    assert metrics == {"ports": [{"port": 9090, "protocol": "TCP"}], "from": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}
    assert ingress_rules(s, None, "") == [serving]  # no monitoring namespace: nobody


def test_gateway_namespace_from_the_spec_or_the_operator_default() -> None:
    def peers(s: Any, **ctx: Any) -> list[Any]:
        return children(s, **ctx)["NetworkPolicy"]["spec"].get("ingress", [{}])[0].get(
            "from", [])
    own = spec(gateway={"name": "edge"})
    assert peers(own) == [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "ns"}}}]
    assert peers(spec(), default_gateway_namespace="gateways") == [{"namespaceSelector": {
        "matchLabels": {"kubernetes.io/metadata.name": "gateways"}}}]
    assert peers(spec(gateway={"name": "edge", "namespace": "x"}),
                 default_gateway_namespace="gateways")[0]["namespaceSelector"][
        "matchLabels"]["kubernetes.io/metadata.name"] == "x"


def test_disabled_policy_is_not_rendered() -> None:
    assert "NetworkPolicy" not in children(spec(networkPolicy={"enabled": False}))


def test_certificate_for_the_service_names() -> None:
    s = spec(tls={"certManager": {"issuerRef": {"name": "ca"},
                                  "dnsNames": ["m.example.com", "m"]}})
    assert certificate_dns_names(s, "m", "ns") == [
        "m", "m.ns", "m.ns.svc", "m.ns.svc.cluster.local", "m.example.com"]
    cert = children(s)["Certificate"]
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert cert["spec"]["secretName"] == "m-tls"
    assert cert["spec"]["issuerRef"] == {"group": "cert-manager.io", "kind": "Issuer",
                                         "name": "ca"}
    volumes = children(s)["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert {"name": "tls", "secret": {"secretName": "m-tls", "items": [
        {"key": "tls.crt", "path": "tls.crt"}, {"key": "tls.key", "path": "tls.key"}]}} in volumes
    assert "Certificate" not in children(spec(tls={"secretName": "c"}))


def test_every_child_kind_has_an_api_path() -> None:
    assert {kind for _, kind in CHILD_KINDS} <= set(PLURALS)
