"""What a runtime setting is (``Option``) and the parsers of its values."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Option:
    """One setting: its flag, its environment variable, its default and its meaning."""

    field: str
    flag: str
    env: str
    default: Any
    parse: Callable[[str], Any]
    help: str
    nargs: str | None = None  # "+": the flag takes several words (joined by a space)
    const: str | None = None  # with nargs "?": the value of the bare flag


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def _optional_str(text: str) -> str | None:
    return text or None


def _optional_int(text: str) -> int | None:
    return int(text) if text.strip() else None


_SIZE_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12,
               "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_bytes(text: str) -> int:
    """``1073741824``, ``512Mi``, ``2G``, ``1.5Gi`` -> bytes."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgtKMGT]i?)?[bB]?\s*", text)
    if not m:
        raise ValueError("expected bytes like 1073741824, 512Mi or 2G")
    return int(float(m.group(1)) * _SIZE_UNITS[(m.group(2) or "").lower()])
