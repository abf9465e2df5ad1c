"""kopf side of the optimization done in a ModelCache (optimize.py): the option sets the models
on a cache ask for (the models handlers.py's ``_models_using`` finds, from the operator's
ModelDeployment index), and a ModelDeployment event that queues its cache when the cache or the
option key it asks for changes (a new model, other options, a model deleted)."""

from __future__ import annotations

import json
from typing import Any

import kopf

from ..api import GROUP, PLURAL, VERSION, SpecError, parse_spec
from ..render.optimization import options_key
from .api import DEFAULT_IMAGE
from .optimize import Want, wants

_seen: dict[tuple[str, str], tuple[str, str] | None] = {}  # model -> (cache, key)


def cache_wants(namespace: str, name: str, body: dict[str, Any]) -> list[Want]:
    """The option sets of the ModelDeployments on cache ``name`` (those handlers.py's
    ``_models_using`` finds) that ask for optimize."""
    from .. import handlers
    from .handlers import _models_using

    md_index = handlers._runtime().indexes["md_index"]
    models = []
    for key in _models_using(namespace, name, body):
        packed = next(iter(md_index.get(key) or []), None)
        raw = (json.loads(packed).get("spec") or {}) if packed else {}
        if not (raw.get("model") or {}).get("optimize"):
            continue
        try:
            models.append((str(key[1]), parse_spec(raw)))
        except (SpecError, ValueError):  # the model's own status says why
            continue
    image = ((body.get("spec") or {}).get("download") or {}).get("image") or DEFAULT_IMAGE
    return wants(models, str(image))


def _wanted(spec: dict[str, Any]) -> tuple[str, str] | None:
    """(the cache it names, "" for one the operator picks; its option key), or None."""
    model = spec.get("model") or {}
    if not model.get("optimize") or not (model.get("cache") or model.get("autoCache")):
        return None
    try:
        return str(model.get("cache") or ""), options_key(parse_spec(spec))
    except (SpecError, ValueError):
        return None


@kopf.on.event(GROUP, VERSION, PLURAL)
async def model_optimize_event(type: str, namespace: str | None, name: str,
                               body: kopf.Body, **_: Any) -> None:
    key = (namespace or "", name)
    now = None if type == "DELETED" else _wanted(dict(body.get("spec") or {}))
    before = _seen.get(key)
    if now == before:
        return
    _seen[key] = now
    from .handlers import _queue, _state

    caches = {w[0] for w in (before, now) if w is not None}
    if "" in caches:  # a cache the operator picked for it: look at the namespace's caches
        caches = {k[1] for k in list((_state.get("cache_index") or {}).keys())
                  if k[0] == key[0]}
    for cache in caches:
        _queue().enqueue((key[0], cache), 0.5)
