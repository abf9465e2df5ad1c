"""PURE: which caches leave a node whose budget is exceeded.

Least recently used first (`lastUsed` of the node's copy: the last time the operator saw a running
model pod use it; a copy never used counts from the epoch, so it goes first), never a copy a
running model uses, never the cache that asks for room. The choice is all-or-nothing: when even
every evictable copy would not make enough room, nothing is evicted and the asking cache waits
(reason WaitingForBudget)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Resident:
    """One cache's copy on one node."""

    key: tuple[str, str]  # (namespace, name) of the ModelCache
    bytes: int
    last_used: str  # RFC 3339 (sorts in time order); "" = never used
    in_use: bool  # a running model pod on this node mounts it


@dataclass(frozen=True)
class Eviction:
    fits: bool
    victims: tuple[tuple[str, str], ...] = ()
    message: str = ""


def choose_evictions(budget: int, residents: Sequence[Resident], asking: tuple[str, str],
                     need: int) -> Eviction:
    others = [r for r in residents if r.key != asking]
    used = sum(r.bytes for r in others)
    if used + need <= budget:
        return Eviction(fits=True)
    candidates = sorted((r for r in others if not r.in_use), key=lambda r: (r.last_used, r.key))
    victims: list[tuple[str, str]] = []
    for r in candidates:
        if used + need <= budget:
            break
        victims.append(r.key)
        used -= r.bytes
    if used + need <= budget:
        return Eviction(fits=True, victims=tuple(victims),
                        message=f"evicting {', '.join('/'.join(v) for v in victims)}")
    busy = [r for r in others if r.in_use]
    return Eviction(fits=False, message=(
        f"needs {need} bytes; the node's budget is {budget} bytes and caches in use by running "
        f"models hold {sum(r.bytes for r in busy)} bytes "
        f"({', '.join('/'.join(r.key) for r in busy) or 'none'})"))
