"""PURE: waking a model at zero replicas on its first request, with KEDA's HTTP add-on.

A model that KEDA scales (render/autoscaler.py) with `minReplicas: 0` has no pod while idle, so
its runtime's gauges do not exist and a request sent to its Service is refused. Where the API
server serves the add-on's InterceptorRoute (http.keda.sh/v1beta1), the operator renders:

- an InterceptorRoute NAME: requests that reach the add-on's interceptor with a Host of the
  model (NAME.NAMESPACE, NAME.NAMESPACE.svc, NAME.NAMESPACE.svc.cluster.local) go to the model's
  Service port; while the model has no ready pod the interceptor holds them (it watches the
  Service's EndpointSlices) and counts them as pending;
- an `external-push` trigger on the model's own ScaledObject that names the add-on's external
  scaler and the route: the scaler tells KEDA the route has requests in flight, KEDA takes the
  model from 0 to its first replica, and the held request is forwarded once a pod is Ready.

The add-on's own operator is not needed (nothing here is an HTTPScaledObject: the InterceptorRoute
only routes, and the ScaledObject stays the operator's). docs/autoscaling.md, "Waking on the first
request".
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..api import Autoscaling
from .autoscaler import KEDA, Choice

INTERCEPTORROUTE_API_VERSION = "http.keda.sh/v1beta1"
# The trigger's name in the ScaledObject, and KEDA's name for the add-on's scaler type.
TRIGGER_NAME = "requests"
TRIGGER_TYPE = "external-push"
# In-flight requests per replica for the interceptor's trigger of a kvCache model (whose target is
# a percentage, not a request count): the add-on's own default target.
KV_CACHE_REQUESTS_PER_REPLICA = 100
AVAILABLE, NOT_INSTALLED = "Interceptor", "HTTPAddOnNotInstalled"


@dataclass(frozen=True)
class Wake:
    """Whether a model at zero wakes on its first request, and where that request goes
    (status.autoscaling.wakeOnRequest)."""

    available: bool
    reason: str  # Interceptor or HTTPAddOnNotInstalled
    message: str
    interceptor: str  # where requests must go: the add-on's interceptor proxy (HOST:PORT)
    host: str  # the Host header the InterceptorRoute matches

    def status(self) -> dict[str, Any]:
        return {"available": self.available, "reason": self.reason, "message": self.message,
                "interceptor": self.interceptor, "host": self.host}


def hosts(name: str, namespace: str) -> list[str]:
    """The Host header values (any port) that the InterceptorRoute routes to the model."""
    base = f"{name}.{namespace}"
    return [base, f"{base}.svc", f"{base}.svc.cluster.local"]


def choose(a: Autoscaling | None, choice: Choice | None, http_addon: bool, interceptor: str,
           name: str, namespace: str) -> Wake | None:
    """None unless KEDA may take the model to zero (minReplicas 0 and KEDA is its engine: a
    fallback never goes below one replica); else whether its first request wakes it."""
    if a is None or choice is None or not a.to_zero or choice.engine != KEDA:
        return None
    host = hosts(name, namespace)[0]
    if http_addon:
        return Wake(True, AVAILABLE,
                    f"at zero, a request sent to KEDA's HTTP interceptor ({interceptor}) with "
                    f"Host {host} wakes the model and is answered once a replica is Ready "
                    "(InterceptorRoute NAME, the ScaledObject's external-push trigger)",
                    interceptor, host)
    return Wake(False, NOT_INSTALLED,
                f"wake on request is unavailable: the API server does not serve "
                f"{INTERCEPTORROUTE_API_VERSION} InterceptorRoute (install KEDA's HTTP add-on); "
                f"at zero only the {a.signal} signal as Prometheus sees it wakes the model, and "
                "a request sent to its Service is refused", "", host)


def namespace_of(address: str) -> str | None:
    """The namespace of a Service address SERVICE.NAMESPACE[.svc…]:PORT (the interceptor's, for the
    model's NetworkPolicy), or None for an IP address or a bare name."""
    host = address.rpartition(":")[0] or address
    labels = host.split(".")
    if len(labels) < 2 or all(part.isdigit() for part in labels):
        return None
    return labels[1]


def requests_per_replica(a: Autoscaling) -> int:
    """The interceptor trigger's target: in-flight requests through the interceptor per replica
    (the spec's target for queue and concurrency, which count requests too)."""
    return KV_CACHE_REQUESTS_PER_REPLICA if a.signal == "kvCache" else a.target


def interceptor_route(a: Autoscaling, name: str, namespace: str, labels: Mapping[str, str],
                      port: int) -> dict[str, Any]:
    """The InterceptorRoute NAME: the model's hosts to its Service's port (identity, owner and hash
    stamped by the caller)."""
    return {
        "apiVersion": INTERCEPTORROUTE_API_VERSION, "kind": "InterceptorRoute",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "target": {"service": name, "port": port},
            "rules": [{"hosts": hosts(name, namespace)}],
            "scalingMetric": {"concurrency": {"targetValue": requests_per_replica(a)}},
        },
    }


def with_trigger(scaled_object: Mapping[str, Any], name: str, scaler: str) -> dict[str, Any]:
    """The ScaledObject with the add-on's external-push trigger for the route NAME added: KEDA
    keeps a stream open to the scaler (`scaler`, HOST:PORT of its gRPC service), which says
    "active" as soon as the interceptor holds a request for the route."""
    out = copy.deepcopy(dict(scaled_object))
    out["spec"]["triggers"] = [*out["spec"]["triggers"], {
        "type": TRIGGER_TYPE,
        "name": TRIGGER_NAME,
        "metadata": {"scalerAddress": scaler, "interceptorRoute": name},
    }]
    return out
