"""PURE: typed models of the ModelDeployment API (serving.kubemaas.io/v1alpha1).

They mirror crds/serving.kubemaas.io_modeldeployments.yaml field for field; each dataclass field
carries its JSON name in `metadata["json"]`, and tests/unit/test_api_schema.py fails when the two
disagree. The API server validates first (schema + CEL); `parse_spec` validates again because an
object may predate a stricter schema, and turns what it finds into a `SpecError` that names the
field and says what to fix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .optimize_spec import OptimizeSpec, OptimizeSpecError, parse_optimize
from .quantity import QuantityError, parse_quantity
from .serving_security import (
    NetworkPolicySpec,
    SecuritySpecError,
    ServingAuth,
    ServingTLS,
    parse_auth,
    parse_network_policy,
    parse_tls,
)

GROUP = "serving.kubemaas.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"

FORMATS = ("onnx", "torchscript", "torch-export", "keras", "tf-savedmodel")
DEFAULT_CONVERTER_IMAGE = "ghcr.io/kubemaas/tfconvert:0.1.0"
PHASES = ("Pending", "Progressing", "Ready", "Degraded", "Failed")
CONDITION_TYPES = ("Ready", "Scheduled", "Available", "RolloutComplete")

_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_URI = re.compile(
    r"^(pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/.+|file:///.+|https?://[^/]+/.*|s3://[^/]+/.+)$"
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MIG = re.compile(r"^[1-7]g\.[0-9]+gb(\+me)?$")
_TEMPLATE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
RESERVED_LABEL_PREFIXES = ("app.kubernetes.io/", "serving.kubemaas.io/")


class SpecError(ValueError):
    """The spec cannot be served as written; `path` names the field, the message says why."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def _m(name: str) -> dict[str, str]:
    """Field metadata: the field's name in the API (tests/unit/test_api_schema.py reads it)."""
    return {"json": name}


@dataclass(frozen=True)
class SecretRef:
    name: str = field(metadata=_m("name"))


@dataclass(frozen=True)
class ModelSource:
    uri: str = field(metadata=_m("uri"))
    format: str = field(metadata=_m("format"))
    sha256: str | None = field(metadata=_m("sha256"), default=None)
    name: str | None = field(metadata=_m("name"), default=None)
    version: str | None = field(metadata=_m("version"), default=None)
    credentials_secret_ref: SecretRef | None = field(metadata=_m("credentialsSecretRef"),
                                                     default=None)
    optimize: OptimizeSpec | None = field(metadata=_m("optimize"), default=None)

    @property
    def scheme(self) -> str:
        return self.uri.split("://", 1)[0]


@dataclass(frozen=True)
class EnvVar:
    name: str = field(metadata=_m("name"))
    value: str = field(metadata=_m("value"), default="")


@dataclass(frozen=True)
class Resources:
    cpu: str | None = field(metadata=_m("cpu"), default=None)
    memory: str | None = field(metadata=_m("memory"), default=None)
    cpu_limit: str | None = field(metadata=_m("cpuLimit"), default=None)


@dataclass(frozen=True)
class Batching:
    max_batch_size: int = field(metadata=_m("maxBatchSize"), default=1)
    max_delay_ms: float = field(metadata=_m("maxDelayMs"), default=0.0)


@dataclass(frozen=True)
class RuntimeSpec:
    image: str = field(metadata=_m("image"))
    image_pull_policy: str | None = field(metadata=_m("imagePullPolicy"), default=None)
    converter_image: str = field(metadata=_m("converterImage"), default=DEFAULT_CONVERTER_IMAGE)
    template: str = field(metadata=_m("template"), default="default")
    args: tuple[str, ...] = field(metadata=_m("args"), default=())
    env: tuple[EnvVar, ...] = field(metadata=_m("env"), default=())
    resources: Resources = field(metadata=_m("resources"), default_factory=Resources)
    batching: Batching | None = field(metadata=_m("batching"), default=None)


@dataclass(frozen=True)
class PodMetadata:
    labels: Mapping[str, str] = field(metadata=_m("labels"), default_factory=dict)
    annotations: Mapping[str, str] = field(metadata=_m("annotations"), default_factory=dict)


@dataclass(frozen=True)
class GPUSpec:
    count: int = field(metadata=_m("count"), default=1)
    products: tuple[str, ...] = field(metadata=_m("products"), default=())
    min_memory: str | None = field(metadata=_m("minMemory"), default=None)
    mig_profile: str | None = field(metadata=_m("migProfile"), default=None)

    @property
    def resource(self) -> str:
        """The extended resource one replica requests `count` of."""
        return f"nvidia.com/mig-{self.mig_profile}" if self.mig_profile else "nvidia.com/gpu"

    @property
    def min_memory_mib(self) -> int | None:
        if self.min_memory is None:
            return None
        return int(-(-parse_quantity(self.min_memory) // (1024 * 1024)))


@dataclass(frozen=True)
class Autoscaling:
    max_replicas: int = field(metadata=_m("maxReplicas"))
    min_replicas: int = field(metadata=_m("minReplicas"), default=1)
    target_cpu_utilization: int = field(metadata=_m("targetCPUUtilization"), default=80)


@dataclass(frozen=True)
class Toleration:
    key: str | None = field(metadata=_m("key"), default=None)
    operator: str | None = field(metadata=_m("operator"), default=None)
    value: str | None = field(metadata=_m("value"), default=None)
    effect: str | None = field(metadata=_m("effect"), default=None)
    toleration_seconds: int | None = field(metadata=_m("tolerationSeconds"), default=None)

    def to_k8s(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in (("key", self.key), ("operator", self.operator),
                            ("value", self.value), ("effect", self.effect),
                            ("tolerationSeconds", self.toleration_seconds)):
            if value is not None:
                out[name] = value
        return out


@dataclass(frozen=True)
class Scheduling:
    node_selector: Mapping[str, str] = field(metadata=_m("nodeSelector"), default_factory=dict)
    tolerations: tuple[Toleration, ...] = field(metadata=_m("tolerations"), default=())
    affinity: Mapping[str, Any] = field(metadata=_m("affinity"), default_factory=dict)
    priority_class_name: str | None = field(metadata=_m("priorityClassName"), default=None)
    topology_spread_constraints: tuple[Mapping[str, Any], ...] = field(
        metadata=_m("topologySpreadConstraints"), default=())
    allow_gpu_nodes: bool = field(metadata=_m("allowGPUNodes"), default=False)


@dataclass(frozen=True)
class GatewayRef:
    """The Gateway (Gateway API) the model's HTTPRoute attaches to: its parentRef."""

    name: str = field(metadata=_m("name"))
    namespace: str | None = field(metadata=_m("namespace"), default=None)
    hostnames: tuple[str, ...] = field(metadata=_m("hostnames"), default=())


@dataclass(frozen=True)
class Serving:
    port: int = field(metadata=_m("port"), default=8080)
    protocol: Literal["v2-rest"] = field(metadata=_m("protocol"), default="v2-rest")
    gateway: GatewayRef | None = field(metadata=_m("gateway"), default=None)
    auth: ServingAuth | None = field(metadata=_m("auth"), default=None)
    tls: ServingTLS | None = field(metadata=_m("tls"), default=None)
    network_policy: NetworkPolicySpec = field(metadata=_m("networkPolicy"),
                                              default_factory=NetworkPolicySpec)


@dataclass(frozen=True)
class CanaryStep:
    weight: int = field(metadata=_m("weight"))
    pause_seconds: int | None = field(metadata=_m("pauseSeconds"), default=None)


@dataclass(frozen=True)
class CanarySpec:
    steps: tuple[CanaryStep, ...] = field(metadata=_m("steps"))
    paused: bool = field(metadata=_m("paused"), default=False)
    promote: int | None = field(metadata=_m("promote"), default=None)
    abort: bool = field(metadata=_m("abort"), default=False)


@dataclass(frozen=True)
class RolloutSpec:
    """How a new revision replaces the old one on scarce GPUs (rollout.py decides per update)."""

    max_surge: int = field(metadata=_m("maxSurge"), default=1)
    max_unavailable: int = field(metadata=_m("maxUnavailable"), default=1)
    allow_downtime: bool = field(metadata=_m("allowDowntime"), default=False)
    progress_deadline_seconds: int = field(metadata=_m("progressDeadlineSeconds"), default=600)
    # How long a new replica must stay Ready before it counts as available (the Deployment's
    # minReadySeconds): the serving revision's replicas go only for replicas that settled.
    settle_seconds: int = field(metadata=_m("settleSeconds"), default=5)
    canary: CanarySpec | None = field(metadata=_m("canary"), default=None)


@dataclass(frozen=True)
class ModelDeploymentSpec:
    model: ModelSource = field(metadata=_m("model"))
    runtime: RuntimeSpec = field(metadata=_m("runtime"))
    pod_metadata: PodMetadata = field(metadata=_m("podMetadata"), default_factory=PodMetadata)
    gpu: GPUSpec | None = field(metadata=_m("gpu"), default=None)
    replicas: int | None = field(metadata=_m("replicas"), default=None)
    autoscaling: Autoscaling | None = field(metadata=_m("autoscaling"), default=None)
    scheduling: Scheduling = field(metadata=_m("scheduling"), default_factory=Scheduling)
    serving: Serving = field(metadata=_m("serving"), default_factory=Serving)
    rollout: RolloutSpec = field(metadata=_m("rollout"), default_factory=RolloutSpec)

    @property
    def desired_replicas(self) -> int:
        """Replicas to ask for when nobody else decides (the autoscaler's floor otherwise)."""
        if self.autoscaling is not None:
            return self.autoscaling.min_replicas
        return 1 if self.replicas is None else self.replicas


@dataclass(frozen=True)
class Condition:
    type: str = field(metadata=_m("type"))
    status: Literal["True", "False", "Unknown"] = field(metadata=_m("status"))
    reason: str = field(metadata=_m("reason"), default="")
    message: str = field(metadata=_m("message"), default="")
    last_transition_time: str | None = field(metadata=_m("lastTransitionTime"), default=None)
    observed_generation: int | None = field(metadata=_m("observedGeneration"), default=None)


@dataclass(frozen=True)
class RevisionRef:
    number: int = field(metadata=_m("number"), default=0)
    hash: str = field(metadata=_m("hash"), default="")


@dataclass(frozen=True)
class UpdateRevision:
    number: int = field(metadata=_m("number"), default=0)
    hash: str = field(metadata=_m("hash"), default="")
    started_at: str | None = field(metadata=_m("startedAt"), default=None)
    progress_at: str | None = field(metadata=_m("progressAt"), default=None)
    ready: int = field(metadata=_m("ready"), default=0)


@dataclass(frozen=True)
class FailedRevision:
    number: int = field(metadata=_m("number"), default=0)
    hash: str = field(metadata=_m("hash"), default="")
    message: str = field(metadata=_m("message"), default="")


@dataclass(frozen=True)
class RevisionHistoryEntry:
    number: int = field(metadata=_m("number"), default=0)
    hash: str = field(metadata=_m("hash"), default="")
    outcome: str = field(metadata=_m("outcome"), default="")
    message: str = field(metadata=_m("message"), default="")
    time: str | None = field(metadata=_m("time"), default=None)


@dataclass(frozen=True)
class CanaryStatus:
    hash: str = field(metadata=_m("hash"), default="")
    step: int = field(metadata=_m("step"), default=0)
    steps: int = field(metadata=_m("steps"), default=0)
    weight: int = field(metadata=_m("weight"), default=0)
    step_ready_at: str | None = field(metadata=_m("stepReadyAt"), default=None)
    canary_replicas: int = field(metadata=_m("canaryReplicas"), default=0)
    stable_replicas: int = field(metadata=_m("stableReplicas"), default=0)
    traffic_percent: int = field(metadata=_m("trafficPercent"), default=0)
    traffic_split: str = field(metadata=_m("trafficSplit"), default="ReadyReplicas")


@dataclass(frozen=True)
class RolloutStatus:
    strategy: str = field(metadata=_m("strategy"), default="")
    reason: str = field(metadata=_m("reason"), default="")
    message: str = field(metadata=_m("message"), default="")
    current: RevisionRef | None = field(metadata=_m("current"), default=None)
    previous: RevisionRef | None = field(metadata=_m("previous"), default=None)
    update: UpdateRevision | None = field(metadata=_m("update"), default=None)
    failed: FailedRevision | None = field(metadata=_m("failed"), default=None)
    history: tuple[RevisionHistoryEntry, ...] = field(metadata=_m("history"), default=())
    stable_spec: Mapping[str, Any] | None = field(metadata=_m("stableSpec"), default=None)
    canary: CanaryStatus | None = field(metadata=_m("canary"), default=None)


@dataclass(frozen=True)
class ModelDeploymentStatus:
    phase: str = field(metadata=_m("phase"), default="Pending")
    observed_generation: int | None = field(metadata=_m("observedGeneration"), default=None)
    replicas: int = field(metadata=_m("replicas"), default=0)
    ready_replicas: int = field(metadata=_m("readyReplicas"), default=0)
    desired_replicas: int = field(metadata=_m("desiredReplicas"), default=0)
    selector: str | None = field(metadata=_m("selector"), default=None)
    url: str | None = field(metadata=_m("url"), default=None)
    current_revision: str | None = field(metadata=_m("currentRevision"), default=None)
    update_revision: str | None = field(metadata=_m("updateRevision"), default=None)
    reason: str = field(metadata=_m("reason"), default="")
    replica_summary: str = field(metadata=_m("replicaSummary"), default="")
    gpu_summary: str = field(metadata=_m("gpuSummary"), default="")
    conditions: tuple[Condition, ...] = field(metadata=_m("conditions"), default=())
    rollout: RolloutStatus | None = field(metadata=_m("rollout"), default=None)
    optimization: Mapping[str, Any] | None = field(metadata=_m("optimization"), default=None)


# ---------------------------------------------------------------------------------------------
# Parsing: plain JSON (as the API server returns it) -> typed spec, or SpecError.


def _obj(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(path, f"must be an object, got {type(value).__name__}")
    return value


def _str(value: Any, path: str, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise SpecError(path, "is required")
        return None
    if not isinstance(value, str):
        raise SpecError(path, f"must be a string, got {value!r}")
    if required and not value:
        raise SpecError(path, "must not be empty")
    return value


def _int(value: Any, path: str, lo: int, hi: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise SpecError(path, f"must be between {lo} and {hi}, got {value}")
    return value


def _list(value: Any, path: str) -> Sequence[Any]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise SpecError(path, f"must be a list, got {type(value).__name__}")
    return value


def _str_map(value: Any, path: str) -> dict[str, str]:
    obj = _obj(value, path)
    out: dict[str, str] = {}
    for key, item in obj.items():
        if not isinstance(item, str):
            raise SpecError(f"{path}.{key}", f"must be a string, got {item!r}")
        out[str(key)] = item
    return out


def _quantity(value: Any, path: str) -> str | None:
    if value is None:
        return None
    text = str(value)
    try:
        if parse_quantity(text) <= 0:
            raise SpecError(path, f"must be a positive quantity, got {text!r}")
    except QuantityError as err:
        raise SpecError(path, str(err)) from err
    return text


def parse_spec(raw: Mapping[str, Any]) -> ModelDeploymentSpec:
    """Validate and type a ModelDeployment's spec; raise SpecError saying what to fix."""
    spec = _obj(raw, "spec")

    m = _obj(spec.get("model"), "spec.model")
    if not m:
        raise SpecError("spec.model", "is required")
    uri = _str(m.get("uri"), "spec.model.uri", required=True) or ""
    if not _URI.match(uri):
        raise SpecError("spec.model.uri", f"{uri!r} is not pvc://CLAIM/PATH, file:///PATH, "
                        "http(s)://HOST/PATH or s3://BUCKET/KEY")
    fmt = _str(m.get("format"), "spec.model.format", required=True)
    if fmt not in FORMATS:
        raise SpecError("spec.model.format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
    sha = _str(m.get("sha256"), "spec.model.sha256")
    if sha is not None and not _SHA256.match(sha):
        raise SpecError("spec.model.sha256", "must be 64 lower-case hex digits")
    served = _str(m.get("name"), "spec.model.name")
    if served is not None and not _SERVED_NAME.match(served):
        raise SpecError("spec.model.name", f"{served!r} is not a valid model name")
    version = _str(m.get("version"), "spec.model.version")
    if version is not None and not _SERVED_NAME.match(version):
        raise SpecError("spec.model.version", f"{version!r} is not a valid model version")
    cred_raw = m.get("credentialsSecretRef")
    cred = None
    if cred_raw is not None:
        cred_name = _str(_obj(cred_raw, "spec.model.credentialsSecretRef").get("name"),
                         "spec.model.credentialsSecretRef.name", required=True)
        cred = SecretRef(name=cred_name or "")
        if not uri.startswith("s3://"):
            raise SpecError("spec.model.credentialsSecretRef", "is only used for s3:// URIs")
    try:
        optimize = parse_optimize(m.get("optimize"), fmt or "")
    except OptimizeSpecError as exc:
        raise SpecError(exc.path, exc.message) from None
    model = ModelSource(uri=uri, format=fmt, sha256=sha, name=served, version=version,
                        credentials_secret_ref=cred, optimize=optimize)

    r = _obj(spec.get("runtime"), "spec.runtime")
    image = _str(r.get("image"), "spec.runtime.image", required=True) or ""
    template = _str(r.get("template"), "spec.runtime.template") or "default"
    if not _TEMPLATE.match(template):
        raise SpecError("spec.runtime.template", f"{template!r} is not a valid template name")
    pull = _str(r.get("imagePullPolicy"), "spec.runtime.imagePullPolicy")
    if pull is not None and pull not in ("Always", "IfNotPresent", "Never"):
        raise SpecError("spec.runtime.imagePullPolicy", f"{pull!r} is not Always, IfNotPresent "
                        "or Never")
    args = tuple(_str(a, f"spec.runtime.args[{i}]", required=False) or ""
                 for i, a in enumerate(_list(r.get("args"), "spec.runtime.args")))
    env: list[EnvVar] = []
    for i, e in enumerate(_list(r.get("env"), "spec.runtime.env")):
        path = f"spec.runtime.env[{i}]"
        e_obj = _obj(e, path)
        name = _str(e_obj.get("name"), f"{path}.name", required=True) or ""
        if not _ENV_NAME.match(name):
            raise SpecError(f"{path}.name", f"{name!r} is not a valid environment variable name")
        if name.startswith("KUBEMAAS_"):
            raise SpecError(f"{path}.name", f"{name} is rendered from the spec and cannot be set "
                            "here")
        env.append(EnvVar(name=name, value=_str(e_obj.get("value"), f"{path}.value") or ""))
    res = _obj(r.get("resources"), "spec.runtime.resources")
    resources = Resources(cpu=_quantity(res.get("cpu"), "spec.runtime.resources.cpu"),
                          memory=_quantity(res.get("memory"), "spec.runtime.resources.memory"),
                          cpu_limit=_quantity(res.get("cpuLimit"),
                                              "spec.runtime.resources.cpuLimit"))
    batching = None
    if r.get("batching") is not None:
        b = _obj(r.get("batching"), "spec.runtime.batching")
        size = _int(b.get("maxBatchSize"), "spec.runtime.batching.maxBatchSize", 1, 4096)
        delay = b.get("maxDelayMs", 0)
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not (
                0 <= delay <= 10000):
            raise SpecError("spec.runtime.batching.maxDelayMs",
                            f"must be a number from 0 to 10000, got {delay!r}")
        batching = Batching(max_batch_size=size or 1, max_delay_ms=float(delay))
    converter = _str(r.get("converterImage"), "spec.runtime.converterImage")
    runtime = RuntimeSpec(image=image, image_pull_policy=pull, template=template, args=args,
                          env=tuple(env), resources=resources, batching=batching,
                          converter_image=converter or DEFAULT_CONVERTER_IMAGE)

    pm = _obj(spec.get("podMetadata"), "spec.podMetadata")
    labels = _str_map(pm.get("labels"), "spec.podMetadata.labels")
    for key in labels:
        if key.startswith(RESERVED_LABEL_PREFIXES):
            raise SpecError("spec.podMetadata.labels", f"{key} is reserved for the operator")
    pod_metadata = PodMetadata(labels=labels,
                               annotations=_str_map(pm.get("annotations"),
                                                    "spec.podMetadata.annotations"))

    gpu = None
    if spec.get("gpu") is not None:
        g = _obj(spec.get("gpu"), "spec.gpu")
        count = _int(g.get("count"), "spec.gpu.count", 1, 16)
        products = tuple(_str(p, f"spec.gpu.products[{i}]", required=True) or ""
                         for i, p in enumerate(_list(g.get("products"), "spec.gpu.products")))
        mig = _str(g.get("migProfile"), "spec.gpu.migProfile")
        if mig is not None and not _MIG.match(mig):
            raise SpecError("spec.gpu.migProfile", f"{mig!r} is not a MIG profile such as 1g.10gb")
        min_memory = _quantity(g.get("minMemory"), "spec.gpu.minMemory")
        if mig is not None and min_memory is not None:
            raise SpecError("spec.gpu.minMemory", "does not apply to a MIG profile")
        gpu = GPUSpec(count=count or 1, products=products, min_memory=min_memory,
                      mig_profile=mig)

    replicas = _int(spec.get("replicas"), "spec.replicas", 0, 1000)
    autoscaling = None
    if spec.get("autoscaling") is not None:
        if replicas is not None:
            raise SpecError("spec.autoscaling", "set either spec.replicas or spec.autoscaling, "
                            "not both")
        a = _obj(spec.get("autoscaling"), "spec.autoscaling")
        hi = _int(a.get("maxReplicas"), "spec.autoscaling.maxReplicas", 1, 1000)
        if hi is None:
            raise SpecError("spec.autoscaling.maxReplicas", "is required")
        lo = _int(a.get("minReplicas"), "spec.autoscaling.minReplicas", 1, 1000) or 1
        if lo > hi:
            raise SpecError("spec.autoscaling", f"minReplicas ({lo}) exceeds maxReplicas ({hi})")
        target = _int(a.get("targetCPUUtilization"), "spec.autoscaling.targetCPUUtilization",
                      1, 100) or 80
        autoscaling = Autoscaling(max_replicas=hi, min_replicas=lo,
                                  target_cpu_utilization=target)
        if resources.cpu is None:
            raise SpecError("spec.autoscaling", "scales on CPU utilization, which needs a CPU "
                            "request: set spec.runtime.resources.cpu")

    s = _obj(spec.get("scheduling"), "spec.scheduling")
    tolerations = []
    for i, t in enumerate(_list(s.get("tolerations"), "spec.scheduling.tolerations")):
        path = f"spec.scheduling.tolerations[{i}]"
        t_obj = _obj(t, path)
        tolerations.append(Toleration(
            key=_str(t_obj.get("key"), f"{path}.key"),
            operator=_str(t_obj.get("operator"), f"{path}.operator"),
            value=_str(t_obj.get("value"), f"{path}.value"),
            effect=_str(t_obj.get("effect"), f"{path}.effect"),
            toleration_seconds=_int(t_obj.get("tolerationSeconds"), f"{path}.tolerationSeconds",
                                    0, 2**62)))
    spreads = tuple(_obj(c, f"spec.scheduling.topologySpreadConstraints[{i}]")
                    for i, c in enumerate(_list(s.get("topologySpreadConstraints"),
                                                "spec.scheduling.topologySpreadConstraints")))
    allow = s.get("allowGPUNodes", False)
    if not isinstance(allow, bool):
        raise SpecError("spec.scheduling.allowGPUNodes", f"must be true or false, got {allow!r}")
    scheduling = Scheduling(
        node_selector=_str_map(s.get("nodeSelector"), "spec.scheduling.nodeSelector"),
        tolerations=tuple(tolerations),
        affinity=dict(_obj(s.get("affinity"), "spec.scheduling.affinity")),
        priority_class_name=_str(s.get("priorityClassName"), "spec.scheduling.priorityClassName"),
        topology_spread_constraints=spreads,
        allow_gpu_nodes=allow)

    sv = _obj(spec.get("serving"), "spec.serving")
    port = _int(sv.get("port"), "spec.serving.port", 1024, 65535) or 8080
    protocol = sv.get("protocol", "v2-rest")
    if protocol != "v2-rest":
        raise SpecError("spec.serving.protocol", f"{protocol!r} is not served; use v2-rest")
    gateway = None
    if sv.get("gateway") is not None:
        gateway = parse_gateway(_obj(sv.get("gateway"), "spec.serving.gateway"),
                                "spec.serving.gateway")
    try:
        auth = parse_auth(sv.get("auth"))
        tls = parse_tls(sv.get("tls"))
        network_policy = parse_network_policy(sv.get("networkPolicy"))
    except SecuritySpecError as err:
        raise SpecError(err.path, err.message) from err

    ro = _obj(spec.get("rollout"), "spec.rollout")
    surge = _int(ro.get("maxSurge"), "spec.rollout.maxSurge", 0, 1000)
    unavailable = _int(ro.get("maxUnavailable"), "spec.rollout.maxUnavailable", 0, 1000)
    surge = 1 if surge is None else surge
    unavailable = 1 if unavailable is None else unavailable
    if surge == 0 and unavailable == 0:
        raise SpecError("spec.rollout", "maxSurge and maxUnavailable cannot both be 0: a rollout "
                        "could neither add nor replace a replica")
    downtime = ro.get("allowDowntime", False)
    if not isinstance(downtime, bool):
        raise SpecError("spec.rollout.allowDowntime", f"must be true or false, got {downtime!r}")
    deadline = _int(ro.get("progressDeadlineSeconds"), "spec.rollout.progressDeadlineSeconds",
                    5, 86400)
    deadline = 600 if deadline is None else deadline
    settle = _int(ro.get("settleSeconds"), "spec.rollout.settleSeconds", 0, 300)
    settle = 5 if settle is None else settle
    if settle > deadline:
        raise SpecError("spec.rollout.settleSeconds", f"({settle}) must not exceed "
                        f"spec.rollout.progressDeadlineSeconds ({deadline}): a revision could "
                        "never settle before it is rolled back")
    canary = None
    if ro.get("canary") is not None:
        c = _obj(ro.get("canary"), "spec.rollout.canary")
        steps = []
        last = 0
        for i, st in enumerate(_list(c.get("steps"), "spec.rollout.canary.steps")):
            path = f"spec.rollout.canary.steps[{i}]"
            st_obj = _obj(st, path)
            weight = _int(st_obj.get("weight"), f"{path}.weight", 1, 100)
            if weight is None:
                raise SpecError(f"{path}.weight", "is required")
            if weight <= last:
                raise SpecError(f"{path}.weight", f"weights must increase: {weight} after {last}")
            last = weight
            steps.append(CanaryStep(weight=weight, pause_seconds=_int(
                st_obj.get("pauseSeconds"), f"{path}.pauseSeconds", 0, 86400)))
        if not steps:
            raise SpecError("spec.rollout.canary.steps", "needs at least one step")
        flags = {}
        for flag in ("paused", "abort"):
            value = c.get(flag, False)
            if not isinstance(value, bool):
                raise SpecError(f"spec.rollout.canary.{flag}", f"must be true or false, got "
                                f"{value!r}")
            flags[flag] = value
        if autoscaling is not None:
            raise SpecError("spec.rollout.canary", "does not work with spec.autoscaling (the "
                            "autoscaler scales only the stable Deployment)")
        canary = CanarySpec(steps=tuple(steps), paused=flags["paused"], abort=flags["abort"],
                            promote=_int(c.get("promote"), "spec.rollout.canary.promote", 1,
                                         2**31 - 1))
    rollout = RolloutSpec(max_surge=surge, max_unavailable=unavailable, allow_downtime=downtime,
                          progress_deadline_seconds=deadline, settle_seconds=settle,
                          canary=canary)

    return ModelDeploymentSpec(model=model, runtime=runtime, pod_metadata=pod_metadata, gpu=gpu,
                               replicas=replicas, autoscaling=autoscaling, scheduling=scheduling,
                               serving=Serving(port=port, gateway=gateway, auth=auth, tls=tls,
                                               network_policy=network_policy),
                               rollout=rollout)


def parse_gateway(g: Mapping[str, Any], path: str) -> GatewayRef:
    """{name, namespace?, hostnames?} -> GatewayRef, or SpecError naming the field."""
    gw_name = _str(g.get("name"), f"{path}.name", required=True) or ""
    if len(gw_name) > 253 or not _SUBDOMAIN.match(gw_name):
        raise SpecError(f"{path}.name", f"{gw_name!r} is not a valid Gateway name")
    gw_ns = _str(g.get("namespace"), f"{path}.namespace")
    if gw_ns is not None and (len(gw_ns) > 63 or not _DNS1123.match(gw_ns)):
        raise SpecError(f"{path}.namespace", f"{gw_ns!r} is not a valid namespace name")
    hostnames = []
    for i, h in enumerate(_list(g.get("hostnames"), f"{path}.hostnames")):
        host = _str(h, f"{path}.hostnames[{i}]", required=True) or ""
        if len(host) > 253 or not _HOSTNAME.match(host):
            raise SpecError(f"{path}.hostnames[{i}]", f"{host!r} is not a hostname such as "
                            "model.example.com or *.example.com")
        hostnames.append(host)
    if len(hostnames) > 16:
        raise SpecError(f"{path}.hostnames", "at most 16 hostnames")
    return GatewayRef(name=gw_name, namespace=gw_ns, hostnames=tuple(hostnames))


def valid_name(name: str) -> bool:
    """Whether a ModelDeployment name can name its Service (DNS-1035 label)."""
    return bool(_DNS1035.match(name)) and len(name) <= 63


def to_json(obj: Any) -> Any:
    """A typed model back to plain JSON with the API's field names (None fields left out)."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if value is None:
                continue
            out[f.metadata["json"]] = to_json(value)
        return out
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_json(v) for v in obj]
    return obj
