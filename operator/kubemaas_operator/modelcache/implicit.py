"""PURE: the model cache a ModelDeployment asks for (`spec.model.autoCache`) instead of naming.

The cache is found by its key — what decides the files and where they live: the source (URI,
revision, include and exclude patterns, Secret) and the storage. In the model's namespace:
1. the cache the operator created for that key (its name is the key's: `SLUG-HASH`), else
2. another cache the operator created with that key (the annotation), else
3. a ModelCache someone created with the same source and storage (used, never owned: the
   operator adds no owner reference and never deletes it — what KServe's LocalModelCache does
   for an InferenceService whose storageUri it matches), else
4. a new ModelCache, created from the model's URI and autoCache fields.

Lifetime: a cache the operator created carries one owner reference per ModelDeployment that
asked for it (no controller, no blockOwnerDeletion), so the Kubernetes garbage collector deletes
it — and with it, through the ModelCache's finalizer and `retention: Delete`, its files — once
the last of them is deleted. A model that stops asking (another cache, another URI, no autoCache)
takes its reference away; the operator deletes a cache whose last reference it took away.

The model is then reconciled exactly as if it named the cache: `effective_spec` rewrites its
spec to `model.cache: NAME` (no uri, no autoCache, no credentials: those are the download pod's).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..api.fields import SpecError
from ..api.model import ModelSource, parse_model
from .api import API_VERSION, KIND, Source, Storage, parse_cache_spec
from .mount import CacheMount
from .render import MANAGED_BY

MD_API_VERSION, MD_KIND = "serving.kubemaas.io/v1alpha1", "ModelDeployment"
IMPLICIT_LABEL = "serving.kubemaas.io/implicit-cache"  # "true": the operator created it
KEY_ANNOTATION = "serving.kubemaas.io/cache-key"  # cache_key() of what it holds
CREATED_FOR_ANNOTATION = "serving.kubemaas.io/created-for"  # the ModelDeployment that asked first


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment that asks."""

    name: str
    uid: str


@dataclass(frozen=True)
class Plan:
    """What one ModelDeployment's autoCache needs done, and which cache it then uses."""

    name: str = ""  # the cache the model uses ("" when the model asks for none)
    implicit: bool = True  # the operator created (or creates) it; False: someone's cache, used
    create: dict[str, Any] | None = None  # the ModelCache to create
    adopt: bool = False  # add the model's owner reference to the existing cache
    release: tuple[str, ...] = ()  # caches the operator created that this model no longer uses
    uri: str = ""
    key: str = ""  # cache_key() of what the model asks for


def cache_key(source: Source, storage: Storage) -> str:
    """sha256 of the source and the storage, independent of key order and pattern order."""
    text = json.dumps({"uri": source.uri, "revision": source.revision,
                       "secretName": source.secret_name, "include": sorted(source.include),
                       "exclude": sorted(source.exclude), "storage": dataclasses.asdict(storage)},
                      sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()


def model_source(model: ModelSource) -> Source:
    auto = model.auto_cache
    assert auto is not None
    secret = model.credentials_secret_ref.name if model.credentials_secret_ref else None
    return Source(uri=model.uri, revision=auto.revision, secret_name=secret,
                  include=auto.include, exclude=auto.exclude)


def model_key(model: ModelSource) -> str:
    assert model.auto_cache is not None
    return cache_key(model_source(model), model.auto_cache.storage)


def cache_key_of(body: Mapping[str, Any]) -> str | None:
    """The key of an existing ModelCache: from its spec (None when it does not parse)."""
    try:
        spec = parse_cache_spec(body.get("spec"))
    except SpecError:
        return None
    return cache_key(spec.source, spec.storage)


def cache_name(uri: str, key: str) -> str:
    """`SLUG-HASH`: the last part of the URI that has letters (`tiny-llama`, `model-onnx`),
    at most 40 characters, and 10 hex digits of the key."""
    parts = [p for p in re.split(r"[/:]", uri.split("://", 1)[-1]) if p]
    slug = re.sub(r"[^a-z0-9]+", "-", (parts[-1] if len(parts) > 1 else "model").lower())
    slug = slug.strip("-")[:40].strip("-") or "model"
    return f"{slug}-{key[:10]}"


def owner_ref(owner: Owner) -> dict[str, Any]:
    return {"apiVersion": MD_API_VERSION, "kind": MD_KIND, "name": owner.name, "uid": owner.uid}


def owners(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(r) for r in (body.get("metadata") or {}).get("ownerReferences") or []]


def owned_by(body: Mapping[str, Any], uid: str) -> bool:
    return any(r.get("uid") == uid for r in owners(body))


def is_implicit(body: Mapping[str, Any]) -> bool:
    return ((body.get("metadata") or {}).get("labels") or {}).get(IMPLICIT_LABEL) == "true"


def desired_cache(namespace: str, owner: Owner, model: ModelSource,
                  raw_auto: Mapping[str, Any]) -> dict[str, Any]:
    """The ModelCache the operator creates for the model: its source from the model, storage,
    sizeLimit and download as the model's autoCache wrote them."""
    key = model_key(model)
    src = model_source(model)
    source: dict[str, Any] = {"uri": src.uri}
    for field, value in (("revision", src.revision), ("secretName", src.secret_name),
                         ("include", list(src.include)), ("exclude", list(src.exclude))):
        if value:
            source[field] = value
    spec: dict[str, Any] = {"source": source, "storage": copy.deepcopy(dict(raw_auto["storage"]))}
    for field in ("sizeLimit", "download"):
        if raw_auto.get(field) is not None:
            spec[field] = copy.deepcopy(raw_auto[field])
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {
        "name": cache_name(src.uri, key), "namespace": namespace,
        "labels": {IMPLICIT_LABEL: "true", MANAGED_BY: "kubemaas"},
        "annotations": {KEY_ANNOTATION: key, CREATED_FOR_ANNOTATION: owner.name},
        "ownerReferences": [owner_ref(owner)]}, "spec": spec}


def _chosen(key: str, wanted: str, caches: Mapping[str, Mapping[str, Any]]) -> str | None:
    if wanted in caches and cache_key_of(caches[wanted]) == key:
        return wanted
    matching = sorted(n for n, body in caches.items() if cache_key_of(body) == key
                      and not (body.get("metadata") or {}).get("deletionTimestamp"))
    return next((n for n in matching if is_implicit(caches[n])), None) or next(iter(matching),
                                                                               None)


def plan(namespace: str, owner: Owner, model: ModelSource | None,
         raw_auto: Mapping[str, Any] | None,
         caches: Mapping[str, Mapping[str, Any]], named: str | None = None) -> Plan:
    """`caches`: the namespace's ModelCaches by name. `model` None (or without autoCache): the
    model asks for no cache; what it owns is released, except the cache it names in
    spec.model.cache (`named`): a model that swaps its autoCache for the name of the cache
    made for it still uses it (its deletion was held InUse and the model Degraded,
    CacheDeleting); it keeps its reference."""
    if model is None or model.auto_cache is None or raw_auto is None:
        return Plan(release=tuple(sorted(n for n, b in caches.items()
                                         if n != named and is_implicit(b)
                                         and owned_by(b, owner.uid))))
    key = model_key(model)
    wanted = cache_name(model.uri, key)
    name = _chosen(key, wanted, caches)
    release = tuple(sorted(n for n, b in caches.items()
                           if n != (name or wanted) and is_implicit(b) and owned_by(b, owner.uid)))
    if name is None:
        return Plan(name=wanted, create=desired_cache(namespace, owner, model, raw_auto),
                    release=release, uri=model.uri, key=key)
    body = caches[name]
    implicit = is_implicit(body)
    return Plan(name=name, implicit=implicit, adopt=implicit and not owned_by(body, owner.uid),
                release=release, uri=model.uri, key=key)


def adoptable(body: Mapping[str, Any], key: str) -> bool:
    """May a model that asks for `key` own this cache? Only one the operator created (the
    label) that holds those files: someone's cache that has the name is never taken over (its
    owner reference would let the garbage collector delete it with the model)."""
    return is_implicit(body) and cache_key_of(body) == key


def name_taken(name: str, body: Mapping[str, Any]) -> str:
    """The model's status message when someone's ModelCache has the name autoCache wants."""
    uri = ((body.get("spec") or {}).get("source") or {}).get("uri")
    made = "the operator made it for other files" if is_implicit(body) else "someone created it"
    return (f"ModelCache {name} already exists and does not hold this model's files ({made}: "
            f"source {uri!r}); it is left alone. Rename or delete it, or name a cache in "
            "spec.model.cache")


def effective_spec(raw_spec: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The model's spec as if it named the cache: `model.cache: NAME` replaces the uri, the
    autoCache and the credentials (the download pod's, not the model pods')."""
    spec = copy.deepcopy(dict(raw_spec))
    model = dict(spec.get("model") or {})
    for field in ("uri", "autoCache", "credentialsSecretRef"):
        model.pop(field, None)
    model["cache"] = name
    spec["model"] = model
    return spec


def parse_asking(raw_spec: Mapping[str, Any]) -> ModelSource | None:
    """The model of a spec that asks for a cache; None when it asks for none or does not parse
    (the model's reconcile then reports the mistake)."""
    model = raw_spec.get("model") if isinstance(raw_spec, Mapping) else None
    if not isinstance(model, Mapping) or model.get("autoCache") is None:
        return None
    try:
        parsed = parse_model(model)
    except SpecError:
        return None
    return parsed if parsed.auto_cache is not None else None


def asks_for(raw_spec: Mapping[str, Any], cache: Mapping[str, Any]) -> bool:
    """Does a ModelDeployment with this spec use this ModelCache (same key)?"""
    model = parse_asking(raw_spec)
    return model is not None and cache_key_of(cache) == model_key(model)


def creating_mount(name: str, uri: str) -> CacheMount:
    """What the model waits for while the cache it asked for is not in the operator's view yet."""
    return CacheMount(name=name, ready=False, reason="CacheNotReady", message=(
        f"ModelCache {name} is being created from {uri} for this model (autoCache); the model "
        "starts once its files are Ready"))


def released(body: Mapping[str, Any], uid: str) -> list[dict[str, Any]]:
    """The cache's owner references without the model's."""
    return [r for r in owners(body) if r.get("uid") != uid]
