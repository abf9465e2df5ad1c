"""PURE: a ModelDeployment spec and its context in, the children's manifests out.

Jinja2 templates (package data under kubemaas_operator/templates) with StrictUndefined and one
typed parameter object per template. Every child is labelled, owned by its ModelDeployment, and
stamped with `serving.kubemaas.io/spec-hash` (a hash of the manifest itself) so that "nothing
changed" costs a string comparison. The Deployment also carries `serving.kubemaas.io/revision`, a
hash of its pod template, which the status reports and a rollout can key on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..api import ModelDeploymentSpec
from ..engines import TENSOR, probes
from ..modelcache.mount import mount_cache
from ..scheduling import Placement, placement
from . import autoscaler, cached_optimization, conversion, llm, optimization, wake
from .base import (
    APP_NAME,
    BUILTIN_TEMPLATE,
    CACHE_DIR,
    COMPONENT,
    CREDENTIALS_DIR,
    INSTANCE,
    MANAGED_BY,
    MANAGER,
    METRICS_PORT_LABEL,
    MODEL_DIR,
    NAME,
    PART_OF,
    REVISION,
    SPEC_HASH,
    TEMPLATES_DIR,
    TRACK,
    TRACK_SERVICE,
    RenderContext,
    RenderError,
    ServiceParams,
    app_protocol,
    builtin_template,
    common_labels,
    digest,
    owner_reference,
    pod_selector,
    selector_string,
    service_selector,
    url,
)
from .base import render_template as _render
from .base import stamp as _stamp
from .inference import endpoint_picker, wants_pool
from .security import (
    CERTIFICATE_API_VERSION,
    CertificateParams,
    NetworkPolicyParams,
    certificate_dns_names,
    ingress_rules,
    security_pod,
    tls_secret_name,
    use_https_probes,
)
from .tracks import (
    CANARY_TRACK,
    HTTPROUTE_API_VERSION,
    STABLE_TRACK,
    HTTPRouteParams,
    canary_name,
    canary_selector,
    render_gateway,
    replicas_manifest,
    route_path,
    track_selector,
    track_service_name,
    with_strategy,
)

# Names other modules import from the package (defined in base.py and tracks.py).
__all__ = [
    "APP_NAME",
    "BUILTIN_TEMPLATE",
    "CACHE_DIR",
    "CANARY_TRACK",
    "COMPONENT",
    "CREDENTIALS_DIR",
    "HTTPROUTE_API_VERSION",
    "INSTANCE",
    "MANAGED_BY",
    "MANAGER",
    "METRICS_PORT_LABEL",
    "MODEL_DIR",
    "NAME",
    "PART_OF",
    "REVISION",
    "SPEC_HASH",
    "STABLE_TRACK",
    "TEMPLATES_DIR",
    "TRACK",
    "TRACK_SERVICE",
    "HTTPRouteParams",
    "RenderContext",
    "RenderError",
    "ServiceParams",
    "app_protocol",
    "builtin_template",
    "canary_name",
    "canary_selector",
    "common_labels",
    "digest",
    "owner_reference",
    "pod_selector",
    "render_gateway",
    "replicas_manifest",
    "route_path",
    "selector_string",
    "service_selector",
    "track_selector",
    "track_service_name",
    "url",
    "with_strategy",
]


@dataclass(frozen=True)
class DeploymentParams:
    name: str
    namespace: str
    labels: Mapping[str, str]
    selector: Mapping[str, str]
    pod_labels: Mapping[str, str]
    pod_annotations: Mapping[str, str]
    replicas: int | None
    image: str | None
    image_pull_policy: str | None
    args: list[str]
    env: list[dict[str, str]]
    port: int
    requests: Mapping[str, str]
    limits: Mapping[str, str]
    node_selector: Mapping[str, str]
    affinity: Mapping[str, Any]
    tolerations: list[Mapping[str, Any]]
    priority_class_name: str | None
    topology_spread_constraints: list[dict[str, Any]]
    volumes: list[dict[str, Any]]
    volume_mounts: list[dict[str, Any]]
    model_uri: str
    model_format: str
    gpu_count: int
    gpu_resource: str | None
    init_containers: list[dict[str, Any]] = field(default_factory=list)
    metrics_port: int | None = None  # /metrics on a port of its own (render/security.py)
    # The engine's contract (engines.py, render/llm.py): command, probes (startup, liveness,
    # readiness), the user the container runs as (None: the image's, which must not be root).
    command: list[str] = field(default_factory=lambda: list(TENSOR.command))
    probes: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: probes(TENSOR, 0))
    run_as_user: int | None = None
    engine: str = "kubemaas"


@dataclass(frozen=True)
class PDBParams:
    name: str
    namespace: str
    labels: Mapping[str, str]
    selector: Mapping[str, str]


@dataclass(frozen=True)
class Rendered:
    """The desired children, in apply order, and the Deployment's revision."""

    children: list[dict[str, Any]] = field(default_factory=list)
    revision: str = ""
    autoscaler: autoscaler.Choice | None = None  # the engine of spec.autoscaling, and why
    wake_on_request: wake.Wake | None = None  # at minReplicas 0: whether a request wakes it


def _model_env_and_volumes(spec: ModelDeploymentSpec, name: str) -> tuple[
        str, list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [{"name": "model-cache", "emptyDir": {}}]
    mounts: list[dict[str, Any]] = [{"name": "model-cache", "mountPath": CACHE_DIR}]
    uri = spec.model.uri
    if uri.startswith("pvc://"):
        claim, _, path = uri.removeprefix("pvc://").partition("/")
        volumes.append({"name": "model-store",
                        "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
        mounts.append({"name": "model-store", "mountPath": MODEL_DIR, "readOnly": True})
        uri = f"file://{MODEL_DIR}/{path}"
    if spec.model.credentials_secret_ref is not None:
        volumes.append({"name": "model-credentials",
                        "secret": {"secretName": spec.model.credentials_secret_ref.name}})
        mounts.append({"name": "model-credentials", "mountPath": CREDENTIALS_DIR,
                       "readOnly": True})
    return uri, volumes, mounts


def runtime_env(spec: ModelDeploymentSpec, name: str, model_uri: str) -> list[dict[str, str]]:
    """The runtime's settings (docs/runtime.md) followed by the user's own variables."""
    served = conversion.served(spec, model_uri, CACHE_DIR)
    env = [
        {"name": "KUBEMAAS_MODEL_URI", "value": served.uri},
        # none for the optimize step's directory: the runtime reads the format from the file
        # it finds there (the optimized ONNX file, or the original when the guard failed)
        *([{"name": "KUBEMAAS_MODEL_FORMAT", "value": served.format}] if served.format else []),
        {"name": "KUBEMAAS_MODEL_NAME", "value": spec.model.name or name},
        {"name": "KUBEMAAS_MODEL_VERSION", "value": spec.model.version or "1"},
        {"name": "KUBEMAAS_PORT", "value": str(spec.serving.port)},
        {"name": "KUBEMAAS_CACHE_DIR", "value": CACHE_DIR},
    ]
    if served.sha256:
        env.append({"name": "KUBEMAAS_MODEL_SHA256", "value": served.sha256})
    if spec.model.signature:  # the SavedModel's signature converted: the v1 route's name
        env.append({"name": "KUBEMAAS_SIGNATURE_NAME", "value": spec.model.signature})
    if spec.runtime.batching is not None:
        b = spec.runtime.batching
        delay = int(b.max_delay_ms) if float(b.max_delay_ms).is_integer() else b.max_delay_ms
        env.append({"name": "KUBEMAAS_MAX_BATCH_SIZE", "value": str(b.max_batch_size)})
        env.append({"name": "KUBEMAAS_MAX_BATCH_DELAY_MS", "value": str(delay)})
    if spec.model.credentials_secret_ref is not None:
        env.append({"name": "KUBEMAAS_S3_CREDENTIALS_DIR", "value": CREDENTIALS_DIR})
    env.extend({"name": e.name, "value": e.value} for e in spec.runtime.env)
    return env


def deployment_params(spec: ModelDeploymentSpec, ctx: RenderContext,
                      place: Placement) -> DeploymentParams:
    model_uri, volumes, mounts = _model_env_and_volumes(spec, ctx.name)
    secured = security_pod(spec, ctx.name, picker_scrapes=wants_pool(
        spec, ctx.inference_pools) and endpoint_picker(spec, ctx.default_endpoint_picker)
        is not None)
    env = runtime_env(spec, ctx.name, model_uri)
    cut = len(env) - len(spec.runtime.env)  # the runtime's settings first, the user's last
    env = [*env[:cut], *secured.env, *env[cut:]]
    labels = common_labels(ctx.name)
    pod_labels = {**spec.pod_metadata.labels, **labels, **pod_selector(ctx.name)}
    spreads = []
    for c in spec.scheduling.topology_spread_constraints:
        c = dict(c)
        c.setdefault("labelSelector", {"matchLabels": service_selector(ctx.name)})
        spreads.append(c)
    served = conversion.served(spec, model_uri, CACHE_DIR)
    credentials = CREDENTIALS_DIR if spec.model.credentials_secret_ref is not None else None
    return llm.engine_params(DeploymentParams(
        name=ctx.name, namespace=ctx.namespace, labels=labels, selector=pod_selector(ctx.name),
        pod_labels=pod_labels, pod_annotations=dict(spec.pod_metadata.annotations),
        replicas=None if spec.autoscaling is not None else spec.desired_replicas,
        image=spec.runtime.image, image_pull_policy=spec.runtime.image_pull_policy,
        args=list(spec.runtime.args), env=env,
        port=spec.serving.port, requests=place.requests, limits=place.limits,
        node_selector=place.node_selector, affinity=place.affinity,
        tolerations=list(place.tolerations),
        priority_class_name=spec.scheduling.priority_class_name,
        topology_spread_constraints=spreads, volumes=[*volumes, *secured.volumes],
        volume_mounts=[*mounts, *secured.mounts],
        model_uri=served.uri, model_format=served.format,
        gpu_count=spec.gpu.count if spec.gpu else 0,
        gpu_resource=spec.gpu.resource if spec.gpu else None,
        init_containers=conversion.init_containers(
            spec, model_uri, CACHE_DIR, credentials, mounts,
            {"requests": place.requests, "limits": place.limits}),
        metrics_port=secured.metrics_port), spec, ctx)


def _check_deployment(manifest: dict[str, Any], ctx: RenderContext,
                      spec_of: ModelDeploymentSpec) -> None:
    what = f"template {ctx.template_name!r}"
    if manifest.get("apiVersion") != "apps/v1" or manifest.get("kind") != "Deployment":
        raise RenderError(f"{what} must render an apps/v1 Deployment, got "
                          f"{manifest.get('apiVersion')}/{manifest.get('kind')}")
    spec = manifest.get("spec")
    if not isinstance(spec, dict) or not isinstance(spec.get("template"), dict):
        raise RenderError(f"{what} must render spec.template")
    pod = spec["template"]
    pod_labels = (pod.get("metadata") or {}).get("labels") or {}
    selector = pod_selector(ctx.name)
    if any(pod_labels.get(k) != v for k, v in selector.items()):
        raise RenderError(f"{what} must keep the pod labels {selector} (use p.pod_labels)")
    containers = (pod.get("spec") or {}).get("containers")
    if not isinstance(containers, list) or not containers:
        raise RenderError(f"{what} must render at least one container")
    if spec_of.model.optimize is not None:
        inits = (pod.get("spec") or {}).get("initContainers") or []
        if not any(isinstance(c, dict) and c.get("name") == optimization.INIT_CONTAINER
                   for c in inits):
            raise RenderError(f"{what} must render p.init_containers as initContainers: "
                              "spec.model.optimize runs in the "
                              f"{optimization.INIT_CONTAINER} init container before the runtime "
                              "starts")
    if conversion.needs_conversion(spec_of):
        inits = (pod.get("spec") or {}).get("initContainers") or []
        if not any(isinstance(c, dict) and c.get("name") == conversion.INIT_CONTAINER
                   for c in inits):
            raise RenderError(f"{what} must render p.init_containers as initContainers: model "
                              f"format {spec_of.model.format} is converted by the "
                              f"{conversion.INIT_CONTAINER} init container before the runtime "
                              "starts")


def _render_service(spec: ModelDeploymentSpec, ctx: RenderContext, labels: dict[str, str],
                    metrics_port: int | None) -> dict[str, Any]:
    """The model's Service. One whose runtime serves /metrics on a port of its own says so: the
    chart's ServiceMonitors pick the port to scrape by this label."""
    svc_labels = {**labels, METRICS_PORT_LABEL: "metrics"} if metrics_port else labels
    service = _render(builtin_template("service.yaml.j2"), "service template",
                      ServiceParams(name=ctx.name, namespace=ctx.namespace, labels=svc_labels,
                                    selector=service_selector(ctx.name),
                                    port=spec.serving.port, app_protocol=app_protocol(spec),
                                    metrics_port=metrics_port))
    return _stamp(service, ctx, svc_labels)


def render(spec: ModelDeploymentSpec, ctx: RenderContext) -> Rendered:
    """The desired children in apply order: Deployment, Service, then HPA and PDB if wanted."""
    if spec.model.auto_cache is not None:  # the operator renders modelcache.implicit's view
        raise RenderError("spec.model.autoCache is resolved to a named cache before rendering")
    place = placement(spec)
    params = deployment_params(spec, ctx, place)
    labels = common_labels(ctx.name)
    if ctx.template_source is not None and not ctx.template_source.strip():
        raise RenderError(f"template {ctx.template_name!r} is empty in the templates ConfigMap "
                          "(an empty key is not the built-in template)")
    source = ctx.template_source or builtin_template("deployment.yaml.j2")
    deployment = _render(source, f"template {ctx.template_name!r}", params)
    _check_deployment(deployment, ctx, spec)
    llm.check_engine(deployment, params, f"template {ctx.template_name!r}")
    deployment["spec"]["selector"] = {"matchLabels": pod_selector(ctx.name)}
    # A new pod counts as available only once it stayed Ready for the settle window, so the
    # Deployment controller never removes a serving pod for one that crashes right after its
    # first Ready (enforced whatever the template says; docs/rollouts.md).
    deployment["spec"]["minReadySeconds"] = spec.rollout.settle_seconds
    if spec.serving.tls is not None:
        use_https_probes(deployment)
    if ctx.cache is not None and ctx.cache.ready:
        mount_cache(deployment, cached_optimization.narrow(spec, ctx.cache))
        cached_optimization.use_cache(deployment, spec)
    revision = digest(deployment["spec"]["template"], 10)
    # Each pod says which revision it runs (rollout.py tells old pods from new ones with it).
    pod_meta = deployment["spec"]["template"].setdefault("metadata", {})
    pod_meta["labels"] = {**(pod_meta.get("labels") or {}), REVISION: revision}
    children = [_stamp(deployment, ctx, labels, {REVISION: revision})]

    children.append(_render_service(spec, ctx, labels, params.metrics_port))
    choice = autoscaler.choice_for(spec, ctx.keda, ctx.prometheus)
    woken = wake.choose(spec.autoscaling, choice, ctx.http_addon, ctx.http_interceptor,
                        ctx.name, ctx.namespace)
    if spec.autoscaling is not None and choice is not None and choice.engine != autoscaler.NONE:
        scaler = (autoscaler.scaled_object(spec.autoscaling, ctx.name, ctx.namespace, labels,
                                           ctx.prometheus) if choice.engine == autoscaler.KEDA
                  else autoscaler.horizontal_pod_autoscaler(choice, spec.autoscaling, ctx.name,
                                                            ctx.namespace, labels))
        if woken is not None and woken.available:
            scaler = wake.with_trigger(scaler, ctx.name, ctx.http_scaler)
            children.append(_stamp(wake.interceptor_route(
                spec.autoscaling, ctx.name, ctx.namespace, labels, spec.serving.port),
                ctx, labels))
        children.append(_stamp(scaler, ctx, labels))
    if spec.desired_replicas > 1:
        pdb = _render(builtin_template("pdb.yaml.j2"), "disruption budget template",
                      PDBParams(name=ctx.name, namespace=ctx.namespace, labels=labels,
                                selector=service_selector(ctx.name)))
        children.append(_stamp(pdb, ctx, labels))
    children.extend(render_security(spec, ctx))
    return Rendered(children=children, revision=revision, autoscaler=choice,
                    wake_on_request=woken)


def _gateway_namespace(spec: ModelDeploymentSpec, ctx: RenderContext) -> str | None:
    gateway = spec.serving.gateway
    if gateway is not None:
        return gateway.namespace or ctx.namespace
    return ctx.default_gateway_namespace


def _interceptor_namespace(spec: ModelDeploymentSpec, ctx: RenderContext) -> str | None:
    """The namespace of KEDA's HTTP interceptor, for a model it may wake (render/wake.py)."""
    woken = wake.choose(spec.autoscaling, autoscaler.choice_for(spec, ctx.keda, ctx.prometheus),
                        ctx.http_addon, ctx.http_interceptor, ctx.name, ctx.namespace)
    return wake.namespace_of(ctx.http_interceptor) if woken and woken.available else None


def render_security(spec: ModelDeploymentSpec, ctx: RenderContext) -> list[dict[str, Any]]:
    """The NetworkPolicy (unless disabled) and the cert-manager Certificate (when asked)."""
    labels = common_labels(ctx.name)
    out = []
    if spec.serving.network_policy.enabled:
        policy = _render(
            builtin_template("networkpolicy.yaml.j2"), "NetworkPolicy template",
            NetworkPolicyParams(
                name=ctx.name, namespace=ctx.namespace, labels=labels,
                selector=service_selector(ctx.name),
                ingress=ingress_rules(spec, _gateway_namespace(spec, ctx),
                                      ctx.monitoring_namespace,
                                      _interceptor_namespace(spec, ctx), ctx.picker_pods)))
        out.append(_stamp(policy, ctx, labels))
    tls = spec.serving.tls
    if tls is not None and tls.cert_manager is not None:
        cert = _render(builtin_template("certificate.yaml.j2"), "Certificate template",
                       CertificateParams(
                           name=ctx.name, namespace=ctx.namespace, labels=labels,
                           secret_name=tls_secret_name(spec, ctx.name) or "",
                           dns_names=certificate_dns_names(spec, ctx.name, ctx.namespace),
                           issuer_name=tls.cert_manager.issuer_ref.name,
                           issuer_kind=tls.cert_manager.issuer_ref.kind))
        out.append(_stamp(cert, ctx, labels))
    return out


# Kinds the operator may create for a ModelDeployment, in apply order.
CHILD_KINDS: tuple[tuple[str, str], ...] = (
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    (autoscaler.SCALEDOBJECT_API_VERSION, "ScaledObject"),
    (wake.INTERCEPTORROUTE_API_VERSION, "InterceptorRoute"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    (CERTIFICATE_API_VERSION, "Certificate"),
)
