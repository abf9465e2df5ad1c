"""PURE: what every part of the ModelDeployment API shares: `SpecError`, the field metadata that
names a dataclass field's JSON name, the checks that turn plain JSON into typed values (each
raising a `SpecError` that names the field), and `to_json`, the way back."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..quantity import QuantityError, parse_quantity

DNS1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


class SpecError(ValueError):
    """The spec cannot be served as written; `path` names the field, the message says why."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


def json_name(name: str) -> dict[str, str]:
    """Field metadata: the field's name in the API (tests/unit/test_api_schema.py reads it)."""
    return {"json": name}


def obj(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(path, f"must be an object, got {type(value).__name__}")
    return value


def string(value: Any, path: str, *, required: bool = False) -> str | None:
    if value is None:
        if required:
            raise SpecError(path, "is required")
        return None
    if not isinstance(value, str):
        raise SpecError(path, f"must be a string, got {value!r}")
    if required and not value:
        raise SpecError(path, "must not be empty")
    return value


def integer(value: Any, path: str, lo: int, hi: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(path, f"must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise SpecError(path, f"must be between {lo} and {hi}, got {value}")
    return value


def boolean(value: Any, path: str) -> bool:
    """`value` as read with its default filled in (`raw.get(name, default)`)."""
    if not isinstance(value, bool):
        raise SpecError(path, f"must be true or false, got {value!r}")
    return value


def array(value: Any, path: str) -> Sequence[Any]:
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise SpecError(path, f"must be a list, got {type(value).__name__}")
    return value


def str_map(value: Any, path: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, item in obj(value, path).items():
        if not isinstance(item, str):
            raise SpecError(f"{path}.{key}", f"must be a string, got {item!r}")
        out[str(key)] = item
    return out


def quantity(value: Any, path: str) -> str | None:
    if value is None:
        return None
    text = str(value)
    try:
        if parse_quantity(text) <= 0:
            raise SpecError(path, f"must be a positive quantity, got {text!r}")
    except QuantityError as err:
        raise SpecError(path, str(err)) from err
    return text


def to_json(value: Any) -> Any:
    """A typed model back to plain JSON with the API's field names (None fields left out)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(value):
            item = getattr(value, f.name)
            if item is None or "json" not in f.metadata:  # None, or derived (not in the API)
                continue
            out[f.metadata["json"]] = to_json(item)
        return out
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value
