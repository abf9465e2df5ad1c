"""PURE: `spec.model` — where the model comes from, its format, and what to do to it before it
serves (`spec.model.optimize`, optimize.py); for a language model (format hf) its shape
(`spec.model.shape`, llm.py), which GPU sizing reads."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from .autocache import AutoCache, parse_auto_cache
from .fields import SpecError, json_name, obj, string
from .llm import ModelShape, parse_shape
from .optimize import OptimizeSpec, parse_optimize

FORMATS = ("onnx", "torchscript", "torch-export", "keras", "tf-savedmodel", "hf")

_URI = re.compile(
    r"^(pvc://[a-z0-9]([-a-z0-9.]*[a-z0-9])?/.+|file:///.+|https?://[^/]+/.*|s3://[^/]+/.+|"
    r"hf://[^/]+/.+)$"
)
_CACHE = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
CACHE_URI = "file:///var/lib/kubemaas/model-cache"  # = modelcache.mount.MOUNT_URI
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SERVED_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class SecretRef:
    name: str = field(metadata=json_name("name"))


@dataclass(frozen=True)
class ModelSource:
    # absent with `cache`: then the directory where the cache is mounted
    uri: str = field(metadata=json_name("uri"), default=CACHE_URI)
    format: str = field(metadata=json_name("format"), kw_only=True)
    sha256: str | None = field(metadata=json_name("sha256"), default=None)
    name: str | None = field(metadata=json_name("name"), default=None)
    version: str | None = field(metadata=json_name("version"), default=None)
    credentials_secret_ref: SecretRef | None = field(metadata=json_name("credentialsSecretRef"),
                                                     default=None)
    optimize: OptimizeSpec | None = field(metadata=json_name("optimize"), default=None)
    cache: str | None = field(metadata=json_name("cache"), default=None)  # a ModelCache's name
    # the model asks for a ModelCache of its uri (api/autocache.py, modelcache/implicit.py)
    auto_cache: AutoCache | None = field(metadata=json_name("autoCache"), default=None)
    shape: ModelShape | None = field(metadata=json_name("shape"), default=None)
    signature: str | None = field(metadata=json_name("signature"), default=None)  # SavedModel

    @property
    def scheme(self) -> str:
        return self.uri.split("://", 1)[0]


def _credentials(raw: Any, uri: str, auto: bool) -> SecretRef | None:
    if raw is None:
        return None
    name = string(obj(raw, "spec.model.credentialsSecretRef").get("name"),
                  "spec.model.credentialsSecretRef.name", required=True)
    if not (uri.startswith("s3://") or (auto and uri.startswith("hf://"))):
        raise SpecError("spec.model.credentialsSecretRef", "is only used for s3:// URIs (and "
                        "for hf:// with autoCache: the download pod's token)")
    return SecretRef(name=name or "")


def parse_model(raw: Any) -> ModelSource:
    """`spec.model` -> ModelSource, or SpecError naming the field."""
    m = obj(raw, "spec.model")
    if not m:
        raise SpecError("spec.model", "is required")
    cache = string(m.get("cache"), "spec.model.cache")
    if cache is not None and not _CACHE.match(cache):
        raise SpecError("spec.model.cache", f"{cache!r} is not a ModelCache name")
    if cache is not None and len(cache) > 63:  # a ModelCache with it could never exist
        raise SpecError("spec.model.cache", f"is {len(cache)} characters: a ModelCache name is "
                        "at most 63 (the value of the label its pods are found by)")
    if cache is not None and m.get("uri") is not None:
        raise SpecError("spec.model", "set either uri or cache, not both")
    # With a cache the runtime reads the mounted directory (modelcache/mount.py).
    uri = CACHE_URI if cache is not None else (
        string(m.get("uri"), "spec.model.uri", required=True) or "")
    if not _URI.match(uri):
        raise SpecError("spec.model.uri", f"{uri!r} is not pvc://CLAIM/PATH, file:///PATH, "
                        "http(s)://HOST/PATH, s3://BUCKET/KEY or (with autoCache) hf://ORG/NAME")
    auto = parse_auto_cache(m.get("autoCache"), None if cache is not None else uri, cache)
    if uri.startswith("hf://") and auto is None:
        raise SpecError("spec.model.uri", "an hf:// model is downloaded by a model cache: add "
                        "spec.model.autoCache, or name a ModelCache in spec.model.cache")
    fmt = string(m.get("format"), "spec.model.format", required=True)
    if fmt not in FORMATS:
        raise SpecError("spec.model.format", f"{fmt!r} is not one of {', '.join(FORMATS)}")
    sha = string(m.get("sha256"), "spec.model.sha256")
    if sha is not None and not _SHA256.match(sha):
        raise SpecError("spec.model.sha256", "must be 64 lower-case hex digits")
    served = string(m.get("name"), "spec.model.name")
    if served is not None and not _SERVED_NAME.match(served):
        raise SpecError("spec.model.name", f"{served!r} is not a valid model name")
    version = string(m.get("version"), "spec.model.version")
    if version is not None and not _SERVED_NAME.match(version):
        raise SpecError("spec.model.version", f"{version!r} is not a valid model version")
    if sha is not None and fmt == "hf":
        raise SpecError("spec.model.sha256", "is the digest of one file: a format hf model is a "
                        "directory")
    signature = string(m.get("signature"), "spec.model.signature")
    if signature is not None and not _SERVED_NAME.match(signature):
        raise SpecError("spec.model.signature", f"{signature!r} is not a valid signature name")
    if signature is not None and fmt != "tf-savedmodel":
        raise SpecError("spec.model.signature", "names a TensorFlow SavedModel's signature: it "
                        "needs format tf-savedmodel")
    cred = _credentials(m.get("credentialsSecretRef"), uri, auto is not None)
    shape = parse_shape(m.get("shape"))
    if shape is not None and fmt != "hf":
        raise SpecError("spec.model.shape", "describes a language model: it needs format hf")
    return ModelSource(uri=uri, format=fmt, sha256=sha, name=served, version=version,
                       credentials_secret_ref=cred,
                       optimize=parse_optimize(m.get("optimize"), fmt, uri), cache=cache,
                       shape=shape, auto_cache=auto, signature=signature)
