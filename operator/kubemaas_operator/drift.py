"""PURE: has a child drifted from what the operator wants?

The desired manifest must be contained in the observed object: the API server adds defaults
(a superset is fine) and writes quantities in canonical form (1000m == 1). Lists of named things
are matched by name (or port, or mount path), other lists index by index. `drift()` returns a
description of the first difference, or None.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .quantity import same_quantity

_LIST_KEYS = ("name", "containerPort", "mountPath", "port")


def _key_of(items: Sequence[Any]) -> str | None:
    for key in _LIST_KEYS:
        if items and all(isinstance(i, Mapping) and key in i for i in items):
            return key
    return None


def _leaf_equal(want: Any, have: Any) -> bool:
    if want == have:
        return True
    if isinstance(want, bool) or isinstance(have, bool):
        return False
    if isinstance(want, int | float) and isinstance(have, int | float):
        return float(want) == float(have)
    return same_quantity(want, have)


def drift(want: Any, have: Any, path: str = "") -> str | None:
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return f"{path or '.'}: expected an object"
        for key, value in want.items():
            if key not in have:
                # the API server omits empty values (Go's omitempty): an env var rendered with
                # value "" comes back without "value", which is the same variable
                if value in ({}, [], None, ""):
                    continue
                return f"{path}.{key}: missing"
            found = drift(value, have[key], f"{path}.{key}")
            if found:
                return found
        return None
    if isinstance(want, list):
        if not isinstance(have, list):
            return f"{path}: expected a list"
        key = _key_of(want)
        if key is not None and _key_of(have) == key:
            by_key = {item[key]: item for item in have}
            for item in want:
                if item[key] not in by_key:
                    return f"{path}[{key}={item[key]}]: missing"
                found = drift(item, by_key[item[key]], f"{path}[{key}={item[key]}]")
                if found:
                    return found
            return None
        if len(want) != len(have):
            return f"{path}: {len(have)} items, expected {len(want)}"
        for i, (w, h) in enumerate(zip(want, have, strict=True)):
            found = drift(w, h, f"{path}[{i}]")
            if found:
                return found
        return None
    if not _leaf_equal(want, have):
        return f"{path}: {have!r}, expected {want!r}"
    return None
