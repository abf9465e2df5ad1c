"""PURE: `spec.model.autoCache` — the model asks for a ModelCache of its own URI instead of
naming one (`spec.model.cache`).

The operator finds a ModelCache in the namespace with the same source (URI, revision, patterns,
Secret) and storage, or creates one from these fields (modelcache/implicit.py). `storage`,
`sizeLimit` and `download` are the ModelCache's own fields, parsed by the ModelCache's parser, so
the two APIs cannot drift apart.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# The module, not its names: modelcache.api imports this package's fields.py, so whichever of
# the two is imported first finds the other half-initialized; its names are used at call time.
from ..modelcache import api as cache_api
from ..quantity import parse_quantity
from .fields import SpecError, array, json_name, obj, quantity, string

SCHEMES = ("hf", "s3", "http", "https")
# The ModelCache's source.uri pattern (crds/serving.kubemaas.io_modelcaches.yaml).
CACHE_SOURCE = re.compile(r"^(hf://[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*|"
                          r"s3://[a-z0-9][a-z0-9.-]{1,62}(/.*)?|https?://[^/]+/.+)$")


@dataclass(frozen=True)
class AutoCache:
    storage: cache_api.Storage = field(metadata=json_name("storage"))
    revision: str | None = field(metadata=json_name("revision"), default=None)
    include: tuple[str, ...] = field(metadata=json_name("include"), default=())
    exclude: tuple[str, ...] = field(metadata=json_name("exclude"), default=())
    size_limit: int | None = field(metadata=json_name("sizeLimit"), default=None)  # bytes
    download: cache_api.Download = field(metadata=json_name("download"),
                                         default_factory=lambda: cache_api.Download())


def _patterns(value: Any, path: str) -> tuple[str, ...]:
    return tuple(string(item, f"{path}[{i}]", required=True) or ""
                 for i, item in enumerate(array(value, path)))


def _prefixed(err: SpecError, prefix: str) -> SpecError:
    """The ModelCache parser names `spec.storage…`; say `spec.model.autoCache.storage…`."""
    return SpecError(err.path.replace("spec.", prefix, 1), err.message)


def parse_auto_cache(raw: Any, uri: str | None, cache: str | None) -> AutoCache | None:
    """`spec.model.autoCache` -> AutoCache (None when absent), or SpecError naming the field.
    `uri` and `cache` are the model's: the cache is made from the URI, so it must be one a
    ModelCache can download, and a model cannot both name a cache and ask for one."""
    if raw is None:
        return None
    path = "spec.model.autoCache"
    a = obj(raw, path)
    if cache is not None:
        raise SpecError("spec.model", "name a ModelCache (cache) or ask for one (autoCache), "
                        "not both")
    if uri is None:
        raise SpecError("spec.model.uri", "is required with autoCache: the cache downloads it")
    if uri.split("://", 1)[0] not in SCHEMES:
        raise SpecError(path, f"caches hf://, s3:// and http(s):// models; {uri!r} is already "
                        "local to the pod (pvc:// or file://): drop autoCache")
    if not CACHE_SOURCE.match(uri):
        raise SpecError(path, f"{uri!r} is not a source a ModelCache downloads: hf://ORG/NAME, "
                        "s3://BUCKET/PREFIX (a bucket name of 2 to 63 characters) or "
                        "http(s)://HOST/PATH")
    revision = string(a.get("revision"), f"{path}.revision")
    if uri.startswith("hf://") and not revision:
        raise SpecError(f"{path}.revision", "is required for hf:// models: pin the commit (or "
                        "tag) so that every node gets the same files")
    if revision is not None and not uri.startswith("hf://"):
        raise SpecError(f"{path}.revision", "only applies to hf:// models")
    if a.get("storage") is None:
        raise SpecError(f"{path}.storage", "is required: type node (a directory on each node "
                        "that runs the model) or pvc (one shared volume)")
    try:
        storage = cache_api.parse_storage(a.get("storage"))
        download = cache_api.parse_download(a.get("download"))
    except SpecError as err:
        raise _prefixed(err, f"{path}.") from err
    limit = quantity(a.get("sizeLimit"), f"{path}.sizeLimit")
    return AutoCache(storage=storage, revision=revision,
                     include=_patterns(a.get("include"), f"{path}.include"),
                     exclude=_patterns(a.get("exclude"), f"{path}.exclude"),
                     size_limit=None if limit is None else int(parse_quantity(limit)),
                     download=download)
