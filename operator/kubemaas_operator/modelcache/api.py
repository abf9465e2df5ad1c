"""PURE: `ModelCache.spec` -> CacheSpec, or SpecError naming the field (the API server's schema
and CEL rules refuse most mistakes first; this is the operator's own check)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..api.fields import SpecError, array, integer, json_name, obj, quantity, str_map, string
from ..quantity import parse_quantity

GROUP, VERSION, PLURAL, KIND = "serving.kubemaas.io", "v1alpha1", "modelcaches", "ModelCache"
API_VERSION = f"{GROUP}/{VERSION}"
DEFAULT_IMAGE = "ghcr.io/kubemaas/runtime:0.1.0"
DEFAULT_NODE_PATH = "/var/lib/kubemaas/model-cache"
SCHEMES = ("hf", "s3", "http", "https")

_URI = re.compile(r"^(hf://[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*|"
                  r"s3://[a-z0-9][a-z0-9.-]{1,62}(/.*)?|https?://[^/]+/.+)$")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SUBPATH = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


@dataclass(frozen=True)
class Source:
    uri: str = field(metadata=json_name("uri"))
    revision: str | None = field(metadata=json_name("revision"), default=None)
    secret_name: str | None = field(metadata=json_name("secretName"), default=None)
    include: tuple[str, ...] = field(metadata=json_name("include"), default=())
    exclude: tuple[str, ...] = field(metadata=json_name("exclude"), default=())

    @property
    def scheme(self) -> str:
        return self.uri.split("://", 1)[0]


@dataclass(frozen=True)
class PVCStorage:
    claim_name: str | None = field(metadata=json_name("claimName"), default=None)
    sub_path: str | None = field(metadata=json_name("subPath"), default=None)
    storage_class_name: str | None = field(metadata=json_name("storageClassName"), default=None)
    size: str | None = field(metadata=json_name("size"), default=None)


@dataclass(frozen=True)
class NodeStorage:
    path: str = field(metadata=json_name("path"), default=DEFAULT_NODE_PATH)
    node_selector: dict[str, str] = field(metadata=json_name("nodeSelector"),
                                          default_factory=dict)
    nodes: tuple[str, ...] = field(metadata=json_name("nodes"), default=())
    budget: int | None = field(metadata=json_name("budget"), default=None)  # bytes


@dataclass(frozen=True)
class Storage:
    type: str = field(metadata=json_name("type"))
    pvc: PVCStorage | None = field(metadata=json_name("pvc"), default=None)
    node: NodeStorage | None = field(metadata=json_name("node"), default=None)


@dataclass(frozen=True)
class EnvVar:
    name: str = field(metadata=json_name("name"))
    value: str = field(metadata=json_name("value"))


@dataclass(frozen=True)
class Resources:
    cpu: str | None = field(metadata=json_name("cpu"), default=None)
    memory: str | None = field(metadata=json_name("memory"), default=None)


@dataclass(frozen=True)
class Download:
    image: str = field(metadata=json_name("image"), default=DEFAULT_IMAGE)
    image_pull_policy: str | None = field(metadata=json_name("imagePullPolicy"), default=None)
    parallel: int = field(metadata=json_name("parallel"), default=8)
    stall_timeout_seconds: int = field(metadata=json_name("stallTimeoutSeconds"), default=300)
    retries: int = field(metadata=json_name("retries"), default=3)
    progress_interval_seconds: int = field(metadata=json_name("progressIntervalSeconds"),
                                           default=5)
    env: tuple[EnvVar, ...] = field(metadata=json_name("env"), default=())
    resources: Resources = field(metadata=json_name("resources"), default_factory=Resources)
    tolerations: tuple[dict[str, Any], ...] = field(metadata=json_name("tolerations"),
                                                    default=())


@dataclass(frozen=True)
class CacheSpec:
    source: Source = field(metadata=json_name("source"))
    storage: Storage = field(metadata=json_name("storage"))
    size_limit: int | None = field(metadata=json_name("sizeLimit"), default=None)  # bytes
    retention: str = field(metadata=json_name("retention"), default="Delete")
    download: Download = field(metadata=json_name("download"), default_factory=Download)


def _bytes(value: Any, path: str) -> int | None:
    text = quantity(value, path)
    return None if text is None else int(parse_quantity(text))


def _patterns(value: Any, path: str) -> tuple[str, ...]:
    out = []
    for i, item in enumerate(array(value, path)):
        out.append(string(item, f"{path}[{i}]", required=True) or "")
    return tuple(out)


def parse_source(raw: Any) -> Source:
    s = obj(raw, "spec.source")
    uri = string(s.get("uri"), "spec.source.uri", required=True) or ""
    if not _URI.match(uri):
        raise SpecError("spec.source.uri", f"{uri!r} is not hf://ORG/NAME, s3://BUCKET/PREFIX "
                        "or http(s)://HOST/PATH")
    revision = string(s.get("revision"), "spec.source.revision")
    if uri.startswith("hf://") and not revision:
        raise SpecError("spec.source.revision", "is required for hf:// sources: pin the commit "
                        "(or tag) so that every node gets the same files")
    if revision is not None and not uri.startswith("hf://"):
        raise SpecError("spec.source.revision", "only applies to hf:// sources")
    secret = string(s.get("secretName"), "spec.source.secretName")
    if secret is not None and not _NAME.match(secret):
        raise SpecError("spec.source.secretName", f"{secret!r} is not a valid Secret name")
    return Source(uri=uri, revision=revision, secret_name=secret,
                  include=_patterns(s.get("include"), "spec.source.include"),
                  exclude=_patterns(s.get("exclude"), "spec.source.exclude"))


def _parse_pvc(raw: Any) -> PVCStorage:
    p = obj(raw, "spec.storage.pvc")
    claim = string(p.get("claimName"), "spec.storage.pvc.claimName")
    cls = string(p.get("storageClassName"), "spec.storage.pvc.storageClassName")
    size = quantity(p.get("size"), "spec.storage.pvc.size")
    if claim is not None and (cls is not None or size is not None):
        raise SpecError("spec.storage.pvc", "takes either claimName or storageClassName and "
                        "size, not both")
    if claim is None and (cls is None or size is None):
        raise SpecError("spec.storage.pvc", "needs claimName, or storageClassName and size")
    sub = string(p.get("subPath"), "spec.storage.pvc.subPath")
    if sub is not None and (not _SUBPATH.match(sub) or ".." in sub.split("/")):
        raise SpecError("spec.storage.pvc.subPath", f"{sub!r} is not a relative directory")
    return PVCStorage(claim_name=claim, sub_path=sub, storage_class_name=cls, size=size)


def _parse_node(raw: Any) -> NodeStorage:
    n = obj(raw, "spec.storage.node")
    path = string(n.get("path"), "spec.storage.node.path") or DEFAULT_NODE_PATH
    if not path.startswith("/") or ".." in path.split("/") or path.rstrip("/") == "":
        raise SpecError("spec.storage.node.path", f"{path!r} must be an absolute directory "
                        "other than /")
    selector = str_map(n.get("nodeSelector"), "spec.storage.node.nodeSelector")
    nodes = _patterns(n.get("nodes"), "spec.storage.node.nodes")
    if not selector and not nodes:
        raise SpecError("spec.storage.node", "needs nodeSelector and/or nodes: the nodes that "
                        "will run the model")
    return NodeStorage(path=path.rstrip("/"), node_selector=selector, nodes=nodes,
                       budget=_bytes(n.get("budget"), "spec.storage.node.budget"))


def parse_storage(raw: Any) -> Storage:
    s = obj(raw, "spec.storage")
    kind = string(s.get("type"), "spec.storage.type", required=True)
    if kind == "pvc":
        return Storage(type="pvc", pvc=_parse_pvc(s.get("pvc")))
    if kind == "node":
        return Storage(type="node", node=_parse_node(s.get("node")))
    raise SpecError("spec.storage.type", f"{kind!r} is not pvc or node")


def parse_download(raw: Any) -> Download:
    d = obj(raw, "spec.download")
    env = []
    for i, item in enumerate(array(d.get("env"), "spec.download.env")):
        e = obj(item, f"spec.download.env[{i}]")
        name = string(e.get("name"), f"spec.download.env[{i}].name", required=True) or ""
        if not _ENV.match(name):
            raise SpecError(f"spec.download.env[{i}].name", f"{name!r} is not a variable name")
        if name in ("HF_TOKEN",) or name.startswith("KUBEMAAS_"):
            raise SpecError(f"spec.download.env[{i}].name", f"{name} is set by the operator")
        env.append(EnvVar(name=name, value=string(e.get("value"),
                                                  f"spec.download.env[{i}].value") or ""))
    res = obj(d.get("resources"), "spec.download.resources")
    tolerations = tuple(dict(obj(t, f"spec.download.tolerations[{i}]"))
                        for i, t in enumerate(array(d.get("tolerations"),
                                                    "spec.download.tolerations")))
    policy = string(d.get("imagePullPolicy"), "spec.download.imagePullPolicy")
    if policy is not None and policy not in ("Always", "IfNotPresent", "Never"):
        raise SpecError("spec.download.imagePullPolicy", f"{policy!r} is not Always, "
                        "IfNotPresent or Never")

    def _int(key: str, lo: int, hi: int, default: int) -> int:
        got = integer(d.get(key), f"spec.download.{key}", lo, hi)
        return default if got is None else got
    return Download(
        image=string(d.get("image"), "spec.download.image") or DEFAULT_IMAGE,
        image_pull_policy=policy, parallel=_int("parallel", 1, 64, 8),
        stall_timeout_seconds=_int("stallTimeoutSeconds", 5, 86400, 300),
        retries=_int("retries", 0, 20, 3),
        progress_interval_seconds=_int("progressIntervalSeconds", 1, 600, 5),
        env=tuple(env),
        resources=Resources(cpu=quantity(res.get("cpu"), "spec.download.resources.cpu"),
                            memory=quantity(res.get("memory"),
                                            "spec.download.resources.memory")),
        tolerations=tolerations)


def parse_cache_spec(raw: Any) -> CacheSpec:
    s = obj(raw, "spec")
    retention = string(s.get("retention"), "spec.retention") or "Delete"
    if retention not in ("Delete", "Retain"):
        raise SpecError("spec.retention", f"{retention!r} is not Delete or Retain")
    return CacheSpec(source=parse_source(s.get("source")), storage=parse_storage(s.get("storage")),
                     size_limit=_bytes(s.get("sizeLimit"), "spec.sizeLimit"),
                     retention=retention, download=parse_download(s.get("download")))
