"""PURE: what every rendered manifest shares: the labels and annotations kubemaas owns, the
render context, the templates (Jinja2 with StrictUndefined, YAML out) and the stamp that makes a
manifest a child (identity, owner reference, labels, spec hash)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment

from ..api import API_VERSION, KIND, EndpointPicker, ModelDeploymentSpec, ModelShape
from ..engines import DEFAULT_VLLM_IMAGE
from ..modelcache.mount import CacheMount
from ..sizing import GPUType

SPEC_HASH = "serving.kubemaas.io/spec-hash"
REVISION = "serving.kubemaas.io/revision"
TRACK = "serving.kubemaas.io/track"
METRICS_PORT_LABEL = "serving.kubemaas.io/metrics-port"  # on Services with a "metrics" port
TRACK_SERVICE = "serving.kubemaas.io/traffic-track"  # on the per-track Services (stable, canary)
MANAGED_BY = "app.kubernetes.io/managed-by"
INSTANCE = "app.kubernetes.io/instance"
NAME = "app.kubernetes.io/name"
COMPONENT = "app.kubernetes.io/component"
PART_OF = "app.kubernetes.io/part-of"
APP_NAME = "kubemaas-runtime"
MANAGER = "kubemaas"
MODEL_DIR = "/mnt/models"
CACHE_DIR = "/var/cache/kubemaas"
CREDENTIALS_DIR = "/var/run/secrets/kubemaas/model-credentials"
BUILTIN_TEMPLATE = "default"
TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"  # package data


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when available: ~10x faster


class RenderError(ValueError):
    """A template could not be rendered into a valid manifest; the message says which and why."""


@dataclass(frozen=True)
class RenderContext:
    """Everything besides the spec that the manifests depend on."""

    name: str
    namespace: str
    uid: str
    template_name: str = BUILTIN_TEMPLATE
    template_source: str | None = None  # an administrator's Deployment template; None = built-in
    # The NetworkPolicy's peers besides the spec's: the namespace of the operator's default
    # Gateway (for models that name none) and the monitoring namespace the operator is told.
    default_gateway_namespace: str | None = None
    monitoring_namespace: str = ""
    cache: CacheMount | None = None  # spec.model.cache, once the ModelCache is Ready
    # Language models (render/llm.py, sizing.py): the operator's vLLM image, the GPU node types
    # that `gpu.count: auto` chooses from, the shape a model cache recorded.
    vllm_image: str = DEFAULT_VLLM_IMAGE
    gpu_types: tuple[GPUType, ...] = ()
    model_record: ModelShape | None = None
    # Autoscaling (render/autoscaler.py): whether the API server serves KEDA's ScaledObject, and
    # the Prometheus its triggers read the models' signals from ("" = none named).
    keda: bool = False
    prometheus: str = ""
    # Waking a model at zero on its first request (render/wake.py): whether the API server serves
    # the KEDA HTTP add-on's InterceptorRoute, its external scaler's gRPC address (HOST:PORT, the
    # ScaledObject's external-push trigger) and its interceptor's proxy address (the status says
    # where requests must go).
    http_addon: bool = False
    http_scaler: str = ""
    http_interceptor: str = ""
    # A language model's InferencePool (render/inference.py): whether the API server serves the
    # CRD, and the operator's default endpoint picker. A picker scrapes /metrics on the serving
    # port, so a model with API keys serves it there without one (render/security.py).
    inference_pools: bool = False
    default_endpoint_picker: EndpointPicker | None = None
    # the labels of the picker's pods (its Service's selector, picker_peers.py): the
    # NetworkPolicy admits them to the serving port, where they read /metrics
    picker_pods: Mapping[str, str] | None = None


@dataclass(frozen=True)
class ServiceParams:
    name: str
    namespace: str
    labels: Mapping[str, str]
    selector: Mapping[str, str]
    port: int
    app_protocol: str = "http"
    metrics_port: int | None = None


def common_labels(name: str) -> dict[str, str]:
    return {NAME: APP_NAME, INSTANCE: name, MANAGED_BY: MANAGER, COMPONENT: "model-server",
            PART_OF: "kubemaas"}


def service_selector(name: str) -> dict[str, str]:
    """Selects every runtime pod of the model, whatever its track (a canary later)."""
    return {NAME: APP_NAME, INSTANCE: name}


def pod_selector(name: str) -> dict[str, str]:
    """The main Deployment's (immutable) selector."""
    return {**service_selector(name), TRACK: "main"}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(service_selector(name).items()))


def url(name: str, namespace: str, port: int) -> str:
    return f"http://{name}.{namespace}.svc.cluster.local:{port}"


def digest(obj: Any, length: int = 16) -> str:
    data = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(data.encode()).hexdigest()[:length]


def owner_reference(ctx: RenderContext) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "name": ctx.name, "uid": ctx.uid,
            "controller": True, "blockOwnerDeletion": True}


def _environment() -> jinja2.Environment:
    # Sandboxed: an administrator's template (a ConfigMap) must not reach Python from inside
    # the operator ({{ cycler.__init__.__globals__.os... }} ran code with its ServiceAccount),
    # and the sandbox caps range() at 100000 items, so a loop cannot stall the event loop as
    # long.
    return SandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False,
                                keep_trailing_newline=True)


@lru_cache(maxsize=16)
def builtin_template(filename: str) -> str:
    return (TEMPLATES_DIR / filename).read_text("utf-8")


@lru_cache(maxsize=64)
def _compiled(source: str) -> jinja2.Template:
    return _environment().from_string(source)


def render_template(source: str, what: str, params: object) -> dict[str, Any]:
    try:
        text = _compiled(source).render(p=params)
        manifest = yaml.load(text, Loader=_LOADER)
    except (jinja2.TemplateError, OverflowError) as err:  # OverflowError: the sandbox's range cap
        raise RenderError(f"{what}: {type(err).__name__}: {err}") from err
    except yaml.YAMLError as err:
        raise RenderError(f"{what} did not render valid YAML: {err}") from err
    if not isinstance(manifest, dict):
        raise RenderError(f"{what} did not render a single object")
    return manifest


def stamp(manifest: dict[str, Any], ctx: RenderContext, labels: Mapping[str, str],
           extra_annotations: Mapping[str, str] | None = None,
           name: str | None = None) -> dict[str, Any]:
    """Enforce what no template may change: identity, ownership, labels; then the spec hash."""
    meta = manifest.setdefault("metadata", {})
    meta["name"] = name or ctx.name
    meta["namespace"] = ctx.namespace
    meta["labels"] = {**(meta.get("labels") or {}), **labels}
    meta["ownerReferences"] = [owner_reference(ctx)]
    annotations = {**(meta.get("annotations") or {}), **(extra_annotations or {})}
    annotations.pop(SPEC_HASH, None)
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    meta.setdefault("annotations", {})[SPEC_HASH] = digest(manifest)
    return manifest


def app_protocol(spec: ModelDeploymentSpec) -> str:
    return "https" if spec.serving.tls is not None else "http"
