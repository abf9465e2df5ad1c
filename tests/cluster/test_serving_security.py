"""spec.serving's auth, tls and networkPolicy against the real control plane: what the operator
writes into the cluster is what render/security.py renders (the NetworkPolicy compared with the
pure renderer's, then deleted when disabled), the Secrets are mounted and the runtime told where,
TLS turns the probes to HTTPS, and cert-manager's Certificate is rendered only while the API
server serves it (CertManagerNotInstalled in the status otherwise)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kubemaas_operator.api import parse_spec
from kubemaas_operator.render import RenderContext, render
from tests.cluster.conftest import OPERATOR_ENV, Operator
from tests.cluster.test_operator import apply, condition, get, md, status, wait_phase
from tests.conftest import Kube
from tests.helpers import wait_for

pytestmark = pytest.mark.cluster

MONITORING = OPERATOR_ENV["KUBEMAAS_OPERATOR_MONITORING_NAMESPACE"]

# A stand-in for cert-manager's Certificate CRD: the same group, version and kind, any spec.
CERTIFICATE_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: certificates.cert-manager.io
spec:
  group: cert-manager.io
  names: {kind: Certificate, listKind: CertificateList, plural: certificates,
          singular: certificate, shortNames: [cert]}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec: {type: object, x-kubernetes-preserve-unknown-fields: true}
            status: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""


def _rendered(kube: Kube, namespace: str, name: str, kind: str) -> dict[str, Any]:
    body = get(kube, namespace, "md", name)
    ctx = RenderContext(name=name, namespace=namespace, uid=body["metadata"]["uid"],
                        monitoring_namespace=MONITORING)
    return next(c for c in render(parse_spec(body["spec"]), ctx).children if c["kind"] == kind)


def _versions(kube: Kube, namespace: str, kinds: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for kind in kinds:
        items = json.loads(kube.kubectl("-n", namespace, "get", kind, "-o", "json").stdout)
        for item in items["items"]:
            meta = item["metadata"]  # generation: a Deployment's status changes on its own
            out[f"{kind}/{meta['name']}"] = str(meta.get("generation") or meta["resourceVersion"])
    return out


def assert_steady(kube: Kube, namespace: str, name: str, operator: Operator,
                  kinds: tuple[str, ...]) -> None:
    """Reconciles that find nothing to do write nothing: the children's generations (their
    resourceVersions where they have none) stay while the operator completes several more
    reconciles (its resync runs every 3 s here)."""
    wait_phase(kube, namespace, name, "Ready")
    before = _versions(kube, namespace, kinds)
    def applies() -> list[str]:  # the operator logs "NS/NAME: applied …; deleted …"
        return [line for line in operator.log_text().splitlines()
                if f"{namespace}/" in line and ": applied " in line]

    applied_before = applies()
    done = reconciles(operator)
    wait_for(lambda: reconciles(operator) >= done + 6, timeout=60,
             what="six more reconciles (resyncs)")
    assert _versions(kube, namespace, kinds) == before
    assert applies() == applied_before, "a reconcile with nothing to do applied something"


def reconciles(operator: Operator) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{operator.metrics_port}/metrics",
                                timeout=5) as response:
        text = response.read().decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "kubemaas_operator_reconcile_duration_seconds_count")


def _gone(kube: Kube, namespace: str, kind: str, name: str) -> bool:
    return kube.kubectl("-n", namespace, "get", kind, name, check=False).returncode != 0


def test_network_policy_is_applied_as_rendered_and_removed_when_disabled(
        kube: Kube, namespace: str, operator: Operator) -> None:
    serving = {"gateway": {"name": "edge", "namespace": "gateways"},
               "networkPolicy": {"from": [{"namespace": "web",
                                           "podLabels": {"app": "chat-frontend"}},
                                          {"podLabels": {"role": "batch-client"}}]}}
    apply(kube, namespace, md("guarded", serving=serving))
    policy = wait_for(lambda: get(kube, namespace, "networkpolicy", "guarded")
                      if not _gone(kube, namespace, "networkpolicy", "guarded") else None,
                      timeout=30, what="the NetworkPolicy")
    want = _rendered(kube, namespace, "guarded", "NetworkPolicy")
    assert policy["spec"] == want["spec"]
    assert policy["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]
    namespaces = [p.get("namespaceSelector", {}).get("matchLabels", {}).get(
        "kubernetes.io/metadata.name") for p in rule["from"]]
    # the spec's two peers, the Gateway's namespace, and Prometheus's (/metrics is on 8080)
    assert namespaces == ["web", None, "gateways", MONITORING]
    assert rule["from"][1] == {"podSelector": {"matchLabels": {"role": "batch-client"}}}

    serving["networkPolicy"] = {"enabled": False}
    apply(kube, namespace, md("guarded", serving=serving))
    wait_for(lambda: _gone(kube, namespace, "networkpolicy", "guarded"), timeout=30,
             what="the NetworkPolicy to be deleted once disabled")
    assert get(kube, namespace, "deployment", "guarded")  # the rest stays


def test_api_keys_and_tls_are_mounted_and_the_probes_speak_https(
        kube: Kube, namespace: str, operator: Operator) -> None:
    apply(kube, namespace, md("secured", serving={
        "auth": {"secretName": "secured-keys"}, "tls": {"secretName": "secured-cert"}}))
    wait_for(lambda: not _gone(kube, namespace, "deployment", "secured"), timeout=30,
             what="the Deployment")
    dep = get(kube, namespace, "deployment", "secured")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["api-keys"]["secret"]["secretName"] == "secured-keys"
    assert volumes["tls"]["secret"]["secretName"] == "secured-cert"
    assert mounts["api-keys"]["readOnly"] and mounts["tls"]["readOnly"]
    assert env["KUBEMAAS_API_KEYS_DIR"] == mounts["api-keys"]["mountPath"]
    assert env["KUBEMAAS_TLS_DIR"] == mounts["tls"]["mountPath"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert env["KUBEMAAS_METRICS_PORT"] == str(ports["metrics"]) and ports["http"] == 8080
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["scheme"] == "HTTPS", probe
    svc = get(kube, namespace, "service", "secured")
    by_name = {p["name"]: p for p in svc["spec"]["ports"]}
    assert by_name["http"]["appProtocol"] == "https"
    assert by_name["metrics"]["appProtocol"] == "http"
    assert svc["metadata"]["labels"]["serving.kubemaas.io/metrics-port"] == "metrics"
    # With /metrics on its own port, Prometheus's namespace reaches that port only.
    policy = wait_for(lambda: get(kube, namespace, "networkpolicy", "secured")
                      if not _gone(kube, namespace, "networkpolicy", "secured") else None,
                      timeout=30, what="the NetworkPolicy")
    assert policy["spec"]["ingress"] == [{
        "ports": [{"port": ports["metrics"], "protocol": "TCP"}],
        "from": [{"namespaceSelector": {"matchLabels": {
            "kubernetes.io/metadata.name": MONITORING}}}]}]
    assert_steady(kube, namespace, "secured", operator,
                  ("deployment", "service", "networkpolicy"))


def test_cert_manager_certificate_only_while_its_crd_is_served(
        kube: Kube, namespace: str, operator: Operator) -> None:
    tls = {"certManager": {"issuerRef": {"name": "internal-ca", "kind": "ClusterIssuer"},
                           "dnsNames": ["resnet.models.example.com"]}}
    apply(kube, namespace, md("certified", serving={"tls": tls}))
    st = wait_phase(kube, namespace, "certified", "Failed")
    ready = condition(st, "Ready")
    assert ready["reason"] == "CertManagerNotInstalled", st
    assert "install cert-manager" in ready["message"]
    try:
        kube.kubectl("apply", "-f", "-", input=CERTIFICATE_CRD)
        kube.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                     "crd/certificates.cert-manager.io")
        # API discovery (every second in the tests) notices; the model gets its Certificate.
        cert = wait_for(lambda: get(kube, namespace, "certificate", "certified")
                        if not _gone(kube, namespace, "certificate", "certified") else None,
                        timeout=30, what="the Certificate")
        want = _rendered(kube, namespace, "certified", "Certificate")
        assert cert["spec"] == want["spec"]
        assert cert["spec"]["secretName"] == "certified-tls"
        assert "resnet.models.example.com" in cert["spec"]["dnsNames"]
        assert f"certified.{namespace}.svc" in cert["spec"]["dnsNames"]
        assert cert["metadata"]["ownerReferences"][0]["name"] == "certified"
        dep = get(kube, namespace, "deployment", "certified")
        volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
        assert volumes["tls"]["secret"]["secretName"] == "certified-tls"
        wait_for(lambda: status(kube, namespace, "certified").get("phase") != "Failed",
                 timeout=30, what="the model to leave phase Failed")
        assert_steady(kube, namespace, "certified", operator,
                      ("deployment", "service", "networkpolicy", "certificate"))
    finally:
        kube.kubectl("delete", "crd", "certificates.cert-manager.io", "--ignore-not-found",
                     "--wait=true", "--timeout=60s", check=False)


def test_invalid_security_specs_are_refused(kube: Kube, namespace: str,
                                            operator: Operator) -> None:
    bad = yaml.safe_load(md("bad-tls", serving={"tls": {
        "secretName": "a", "certManager": {"issuerRef": {"name": "ca"}}}}))
    out = kube.kubectl("-n", namespace, "apply", "-f", "-", input=yaml.safe_dump(bad),
                       check=False)
    assert out.returncode != 0 and "exactly one of secretName and certManager" in out.stderr
