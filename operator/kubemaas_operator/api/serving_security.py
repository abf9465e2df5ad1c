"""PURE: the typed models and parsing of spec.serving's security fields (auth, tls,
networkPolicy). serving.py holds them in `Serving`; parsing raises SpecError naming the field."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .fields import DNS1123, HOSTNAME, SUBDOMAIN, SpecError, array, boolean, json_name, obj

_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*"
                        r"[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
ISSUER_KINDS = ("Issuer", "ClusterIssuer")


@dataclass(frozen=True)
class ServingAuth:
    """API keys the runtime accepts: a Secret whose every key is a key name, its value the key."""

    secret_name: str = field(metadata=json_name("secretName"))


@dataclass(frozen=True)
class IssuerRef:
    name: str = field(metadata=json_name("name"))
    kind: str = field(metadata=json_name("kind"), default="Issuer")


@dataclass(frozen=True)
class CertManagerTLS:
    issuer_ref: IssuerRef = field(metadata=json_name("issuerRef"))
    dns_names: tuple[str, ...] = field(metadata=json_name("dnsNames"), default=())


@dataclass(frozen=True)
class ServingTLS:
    """HTTPS: a kubernetes.io/tls Secret, or one a cert-manager Certificate writes."""

    secret_name: str | None = field(metadata=json_name("secretName"), default=None)
    cert_manager: CertManagerTLS | None = field(metadata=json_name("certManager"), default=None)


@dataclass(frozen=True)
class NetworkPeer:
    """Clients allowed to the serving port: pods (podLabels, absent = all) of a namespace
    (absent = the model's own)."""

    namespace: str | None = field(metadata=json_name("namespace"), default=None)
    pod_labels: Mapping[str, str] = field(metadata=json_name("podLabels"), default_factory=dict)


@dataclass(frozen=True)
class NetworkPolicySpec:
    enabled: bool = field(metadata=json_name("enabled"), default=True)
    allow_from: tuple[NetworkPeer, ...] = field(metadata=json_name("from"), default=())


def _name(value: Any, path: str, what: str, max_len: int = 253,
          pattern: re.Pattern[str] = SUBDOMAIN) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(path, f"is required: the {what}")
    if len(value) > max_len or not pattern.match(value):
        raise SpecError(path, f"{value!r} is not a valid {what}")
    return value


def parse_auth(raw: Any, path: str = "spec.serving.auth") -> ServingAuth | None:
    if raw is None:
        return None
    a = obj(raw, path)
    return ServingAuth(secret_name=_name(a.get("secretName"), f"{path}.secretName",
                                         "Secret name"))


def parse_tls(raw: Any, path: str = "spec.serving.tls") -> ServingTLS | None:
    if raw is None:
        return None
    t = obj(raw, path)
    secret, cm = t.get("secretName"), t.get("certManager")
    if (secret is None) == (cm is None):
        raise SpecError(path, "set exactly one of secretName (a kubernetes.io/tls "
                                "Secret) and certManager (a Certificate the operator renders)")
    if secret is not None:
        return ServingTLS(secret_name=_name(secret, f"{path}.secretName", "Secret name"))
    c = obj(cm, f"{path}.certManager")
    ip = f"{path}.certManager.issuerRef"
    issuer = obj(c.get("issuerRef"), ip)
    kind = issuer.get("kind", "Issuer")
    if kind not in ISSUER_KINDS:
        raise SpecError(f"{ip}.kind", f"{kind!r} is not one of {', '.join(ISSUER_KINDS)}")
    names = []
    for i, n in enumerate(array(c.get("dnsNames"), f"{path}.certManager.dnsNames")):
        names.append(_name(n, f"{path}.certManager.dnsNames[{i}]", "DNS name",
                           pattern=HOSTNAME))
    if len(names) > 32:
        raise SpecError(f"{path}.certManager.dnsNames", "at most 32 names")
    return ServingTLS(cert_manager=CertManagerTLS(
        issuer_ref=IssuerRef(name=_name(issuer.get("name"), f"{ip}.name", "issuer name"),
                             kind=str(kind)),
        dns_names=tuple(names)))


def _labels(value: Any, path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in obj(value, path).items():
        if not isinstance(k, str) or len(k) > 316 or not _LABEL_KEY.match(k):
            raise SpecError(path, f"{k!r} is not a label key")
        if not isinstance(v, str) or len(v) > 63 or not _LABEL_VALUE.match(v):
            raise SpecError(f"{path}.{k}", f"{v!r} is not a label value")
        out[k] = v
    return out


def parse_network_policy(raw: Any, path: str = "spec.serving.networkPolicy"
                         ) -> NetworkPolicySpec:
    n = obj(raw, path)
    enabled = boolean(n.get("enabled", True), f"{path}.enabled")
    peers = []
    entries = array(n.get("from"), f"{path}.from")
    if len(entries) > 32:
        raise SpecError(f"{path}.from", "at most 32 entries")
    for i, entry in enumerate(entries):
        p = f"{path}.from[{i}]"
        e = obj(entry, p)
        ns = e.get("namespace")
        peers.append(NetworkPeer(
            namespace=None if ns is None else _name(ns, f"{p}.namespace", "namespace name",
                                                    63, DNS1123),
            pod_labels=_labels(e.get("podLabels"), f"{p}.podLabels")))
    return NetworkPolicySpec(enabled=enabled, allow_from=tuple(peers))
