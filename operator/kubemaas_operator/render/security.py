"""PURE: what spec.serving's auth, tls and networkPolicy add to a model's children.

- auth: the API-key Secret mounted read-only into the runtime container, KUBEMAAS_API_KEYS_DIR.
- tls: the kubernetes.io/tls Secret (the user's, or NAME-tls written by the cert-manager
  Certificate rendered here) mounted read-only, KUBEMAAS_TLS_DIR; the probes use scheme HTTPS
  and the Service port says appProtocol https.
- With auth or tls the runtime also serves GET /metrics without a key, in plain HTTP, on a port
  of its own (KUBEMAAS_METRICS_PORT, container and Service port "metrics"): Prometheus holds no
  API key and no CA. Without either, /metrics is on the serving port. A language model whose
  InferencePool names an endpoint picker also serves GET /metrics on the serving port without a
  key (KUBEMAAS_METRICS_WITHOUT_KEY): the picker scrapes there and sends none.
- The NetworkPolicy NAME: ingress to the serving port from the peers the spec lists, the
  Gateway's namespace and the monitoring namespace (when /metrics shares the serving port), and
  to the metrics port from the monitoring namespace only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..api import ModelDeploymentSpec

API_KEYS_DIR = "/var/run/secrets/kubemaas/api-keys"
TLS_DIR = "/var/run/secrets/kubemaas/tls"
NAMESPACE_LABEL = "kubernetes.io/metadata.name"
CERTIFICATE_API_VERSION = "cert-manager.io/v1"
DEFAULT_METRICS_PORT = 9090


def tls_secret_name(spec: ModelDeploymentSpec, name: str) -> str | None:
    """The Secret the runtime serves TLS from: the user's, or the Certificate's NAME-tls."""
    tls = spec.serving.tls
    if tls is None:
        return None
    return tls.secret_name or f"{name}-tls"


def metrics_port(spec: ModelDeploymentSpec) -> int | None:
    """The runtime's own /metrics port when the serving port is guarded (auth or tls)."""
    if spec.serving.auth is None and spec.serving.tls is None:
        return None
    return DEFAULT_METRICS_PORT if spec.serving.port != DEFAULT_METRICS_PORT else (
        DEFAULT_METRICS_PORT + 1)


@dataclass(frozen=True)
class SecurityPod:
    """What the pod template gains: volumes, mounts and runtime variables."""

    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    env: list[dict[str, str]]
    https: bool
    metrics_port: int | None


def security_pod(spec: ModelDeploymentSpec, name: str,
                 picker_scrapes: bool = False) -> SecurityPod:
    """`picker_scrapes`: an endpoint picker reads the pods' load from /metrics on the serving
    port (the model's InferencePool names one); it sends no key, so with keys the runtime
    serves GET /metrics there without one, as vLLM does."""
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    env: list[dict[str, str]] = []
    if spec.serving.auth is not None:
        volumes.append({"name": "api-keys", "secret": {
            "secretName": spec.serving.auth.secret_name}})
        mounts.append({"name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": True})
        env.append({"name": "KUBEMAAS_API_KEYS_DIR", "value": API_KEYS_DIR})
        if picker_scrapes:
            env.append({"name": "KUBEMAAS_METRICS_WITHOUT_KEY", "value": "true"})
    secret = tls_secret_name(spec, name)
    if secret is not None:
        volumes.append({"name": "tls", "secret": {
            "secretName": secret,
            "items": [{"key": "tls.crt", "path": "tls.crt"},
                      {"key": "tls.key", "path": "tls.key"}]}})
        mounts.append({"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        env.append({"name": "KUBEMAAS_TLS_DIR", "value": TLS_DIR})
    port = metrics_port(spec)
    if port is not None:
        env.append({"name": "KUBEMAAS_METRICS_PORT", "value": str(port)})
    return SecurityPod(volumes=volumes, mounts=mounts, env=env, https=secret is not None,
                       metrics_port=port)


def use_https_probes(deployment: dict[str, Any]) -> None:
    """Every httpGet probe of every container on the serving port ("http") speaks HTTPS:
    enforced after rendering, so an administrator's template needs no change for TLS."""
    pod = deployment["spec"]["template"].get("spec") or {}
    for container in pod.get("containers") or []:
        for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
            http_get = (container.get(probe) or {}).get("httpGet")
            if isinstance(http_get, dict) and http_get.get("port") not in ("metrics",):
                http_get["scheme"] = "HTTPS"


def _namespace_peer(namespace: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_LABEL: namespace}}}


def ingress_rules(spec: ModelDeploymentSpec, gateway_namespace: str | None,
                  monitoring_namespace: str, interceptor_namespace: str | None = None,
                  picker_pods: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """The NetworkPolicy's ingress rules. A rule without peers would admit everyone, so a port
    nobody may reach gets no rule at all. `interceptor_namespace`: KEDA's HTTP interceptor, which
    forwards the requests that wake a model at zero (render/wake.py); `picker_pods`: the labels
    of an InferencePool's endpoint picker's pods in the model's namespace (picker_peers.py),
    which read /metrics on the serving port."""
    serving: list[dict[str, Any]] = []
    for peer in spec.serving.network_policy.allow_from:
        pods = {"podSelector": {"matchLabels": dict(peer.pod_labels)}}
        if peer.namespace is None:
            serving.append(pods)
        else:
            entry = _namespace_peer(peer.namespace)
            if peer.pod_labels:
                entry.update(pods)
            serving.append(entry)
    if gateway_namespace:
        serving.append(_namespace_peer(gateway_namespace))
    if interceptor_namespace:
        serving.append(_namespace_peer(interceptor_namespace))
    if picker_pods:
        serving.append({"podSelector": {"matchLabels": dict(picker_pods)}})
    own_metrics = metrics_port(spec)
    if monitoring_namespace and own_metrics is None:
        serving.append(_namespace_peer(monitoring_namespace))  # /metrics is on this port
    rules = []
    unique = _unique(serving)
    if unique:
        rules.append({"ports": [{"port": spec.serving.port, "protocol": "TCP"}],
                      "from": unique})
    if monitoring_namespace and own_metrics is not None:
        rules.append({"ports": [{"port": own_metrics, "protocol": "TCP"}],
                      "from": [_namespace_peer(monitoring_namespace)]})
    return rules


def _unique(peers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for p in peers:
        if p not in out:
            out.append(p)
    return out


def certificate_dns_names(spec: ModelDeploymentSpec, name: str, namespace: str) -> list[str]:
    names = [name, f"{name}.{namespace}", f"{name}.{namespace}.svc",
             f"{name}.{namespace}.svc.cluster.local"]
    tls = spec.serving.tls
    if tls is not None and tls.cert_manager is not None:
        names.extend(n for n in tls.cert_manager.dns_names if n not in names)
    return names


@dataclass(frozen=True)
class NetworkPolicyParams:
    name: str
    namespace: str
    labels: Mapping[str, str]
    selector: Mapping[str, str]
    ingress: list[dict[str, Any]]


@dataclass(frozen=True)
class CertificateParams:
    name: str
    namespace: str
    labels: Mapping[str, str]
    secret_name: str
    dns_names: list[str]
    issuer_name: str
    issuer_kind: str
