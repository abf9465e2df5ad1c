"""kopf side of the optimization done in a ModelCache (optimize.py): the option sets the models
on a cache ask for, from the operator's ModelDeployment index, and a ModelDeployment event that
queues its cache when the cache or the option key it asks for changes (a new model, other
options, a model deleted)."""

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
    """The option sets of the ModelDeployments in ``namespace`` on cache ``name``."""
    from .. import handlers

    md_index = handlers._runtime().indexes["md_index"]
    models = []
    for key in list(md_index.keys()):
        if key[0] != namespace:
            continue
        packed = next(iter(md_index.get(key) or []), None)
        raw = (json.loads(packed).get("spec") or {}) if packed else {}
        model = raw.get("model") or {}
        if model.get("cache") != name or not model.get("optimize"):
            continue
        try:
            models.append((str(key[1]), parse_spec(raw)))
        except (SpecError, ValueError):  # the model's own status says why
            continue
    image = ((body.get("spec") or {}).get("download") or {}).get("image") or DEFAULT_IMAGE
    return wants(models, str(image))


def _wanted(spec: dict[str, Any]) -> tuple[str, str] | None:
    model = spec.get("model") or {}
    if not model.get("cache") or not model.get("optimize"):
        return None
    try:
        return str(model["cache"]), options_key(parse_spec(spec))
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
    from .handlers import _queue

    for wanted in {before, now} - {None}:
        assert wanted is not None
        _queue().enqueue((key[0], wanted[0]), 0.5)
