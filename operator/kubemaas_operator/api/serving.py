"""PURE: `spec.serving` — the port and protocol, the Gateway the model's HTTPRoute attaches to,
and the security fields (serving_security.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .fields import (
    DNS1123,
    HOSTNAME,
    SUBDOMAIN,
    SpecError,
    array,
    integer,
    json_name,
    obj,
    string,
)
from .inference import InferencePoolSpec, parse_inference_pool
from .serving_security import (
    NetworkPolicySpec,
    ServingAuth,
    ServingTLS,
    parse_auth,
    parse_network_policy,
    parse_tls,
)


@dataclass(frozen=True)
class GatewayRef:
    """The Gateway (Gateway API) the model's HTTPRoute attaches to: its parentRef."""

    name: str = field(metadata=json_name("name"))
    namespace: str | None = field(metadata=json_name("namespace"), default=None)
    hostnames: tuple[str, ...] = field(metadata=json_name("hostnames"), default=())


@dataclass(frozen=True)
class Serving:
    port: int = field(metadata=json_name("port"), default=8080)
    protocol: Literal["v2-rest"] = field(metadata=json_name("protocol"), default="v2-rest")
    gateway: GatewayRef | None = field(metadata=json_name("gateway"), default=None)
    auth: ServingAuth | None = field(metadata=json_name("auth"), default=None)
    tls: ServingTLS | None = field(metadata=json_name("tls"), default=None)
    network_policy: NetworkPolicySpec = field(metadata=json_name("networkPolicy"),
                                              default_factory=NetworkPolicySpec)
    inference_pool: InferencePoolSpec | None = field(metadata=json_name("inferencePool"),
                                                     default=None)


def parse_gateway(g: Mapping[str, Any], path: str) -> GatewayRef:
    """{name, namespace?, hostnames?} -> GatewayRef, or SpecError naming the field."""
    gw_name = string(g.get("name"), f"{path}.name", required=True) or ""
    if len(gw_name) > 253 or not SUBDOMAIN.match(gw_name):
        raise SpecError(f"{path}.name", f"{gw_name!r} is not a valid Gateway name")
    gw_ns = string(g.get("namespace"), f"{path}.namespace")
    if gw_ns is not None and (len(gw_ns) > 63 or not DNS1123.match(gw_ns)):
        raise SpecError(f"{path}.namespace", f"{gw_ns!r} is not a valid namespace name")
    hostnames = []
    for i, h in enumerate(array(g.get("hostnames"), f"{path}.hostnames")):
        host = string(h, f"{path}.hostnames[{i}]", required=True) or ""
        if len(host) > 253 or not HOSTNAME.match(host):
            raise SpecError(f"{path}.hostnames[{i}]", f"{host!r} is not a hostname such as "
                            "model.example.com or *.example.com")
        hostnames.append(host)
    if len(hostnames) > 16:
        raise SpecError(f"{path}.hostnames", "at most 16 hostnames")
    return GatewayRef(name=gw_name, namespace=gw_ns, hostnames=tuple(hostnames))


def parse_serving(raw: Any) -> Serving:
    """`spec.serving` -> Serving, or SpecError naming the field."""
    sv = obj(raw, "spec.serving")
    port = integer(sv.get("port"), "spec.serving.port", 1024, 65535) or 8080
    protocol = sv.get("protocol", "v2-rest")
    if protocol != "v2-rest":
        raise SpecError("spec.serving.protocol", f"{protocol!r} is not served; use v2-rest")
    gateway = None
    if sv.get("gateway") is not None:
        gateway = parse_gateway(obj(sv.get("gateway"), "spec.serving.gateway"),
                                "spec.serving.gateway")
    return Serving(port=port, gateway=gateway, auth=parse_auth(sv.get("auth")),
                   tls=parse_tls(sv.get("tls")),
                   network_policy=parse_network_policy(sv.get("networkPolicy")),
                   inference_pool=parse_inference_pool(sv.get("inferencePool")))
