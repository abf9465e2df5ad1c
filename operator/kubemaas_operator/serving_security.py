"""PURE: the typed models and parsing of spec.serving's security fields (auth, tls,
networkPolicy). They mirror crds/ like api.py does (tests/unit/test_api_schema.py walks into them
from api.Serving); parsing returns SpecError naming the field."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_NAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*"
                        r"[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
ISSUER_KINDS = ("Issuer", "ClusterIssuer")


def _m(name: str) -> dict[str, str]:
    return {"json": name}


class SecuritySpecError(ValueError):
    """Raised with (path, message); api.parse_spec turns it into its SpecError."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


@dataclass(frozen=True)
class ServingAuth:
    """API keys the runtime accepts: a Secret whose every key is a key name, its value the key."""

    secret_name: str = field(metadata=_m("secretName"))


@dataclass(frozen=True)
class IssuerRef:
    name: str = field(metadata=_m("name"))
    kind: str = field(metadata=_m("kind"), default="Issuer")


@dataclass(frozen=True)
class CertManagerTLS:
    issuer_ref: IssuerRef = field(metadata=_m("issuerRef"))
    dns_names: tuple[str, ...] = field(metadata=_m("dnsNames"), default=())


@dataclass(frozen=True)
class ServingTLS:
    """HTTPS: a kubernetes.io/tls Secret, or one a cert-manager Certificate writes."""

    secret_name: str | None = field(metadata=_m("secretName"), default=None)
    cert_manager: CertManagerTLS | None = field(metadata=_m("certManager"), default=None)


@dataclass(frozen=True)
class NetworkPeer:
    """Clients allowed to the serving port: pods (podLabels, absent = all) of a namespace
    (absent = the model's own)."""

    namespace: str | None = field(metadata=_m("namespace"), default=None)
    pod_labels: Mapping[str, str] = field(metadata=_m("podLabels"), default_factory=dict)


@dataclass(frozen=True)
class NetworkPolicySpec:
    enabled: bool = field(metadata=_m("enabled"), default=True)
    allow_from: tuple[NetworkPeer, ...] = field(metadata=_m("from"), default=())


def _obj(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SecuritySpecError(path, f"must be an object, got {type(value).__name__}")
    return value


def _name(value: Any, path: str, what: str, max_len: int = 253,
          pattern: re.Pattern[str] = _SUBDOMAIN) -> str:
    if not isinstance(value, str) or not value:
        raise SecuritySpecError(path, f"is required: the {what}")
    if len(value) > max_len or not pattern.match(value):
        raise SecuritySpecError(path, f"{value!r} is not a valid {what}")
    return value


def _list(value: Any, path: str) -> Sequence[Any]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SecuritySpecError(path, f"must be a list, got {type(value).__name__}")
    return value


def parse_auth(raw: Any, path: str = "spec.serving.auth") -> ServingAuth | None:
    if raw is None:
        return None
    a = _obj(raw, path)
    return ServingAuth(secret_name=_name(a.get("secretName"), f"{path}.secretName",
                                         "Secret name"))


def parse_tls(raw: Any, path: str = "spec.serving.tls") -> ServingTLS | None:
    if raw is None:
        return None
    t = _obj(raw, path)
    secret, cm = t.get("secretName"), t.get("certManager")
    if (secret is None) == (cm is None):
        raise SecuritySpecError(path, "set exactly one of secretName (a kubernetes.io/tls "
                                "Secret) and certManager (a Certificate the operator renders)")
    if secret is not None:
        return ServingTLS(secret_name=_name(secret, f"{path}.secretName", "Secret name"))
    c = _obj(cm, f"{path}.certManager")
    ip = f"{path}.certManager.issuerRef"
    issuer = _obj(c.get("issuerRef"), ip)
    kind = issuer.get("kind", "Issuer")
    if kind not in ISSUER_KINDS:
        raise SecuritySpecError(f"{ip}.kind", f"{kind!r} is not one of {', '.join(ISSUER_KINDS)}")
    names = []
    for i, n in enumerate(_list(c.get("dnsNames"), f"{path}.certManager.dnsNames")):
        names.append(_name(n, f"{path}.certManager.dnsNames[{i}]", "DNS name",
                           pattern=_DNS_NAME))
    if len(names) > 32:
        raise SecuritySpecError(f"{path}.certManager.dnsNames", "at most 32 names")
    return ServingTLS(cert_manager=CertManagerTLS(
        issuer_ref=IssuerRef(name=_name(issuer.get("name"), f"{ip}.name", "issuer name"),
                             kind=str(kind)),
        dns_names=tuple(names)))


def _labels(value: Any, path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in _obj(value, path).items():
        if not isinstance(k, str) or len(k) > 316 or not _LABEL_KEY.match(k):
            raise SecuritySpecError(path, f"{k!r} is not a label key")
        if not isinstance(v, str) or len(v) > 63 or not _LABEL_VALUE.match(v):
            raise SecuritySpecError(f"{path}.{k}", f"{v!r} is not a label value")
        out[k] = v
    return out


def parse_network_policy(raw: Any, path: str = "spec.serving.networkPolicy"
                         ) -> NetworkPolicySpec:
    n = _obj(raw, path)
    enabled = n.get("enabled", True)
    if not isinstance(enabled, bool):
        raise SecuritySpecError(f"{path}.enabled", f"must be true or false, got {enabled!r}")
    peers = []
    entries = _list(n.get("from"), f"{path}.from")
    if len(entries) > 32:
        raise SecuritySpecError(f"{path}.from", "at most 32 entries")
    for i, entry in enumerate(entries):
        p = f"{path}.from[{i}]"
        e = _obj(entry, p)
        ns = e.get("namespace")
        peers.append(NetworkPeer(
            namespace=None if ns is None else _name(ns, f"{p}.namespace", "namespace name",
                                                    63, _DNS1123),
            pod_labels=_labels(e.get("podLabels"), f"{p}.podLabels")))
    return NetworkPolicySpec(enabled=enabled, allow_from=tuple(peers))
