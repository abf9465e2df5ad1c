"""Operator settings from KUBEMAAS_OPERATOR_* environment variables (no kopf, no client here)."""

from __future__ import annotations

import hashlib
import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields

from .api import EndpointPicker, SpecError, parse_endpoint_picker

_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+:[0-9]{1,5}$")
# [REGISTRY[:PORT]/]PATH[:TAG][@sha256:DIGEST], as the kubelet parses an image reference
_IMAGE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9.-]*(:[0-9]+)?/)?[a-z0-9]+([._-]+[a-z0-9]+)*"
                    r"(/[a-z0-9]+([._-]+[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?"
                    r"(@sha256:[0-9a-f]{64})?$")
_SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


class SettingsError(ValueError):
    """A setting has a value the operator cannot use; the message names the variable."""


def _default_namespace() -> str:
    try:
        with open(_SA_NAMESPACE, encoding="utf-8") as fh:
            return fh.read().strip() or "kubemaas-system"
    except OSError:
        return "kubemaas-system"


@dataclass(frozen=True)
class Settings:
    """Everything an administrator may tune; each field is KUBEMAAS_OPERATOR_<FIELD>."""

    namespace: str = ""  # where the operator runs and reads its templates ConfigMap
    templates_configmap: str = "kubemaas-templates"
    templates_ttl_s: float = 10.0  # how long a read of the templates ConfigMap is reused
    resync_s: float = 60.0  # the periodic drift check of every ModelDeployment
    not_ready_grace_s: float = 60.0  # Running but not Ready for longer = NotReady
    api_workers: int = 32  # threads (and connections) for blocking API calls
    max_concurrent_reconciles: int = 256
    health_port: int = 8081  # GET /healthz (kopf liveness + api write count); 0 = off
    log_level: str = "INFO"
    # kopf peering: the name of the ClusterKopfPeering object that replicas share. Empty = run
    # standalone (one replica only). With a name, replicas with a lower priority pause while a
    # live peer with a higher one exists; equal priorities would all pause.
    peering: str = ""
    # -1 = derived from the process identity (a number unique per pod, see identity()).
    priority: int = -1
    # Seconds a peer's keep-alive stays valid: a replica that dies (kill -9) is replaced
    # by a paused one within about this long. Keep-alives go out every lifetime-5..10 s (>= 1 s).
    peering_lifetime_s: int = 15
    # The Gateway (Gateway API) that models without spec.serving.gateway attach their HTTPRoute
    # to, as "NAMESPACE/NAME"; empty = none (only models that name a Gateway get a route).
    gateway: str = ""
    # How often the operator asks API discovery whether HTTPRoute (and cert-manager's Certificate,
    # KEDA's ScaledObject) is served (CRDs installed or removed while it runs), seconds; it also
    # asks once at start.
    gateway_discovery_s: float = 30.0
    # The endpoint picker a language model's InferencePool names when its spec names none, as
    # "NAME:PORT" or "NAME:PORT:FailOpen" (a Service in each model's namespace); empty = none.
    endpoint_picker: str = ""
    # The namespace of the Prometheus that scrapes the models: each model's NetworkPolicy lets
    # it reach the runtime's /metrics port; empty = none (docs/operator.md).
    monitoring_namespace: str = ""
    # The operator's own Prometheus metrics (GET /metrics, prometheus-client); 0 = off.
    metrics_port: int = 8082
    # The image of engine vllm when a ModelDeployment names none (spec.runtime.image).
    vllm_image: str = "vllm/vllm-openai:v0.33.0"
    # The Prometheus (http(s)://HOST:PORT) that scrapes the models' runtimes: the KEDA
    # ScaledObjects of models that scale on queue, concurrency or kvCache read their signal from
    # it; empty = none (those models fall back to CPU; docs/autoscaling.md).
    prometheus: str = ""
    # KEDA's HTTP add-on (docs/autoscaling.md, waking on the first request), where the API server
    # serves its InterceptorRoute: the gRPC address (HOST:PORT) of its external scaler, which the
    # ScaledObjects of models at minReplicas 0 name in their external-push trigger, and of its
    # interceptor's proxy, where requests must go to wake a model at zero (the status says so).
    http_scaler: str = "keda-add-ons-http-external-scaler.keda:9090"
    http_interceptor: str = "keda-add-ons-http-interceptor-proxy.keda:8080"

    def default_gateway(self) -> tuple[str, str] | None:
        """KUBEMAAS_OPERATOR_GATEWAY as (namespace, name), or None when unset."""
        if not self.gateway:
            return None
        namespace, _, name = self.gateway.partition("/")
        return namespace, name

    def default_endpoint_picker(self) -> EndpointPicker | None:
        """KUBEMAAS_OPERATOR_ENDPOINT_PICKER as an EndpointPicker, or None when unset."""
        if not self.endpoint_picker:
            return None
        name, _, rest = self.endpoint_picker.partition(":")
        port, _, mode = rest.partition(":")
        raw: dict[str, object] = {"name": name, "port": int(port) if port.isdigit() else port}
        if mode:
            raw["failureMode"] = mode
        return parse_endpoint_picker(raw, "KUBEMAAS_OPERATOR_ENDPOINT_PICKER")

    def identity(self, env: Mapping[str, str] | None = None) -> str:
        """This process's peering identity: POD_ID or POD_NAME (the chart sets POD_NAME from
        metadata.name), else host/pid."""
        env = os.environ if env is None else env
        return (env.get("POD_ID") or env.get("POD_NAME")
                or f"{socket.gethostname()}/{os.getpid()}")

    def effective_priority(self, identity: str) -> int:
        """The configured priority, or one derived from the identity: stable for a process,
        different (with 1 - 2^-31 certainty) between two pods, so exactly one replica acts."""
        if self.priority >= 0:
            return self.priority
        return int.from_bytes(hashlib.sha256(identity.encode()).digest()[:4], "big") >> 1

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for f in fields(cls):
            var = f"KUBEMAAS_OPERATOR_{f.name.upper()}"
            if var not in env:
                continue
            text = env[var]
            try:
                if f.type == "float":
                    values[f.name] = float(text)
                elif f.type == "int":
                    values[f.name] = int(text)
                else:
                    values[f.name] = text
            except ValueError as err:
                raise SettingsError(f"{var}={text!r}: expected a {f.type}") from err
        settings = cls(**values)  # type: ignore[arg-type]
        if not settings.namespace:
            settings = cls(**{**values, "namespace": _default_namespace()})  # type: ignore[arg-type]
        settings._check()
        return settings

    def _check(self) -> None:
        """Refuse values the operator cannot run with; the message names the variable."""
        settings = self
        if settings.resync_s < 1 or settings.api_workers < 1 or settings.health_port < 0:
            # a resync of every model more often than each second only loads the API server
            raise SettingsError("KUBEMAAS_OPERATOR_RESYNC_S must be >= 1, "
                                "KUBEMAAS_OPERATOR_API_WORKERS >= 1, "
                                "KUBEMAAS_OPERATOR_HEALTH_PORT >= 0")
        if settings.gateway:
            namespace, slash, name = settings.gateway.partition("/")
            if not slash or not namespace or not name or "/" in name:
                raise SettingsError(f"KUBEMAAS_OPERATOR_GATEWAY={settings.gateway!r}: expected "
                                    "NAMESPACE/NAME of a Gateway")
        if settings.monitoring_namespace and not _DNS1123.match(settings.monitoring_namespace):
            raise SettingsError(f"KUBEMAAS_OPERATOR_MONITORING_NAMESPACE="
                                f"{settings.monitoring_namespace!r}: not a namespace name")
        if settings.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise SettingsError(f"KUBEMAAS_OPERATOR_LOG_LEVEL={settings.log_level!r}: expected "
                                "DEBUG, INFO, WARNING, ERROR or CRITICAL")
        if not 0 <= settings.metrics_port <= 65535:
            raise SettingsError("KUBEMAAS_OPERATOR_METRICS_PORT must be within 0..65535")
        if settings.health_port > 65535:
            raise SettingsError("KUBEMAAS_OPERATOR_HEALTH_PORT must be within 0..65535")
        if settings.metrics_port and settings.metrics_port == settings.health_port:
            raise SettingsError(f"KUBEMAAS_OPERATOR_METRICS_PORT and KUBEMAAS_OPERATOR_HEALTH_PORT "
                                f"are both {settings.metrics_port}: each needs a port of its own")
        if settings.gateway_discovery_s < 1:  # API discovery more often only loads it
            raise SettingsError("KUBEMAAS_OPERATOR_GATEWAY_DISCOVERY_S must be >= 1")
        try:
            settings.default_endpoint_picker()
        except SpecError as err:
            raise SettingsError(f"KUBEMAAS_OPERATOR_ENDPOINT_PICKER={settings.endpoint_picker!r}:"
                                f" expected NAME:PORT or NAME:PORT:FailOpen ({err})") from err
        if settings.prometheus and not re.match(r"^https?://[^/\s]+(/\S*)?$",
                                                settings.prometheus):
            raise SettingsError(f"KUBEMAAS_OPERATOR_PROMETHEUS={settings.prometheus!r}: expected "
                                "http(s)://HOST:PORT of a Prometheus")
        for var, value in (("HTTP_SCALER", settings.http_scaler),
                           ("HTTP_INTERCEPTOR", settings.http_interceptor)):
            if not _HOST_PORT.match(value) or not 1 <= int(value.rsplit(":", 1)[1]) <= 65535:
                raise SettingsError(f"KUBEMAAS_OPERATOR_{var}={value!r}: expected HOST:PORT")
        if not _IMAGE.match(settings.vllm_image):
            raise SettingsError(f"KUBEMAAS_OPERATOR_VLLM_IMAGE={settings.vllm_image!r}: not an "
                                "image reference ([REGISTRY[:PORT]/]PATH[:TAG][@sha256:DIGEST])")
        if settings.peering_lifetime_s < 2:
            raise SettingsError("KUBEMAAS_OPERATOR_PEERING_LIFETIME_S must be >= 2")
